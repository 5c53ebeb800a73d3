"""``python -m benchmarks.hotpath``: CPU per request of each scenario, one request at a time.

The main benchmark runs many clients at once, so on a shared machine its rates say as much about the
other engineers' work as about ours. This tool sends requests one at a time over one keep-alive
connection to a one-worker server and reads the CPU time the worker process and the database's
backends spent (from /proc), so what it reports barely moves with the machine's load: the cost of one
request with nothing queued, which is what a change to the request path changes. With ``--profile
DIR`` it also samples the worker with py-spy (``py-spy record -f raw``) during each scenario.

It uses a fresh PostgreSQL database (dropped at the end) filled over HTTP like the main benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import orjson
from rich.console import Console

from benchmarks.cpu import CpuProbe, Sample
from benchmarks.environment import (
    TENANT,
    analyze,
    api_server,
    fresh_database,
    make_dataset,
    search_forms,
)
from benchmarks.load import Connection, request_bytes
from benchmarks.parties import FORM_URLENCODED, Credentials, form_patient, publish_all, register

console = Console(stderr=True)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _cpu(before: Sample | None, after: Sample | None, probe: CpuProbe) -> dict[str, float]:
    """CPU seconds per group (server, storage) between two samples."""
    if before is None or after is None:
        return {}
    wall = after.total - before.total
    return {group: share * wall for group, share in probe.share(before, after).items()}


def _scenario(
    name: str,
    conn: Connection,
    requests: Callable[[int], bytes],
    count: int,
    probe: CpuProbe,
    worker: int,
    profile: Path | None,
) -> tuple[str, float, float, float]:
    for i in range(min(50, count)):  # warm-up
        conn.roundtrip(requests(i))
    prepared = [requests(50 + i) for i in range(count)]
    spy = None
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if profile is not None and py_spy:
        output = str(profile / f"{name}.txt")
        spy = subprocess.Popen(
            [py_spy, "record", "-r", "500", "-f", "raw", "-o", output, "-p", str(worker)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
    before = probe.sample()
    started = time.perf_counter()
    for request in prepared:
        status, body = conn.roundtrip(request)
        if status not in (200, 201):
            raise click.ClickException(f"{name} answered {status}: {body[:300]!r}")
    wall = time.perf_counter() - started
    after = probe.sample()
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=30)
    used = _cpu(before, after, probe)
    server, storage = used.get("server", 0.0), used.get("storage", 0.0)
    return name, 1000 * server / count, 1000 * storage / count, 1000 * wall / count


@click.command()
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True)
@click.option("--observations", default=10_000, show_default=True, type=click.IntRange(500))
@click.option("--requests", "count", default=500, show_default=True, type=click.IntRange(10))
@click.option("--profile", type=click.Path(file_okay=False, path_type=Path), help="py-spy output directory")
@click.option("--only", multiple=True, help="healthz, search, read, token (default: all)")
def main(
    postgres_url: str, observations: int, count: int, profile: Path | None, only: tuple[str, ...]
) -> None:
    """CPU ms per request of the server and the database, one request at a time (one worker)."""
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    data = make_dataset(observations, 500, 60, 1)
    results = []
    with tempfile.TemporaryDirectory(prefix="dho-hot-") as tmp:
        log = Path(tmp) / "server.log"
        with fresh_database("postgresql", Path(tmp), postgres_url) as url, api_server(url, 1, log) as server:
            probe = CpuProbe(server.pid, url.rsplit("/", 1)[1])
            worker = _children(server.pid)[0]
            port, base = server.port, f"http://127.0.0.1:{server.port}"
            creds = Credentials(base, register(url, TENANT))
            conn = Connection(port, timeout=300)
            console.print(f"ingest: {len(data.bundles)} Bundles ...")
            publish_all(conn, creds, f"/{TENANT}/fhir", data.bundles)
            analyze(url)
            path = f"/{TENANT}/fhir/Observation/_search"
            forms = search_forms(data, 256, data.seed)

            def search(i: int) -> bytes:
                f = forms[i % len(forms)]
                return creds.search_request(port, path, f)

            _, answer = conn.roundtrip(search(0))
            ids = [e["resource"]["id"] for e in orjson.loads(answer)["entry"]]
            fnr = form_patient(forms[0])

            def read(i: int) -> bytes:
                return creds.read_request(port, f"/{TENANT}/fhir/Observation/{ids[i % len(ids)]}", fnr)

            endpoint = creds.publisher.token_endpoint()
            token_path = "/" + endpoint.split("/", 3)[3]

            def token(_: int) -> bytes:
                body, headers = creds.token_request(creds.reader(fnr), endpoint)
                return request_bytes("POST", token_path, port, body, FORM_URLENCODED, headers)

            scenarios: dict[str, Callable[[int], bytes]] = {
                "healthz": lambda _: request_bytes("GET", "/healthz", port),
                "search": search,
                "read": read,
                "token": token,
            }
            for name, make in scenarios.items():
                if only and name not in only:
                    continue
                console.print(f"{name}: {count} requests, one at a time ...")
                results.append(_scenario(name, conn, make, count, probe, worker, profile))
            conn.close()
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}; {count} requests per scenario, one at a time, 1 worker")
    print(f"{'scenario':10} {'server CPU ms':>14} {'storage CPU ms':>15} {'wall ms':>9}")
    for name, server_ms, storage_ms, wall_ms in results:
        print(f"{name:10} {server_ms:14.2f} {storage_ms:15.2f} {wall_ms:9.2f}")


if __name__ == "__main__":
    main()
