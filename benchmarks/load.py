"""A closed-loop HTTP/1.1 load generator that stays out of the way on a small machine.

Each client is its own process with one persistent keep-alive connection: it sends a request,
reads the whole response, records the latency (``time.perf_counter_ns``), and sends the next.
Requests are encoded once, before the clock starts, and responses are parsed only as far as the
status line and ``Content-Length`` (the server always sends one), so a request costs the client a
``sendall`` and a ``recv`` or two: far less CPU than ``http.client`` or ``requests`` spend on header
parsing. A ``CpuProbe`` shows how much of the machine the load generator itself took.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import orjson

from benchmarks.cpu import CpuProbe, ServerSplit, SpeedProbe

SOCKET_TIMEOUT = 60.0


def request_bytes(
    method: str,
    path: str,
    port: int,
    body: bytes = b"",
    content_type: str | None = None,
    headers: Sequence[str] = (),
) -> bytes:
    """One encoded HTTP/1.1 keep-alive request (``headers``: extra ``Name: value`` lines)."""
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: application/fhir+json", *headers]
    if body or method in ("POST", "PUT"):
        head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Connection:
    """A persistent connection to 127.0.0.1:``port`` that reads framed responses (Content-Length)."""

    def __init__(self, port: int, timeout: float = SOCKET_TIMEOUT):
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.pending = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.pending = sock, b""
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _recv(self, sock: socket.socket) -> bytes:
        chunk = sock.recv(262144)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``; return the status code and the body. Reconnects after a close."""
        sock = self.sock or self._connect()
        try:
            sock.sendall(request)
            data = self.pending
            while (end := data.find(b"\r\n\r\n")) < 0:
                data += self._recv(sock)
            head = data[:end].lower()
            status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise ConnectionError("a response without Content-Length")
            length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
            body_start = end + 4
            while len(data) < body_start + length:
                data += self._recv(sock)
            self.pending = data[body_start + length :]
            if b"\r\nconnection: close" in head:
                self.close()
            return status, data[body_start : body_start + length]
        except (OSError, ValueError):
            self.close()
            raise


ENDLESS = range(10**9)
"""The indices of a client that sends until the measured window ends."""


class OnDemand(Sequence[bytes]):
    """Requests made (their DPoP proofs and client assertions signed) when the load generator takes
    them: ``make(n)`` for each ``n`` of ``indices``. Proofs signed in advance could be older than the
    server accepts (60 s; a client assertion 30 s) by the time they are sent on a busy machine (the
    100k point of the first 1M scale run lost 62 of 91 searches to that)."""

    def __init__(self, make: Callable[[int], bytes], indices: range = ENDLESS, made: Sequence[bytes] = ()):
        self.make, self.indices, self.made = make, indices, made

    @classmethod
    def ahead(cls, make: Callable[[int], bytes], indices: range, count: int, seconds: float) -> OnDemand:
        """The first ``count`` requests made now (within ``seconds`` at most, so that none is older than
        the server accepts when sent), the rest when taken: the signing then stays out of the measured
        window, as it does for the searches' pre-signed proofs."""
        deadline, made = time.monotonic() + seconds, []
        for n in indices[:count]:
            if time.monotonic() > deadline:
                break
            made.append(make(n))
        return cls(make, indices, made)

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> OnDemand: ...
    def __getitem__(self, i: int | slice) -> bytes | OnDemand:
        if isinstance(i, slice):
            return OnDemand(self.make, self.indices[i])
        if 0 <= i < len(self.made):
            return self.made[i]
        return self.make(self.indices[i])


def count_created(body: bytes) -> int:
    """How many entries of a batch-response Bundle were created (201)."""
    return sum(1 for e in orjson.loads(body)["entry"] if e["response"]["status"].startswith("201"))


@dataclass
class ClientResult:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    items: int = 0
    """What ``check`` counted in the 2xx bodies (created entries, for ingest)."""
    first_send: float = 0.0
    last_receive: float = 0.0
    """The last response to a measured request (``time.monotonic()``)."""


def run_client(
    port: int,
    requests: Sequence[bytes],
    *,
    repeat: bool,
    start_at: float,
    measure_from: float,
    stop_at: float,
    check: Callable[[bytes], int] | None = None,
    socket_timeout: float = SOCKET_TIMEOUT,
) -> ClientResult:
    """Send ``requests`` in order (cycling when ``repeat``) from ``start_at`` until ``stop_at``.

    Times are ``time.monotonic()`` values, the same clock in every process. Latencies of requests
    sent before ``measure_from`` (the warm-up) are not recorded.
    """
    conn = Connection(port, socket_timeout)
    result = ClientResult()
    time.sleep(max(0.0, start_at - time.monotonic()))
    result.first_send = time.monotonic()
    n, total = 0, len(requests)
    try:
        while (repeat or n < total) and (now := time.monotonic()) < stop_at:
            request = requests[n % total]
            n += 1
            t0 = time.perf_counter_ns()
            try:
                status, body = conn.roundtrip(request)
            except (OSError, ValueError):
                status, body = 0, b""
            elapsed = time.perf_counter_ns() - t0
            if now >= measure_from:
                result.last_receive = time.monotonic()
                result.latencies_ns.append(elapsed)
                if not 200 <= status < 300:
                    result.errors += 1
                elif check is not None:
                    result.items += check(body)
    finally:
        conn.close()
    return result


def _client_process(
    results: Any, done: Any, port: int, requests: Sequence[bytes], options: dict[str, Any]
) -> None:
    """A client process: run, report, then stay alive until its CPU time has been sampled."""
    try:
        results.put(run_client(port, requests, **options))
    except BaseException as exc:
        results.put(exc)
        raise
    finally:
        done.wait(timeout=60)


@dataclass
class LoadResult:
    clients: int
    latencies_ns: list[int]
    errors: int
    items: int
    seconds: float
    """The measured window: from the end of the warm-up (or the first send) to the last measured
    response, or the fixed duration when the clients cycle."""
    cpu: dict[str, float]
    """Fractions of all cores by group (``benchmarks.cpu.GROUPS``) over the measured window."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds by group over the probe's window (the measured window, plus the last responses)."""
    load_average: float = 0.0
    """The 1-minute load average when the measured window began (others' work on a shared machine)."""
    server: ServerSplit | None = None
    """The server's CPU over the probe's window by worker and user/kernel (``CpuProbe.server_split``)."""
    reference_ms: float | None = None
    """The median CPU milliseconds of ``cpu.reference_loop`` over the probe's window: how fast the host
    ran the cores then (``cpu.SpeedProbe``)."""
    marks: tuple[Any, Any] | None = None
    """What ``run_load``'s ``mark`` returned when the measured window began and when it ended."""

    @property
    def requests(self) -> int:
        return len(self.latencies_ns)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: float) -> float:
        """Nearest-rank percentile in milliseconds."""
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
        return ordered[int(rank) - 1] / 1e6


def run_load(
    port: int,
    per_client: Sequence[Sequence[bytes]],
    *,
    repeat: bool,
    warmup: float,
    duration: float,
    check: Callable[[bytes], int] | None = None,
    probe: CpuProbe | None = None,
    socket_timeout: float = SOCKET_TIMEOUT,
    mark: Callable[[], Any] | None = None,
) -> LoadResult:
    """Run one client process per entry of ``per_client`` at the same time; gather their results.

    With ``repeat`` the clients cycle through their requests for ``warmup`` + ``duration`` seconds
    and the rate is over ``duration``; without, each sends its requests once (``warmup`` +
    ``duration`` is then a cap) and the rate is over the time from the end of the warm-up (the
    first send when there is none) to the last measured response. Requests sent during the
    warm-up count neither in the latencies nor in the rate. ``mark`` (counters, say) is called when the
    measured window begins and when it ends (``LoadResult.marks``).
    """
    ctx = multiprocessing.get_context("fork")  # the clients inherit their requests: nothing to pickle
    start_at = time.monotonic() + 0.5  # every process is up before the first request
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    options: dict[str, Any] = {
        "repeat": repeat,
        "start_at": start_at,
        "measure_from": measure_from,
        "stop_at": stop_at,
        "check": check,
        "socket_timeout": socket_timeout,
    }
    queue, done = ctx.Queue(), ctx.Event()
    speed = SpeedProbe()
    clients = [
        ctx.Process(target=_client_process, args=(queue, done, port, reqs, options), daemon=True)
        for reqs in per_client
    ]
    for client in clients:
        client.start()
    try:
        time.sleep(max(0.0, measure_from - time.monotonic()))
        load_average = os.getloadavg()[0]
        first_mark = mark() if mark else None
        cpu_before = probe.sample() if probe else None
        if probe:
            speed.start()
        if repeat:
            time.sleep(max(0.0, stop_at - time.monotonic()))
        results = [queue.get(timeout=max(1.0, stop_at - time.monotonic()) + socket_timeout) for _ in clients]
        cpu_after = probe.sample() if probe else None  # the clients are still alive here
        marks = (first_mark, mark()) if mark else None
    finally:
        reference_ms = speed.stop()
        done.set()
        for client in clients:
            client.join(timeout=5)
            if client.is_alive():
                client.terminate()
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError("a load-generator client failed") from failed[0]
    share = probe.share(cpu_before, cpu_after) if probe else {}
    began = max(measure_from, min(r.first_send for r in results))
    wall = max(r.last_receive for r in results) - began
    return LoadResult(
        clients=len(per_client),
        latencies_ns=[x for r in results for x in r.latencies_ns],
        errors=sum(r.errors for r in results),
        items=sum(r.items for r in results),
        seconds=duration if repeat else max(wall, 0.0),
        cpu=share,
        cpu_seconds={g: f * (cpu_after.total - cpu_before.total) for g, f in share.items()}
        if cpu_before and cpu_after
        else {},
        load_average=load_average,
        server=probe.server_split(cpu_before, cpu_after) if probe else None,
        reference_ms=reference_ms,
        marks=marks,
    )
