"""Our PostgreSQL backend's and Redis's CPU per statement: ``python -m benchmarks.inprocess --statements``.

``pg_stat_statements`` needs ``shared_preload_libraries`` (a server setting we do not change on a
shared server), so each statement's cost is read from the kernel instead: the run time
(``/proc/<pid>/schedstat``, nanoseconds) of the backend that ran it, read just before the statement
is sent and just after its answer. In autocommit that covers parse, plan (or a prepared statement's
lookup), execution and, for a write, its commit with the WAL flush the backend waits for (the WAL
writer's own work is not in it). The app runs one request at a time, so no other statement of this
process is on that backend meanwhile.

Redis: the server's main thread's run time around each ``RedisState.admit``/``claim_all`` call
(includes reading the command and writing the answer; other clients of a shared Redis can add to it),
and ``INFO commandstats``' ``usec`` for ``evalsha`` over the run (the script's own time, every
client's calls of it: on a shared Redis, compare its ``calls`` with the requests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_local = threading.local()

LABELS: tuple[tuple[str, str], ...] = (
    ("INSERT INTO audit_entries", "audit INSERT (durable commit)"),
    ("UNION ALL", "the sharing decision"),
    ("FROM observations", "the search page / the read"),
)


def _label(sql: str) -> str:
    for needle, label in LABELS:
        if needle in sql:
            return label
    return sql[:60]


def _schedstat(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except OSError:
        return 0


@dataclass
class Cost:
    label: str
    ns: int = 0
    calls: int = 0
    sqls: set[str] = field(default_factory=set)


@dataclass
class Probe:
    costs: dict[str, Cost] = field(default_factory=dict)
    redis_pid: int | None = None
    redis_before: dict[str, tuple[int, int]] = field(default_factory=dict)
    redis_client: Any = None
    backends: set[int] = field(default_factory=set)
    perf: Any = None

    def add(self, label: str, ns: int, sql: str = "") -> None:
        cost = self.costs.setdefault(label, Cost(label))
        cost.ns += ns
        cost.calls += 1
        if sql:
            cost.sqls.add(sql)


def _redis_pid() -> int | None:
    found = subprocess.run(["pgrep", "-o", "redis-server"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def _commandstats(client: Any) -> dict[str, tuple[int, int]]:
    stats = client.info("commandstats")
    return {k: (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}


def install(redis_url: str) -> Probe:
    """Wrap ``one_statement``'s cursor lookup and run, and the Redis admission calls; the probe."""
    import redis

    from auth import replaystate
    from sharing_api.store import one_statement

    probe = Probe(redis_pid=_redis_pid(), redis_client=redis.Redis.from_url(redis_url))
    original_cursor = one_statement._cursor
    original_run = one_statement._run_postgresql

    def cursor(info: Any, conn: Any, sql: str) -> Any:
        probe.backends.add(conn.info.backend_pid)
        path = f"/proc/{conn.info.backend_pid}/schedstat"
        _local.started = (path, _schedstat(path), sql)
        return original_cursor(info, conn, sql)

    def run(engine: Any, statement: Any, args: Any) -> Any:
        _local.started = None
        try:
            return original_run(engine, statement, args)
        finally:
            started = _local.started
            if started is not None:
                path, before, sql = started
                probe.add(_label(sql), _schedstat(path) - before, sql)

    one_statement._cursor = cursor  # type: ignore[assignment]
    one_statement._run_postgresql = run  # type: ignore[assignment]

    redis_path = f"/proc/{probe.redis_pid}/task/{probe.redis_pid}/schedstat"

    def timed(label: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before = _schedstat(redis_path)
            try:
                return original(*args, **kwargs)
            finally:
                probe.add(label, _schedstat(redis_path) - before)

        return wrapped

    state = replaystate.RedisState
    state.admit = timed("Redis: admission script (server main thread)", state.admit)  # type: ignore[method-assign]
    state.claim_all = timed("Redis: jti claims (server main thread)", state.claim_all)  # type: ignore[method-assign]
    return probe


def reset(probe: Probe, name: str = "") -> None:
    """Start counting afresh; with ``DHO_STATEMENTS_PERF=<directory>`` also ``perf record`` the
    backends seen so far (the warm-up's) until ``report``, into ``<directory>/<name>.perf``."""
    probe.costs.clear()
    probe.redis_before = _commandstats(probe.redis_client)
    directory = os.environ.get("DHO_STATEMENTS_PERF")
    if directory and probe.backends:
        pids = ",".join(str(p) for p in sorted(probe.backends))
        command = ["perf", "record", "-q", "-F", "2000", "-g", "-p", pids, "-o", f"{directory}/{name}.perf"]
        probe.perf = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf attaches


def report(name: str, probe: Probe, requests: int) -> list[str]:
    if probe.perf is not None:
        probe.perf.send_signal(signal.SIGINT)
        probe.perf.wait()
        probe.perf = None
    lines = [f"--- {name}: backend / Redis CPU per request, by statement, {requests} requests ---"]
    lines.append(f"{'µs':>8} {'calls':>6}  statement")
    for cost in sorted(probe.costs.values(), key=lambda c: -c.ns):
        lines.append(f"{cost.ns / 1000 / requests:8.1f} {cost.calls / requests:6.2f}  {cost.label}")
    after = _commandstats(probe.redis_client)
    for command, (calls, usec) in sorted(after.items()):
        calls0, usec0 = probe.redis_before.get(command, (0, 0))
        if calls - calls0 >= requests // 2:
            per = (usec - usec0) / requests
            lines.append(f"{per:8.1f} {(calls - calls0) / requests:6.2f}  Redis commandstats: {command}")
    return lines
