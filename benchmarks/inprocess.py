"""``python -m benchmarks.inprocess``: a request's CPU inside one process, and where it goes.

``benchmarks.hotpath`` reads a server worker's CPU from /proc; this tool answers "which function"
with a deterministic profile. ``dho-share serve`` (one worker) holds the data and issues the tokens, as
in ``hotpath``; a second copy of the app is then built in this process with the same settings (same
database, Redis, signing keys and public URL, so the tokens and proofs are valid for it) and each
scenario's requests are handed to it as WSGI environs, one at a time, signed beforehand. Reported per
request: this thread's CPU (``time.thread_time``, so neither the audit sequencer thread nor the
signing counts), and the database's and Redis's CPU from /proc. ``--profile`` adds a cProfile run on
the same thread clock and prints the functions with the largest cumulative share.

As under ``dho-share serve``, the request log goes to a file (``configure_json_logging`` writes to
stderr) and the metrics to a Prometheus multiprocess directory.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson
from werkzeug.test import EnvironBuilder

from benchmarks import sections, statements
from benchmarks.cpu import CpuProbe, Sample
from benchmarks.environment import (
    HEART_RATE,
    HEART_RATE_CODE_ALONE,
    REDIS_URL,
    TENANT,
    analyze,
    api_server,
    fresh_database,
    make_dataset,
    search_forms,
)
from benchmarks.load import Connection
from benchmarks.parties import FHIR_JSON, FORM_URLENCODED, Credentials, form_patient, publish_all, register

Environ = dict[str, Any]


def _environ(
    method: str,
    path: str,
    base: str,
    headers: list[str],
    body: bytes = b"",
    content_type: str = FORM_URLENCODED,
) -> Environ:
    pairs = [tuple(h.split(": ", 1)) for h in headers]
    pairs.append(("Accept", "application/fhir+json"))
    builder = EnvironBuilder(
        path=path,
        base_url=base,
        method=method,
        headers=pairs,
        data=body if body else None,
        content_type=content_type if body else None,
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


def _call(app: Any, environ: Environ) -> tuple[str, bytes]:
    status: list[str] = []

    def start_response(s: str, _headers: Any, _exc: Any = None) -> Any:
        status.append(s)
        return lambda _data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return status[0], body


def _backend_cpu(probe: CpuProbe, before: Sample, after: Sample) -> float:
    """CPU seconds of this database's own PostgreSQL backends between the samples: the part of
    ``storage`` that is this work's alone (the cluster's shared processes, such as the WAL writer,
    checkpointer and autovacuum, also serve other databases on a shared machine)."""
    used = 0.0
    for pid, (_, command, *_) in after.per_process.items():
        if not command.startswith("postgres") or probe.database is None:
            continue
        if "(" not in command or not probe.database.search(command):
            continue
        used += after.spent_since(before, pid)[0]
    return used


def _run(
    name: str,
    app: Any,
    make: Callable[[int], Environ],
    count: int,
    probe: CpuProbe,
    profile: int,
    callgrind: bool,
    warmup: int = 50,
    timers: list[sections.Timer] | None = None,
    by_statement: statements.Probe | None = None,
) -> tuple[str, float, float, float]:
    for i in range(min(min(warmup, 10) if callgrind else warmup, count)):
        status, body = _call(app, make(i))
        if not status.startswith(("200", "201")):
            raise click.ClickException(f"{name} answered {status}: {body[:300]!r}")
    # Under valgrind signing is slow too: sign in chunks, so that no proof is too old when it is used.
    chunk = 10 if callgrind else count
    before = probe.sample()
    cpu = 0.0
    if timers:
        sections.reset(timers)
    if by_statement:
        statements.reset(by_statement, name)
    for first in range(0, count, chunk):
        prepared = [make(warmup + i) for i in range(first, min(count, first + chunk))]
        if callgrind:  # count instructions of the measured requests only (valgrind --instr-atstart=no)
            subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True)
        for environ in prepared:
            started = time.thread_time()
            status, body = _call(app, environ)
            cpu += time.thread_time() - started
            if not status.startswith(("200", "201")):
                raise click.ClickException(f"{name} answered {status}: {body[:300]!r}")
        if callgrind:
            subprocess.run(["callgrind_control", "--instr=off", str(os.getpid())], check=True)
    if callgrind:
        subprocess.run(["callgrind_control", "--dump=" + name, str(os.getpid())], check=True)
    after = probe.sample()
    if timers:
        print("\n".join(sections.report(name, timers, count)))
        print(f"{1e6 * cpu / count:8.0f}         the whole request, this thread (the app CPU column)")
    if by_statement:
        print("\n".join(statements.report(name, by_statement, count)))
    storage = backends = 0.0
    if before is not None and after is not None:
        storage = probe.share(before, after).get("storage", 0.0) * (after.total - before.total)
        backends = _backend_cpu(probe, before, after)
    if profile:
        prepared = [make(warmup + count + i) for i in range(count)]
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        for environ in prepared:
            _call(app, environ)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(os.environ.get("DHO_PROFILE_SORT", "cumulative")).print_stats(profile)
        print(f"--- {name}: cProfile (thread CPU clock), {count} requests ---")
        print(out.getvalue())
    return name, 1000 * cpu / count, 1000 * storage / count, 1000 * backends / count


INGEST_WARMUP = 2
INGEST_SIZE = 500


def _ingest(
    app: Any, creds: Credentials, base: str, bundles: int, probe: CpuProbe, profile: int, callgrind: bool
) -> tuple[str, float, float, float]:
    """Batch Bundles of 500 new observations (new patients: every entry is created), one at a time;
    the CPU is reported per observation."""
    extra = 2 if callgrind else INGEST_WARMUP
    needed = extra + bundles * (2 if profile else 1)
    fresh = make_dataset(needed * INGEST_SIZE, INGEST_SIZE, 60, 7_919)
    path = f"/{TENANT}/fhir"

    def ingest(i: int) -> Environ:
        headers = creds.headers(creds.publisher, "POST", base + path)
        return _environ("POST", path, base, headers, fresh.bundles[i], FHIR_JSON)

    _, app_ms, storage_ms, backend_ms = _run(
        "ingest", app, ingest, bundles, probe, profile, callgrind, warmup=extra
    )
    return "ingest/obs", app_ms / INGEST_SIZE, storage_ms / INGEST_SIZE, backend_ms / INGEST_SIZE


@click.command()
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True)
@click.option("--observations", default=5_000, show_default=True, type=click.IntRange(500))
@click.option("--requests", "count", default=400, show_default=True, type=click.IntRange(10))
@click.option("--profile", default=0, show_default=True, help="print this many cProfile lines per scenario")
@click.option(
    "--bundles",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="ingest: measured batch Bundles of 500 new observations (CPU reported per observation)",
)
@click.option("--only", multiple=True, help="healthz, search, read, token, ingest (default: all)")
@click.option(
    "--code-alone",
    is_flag=True,
    help="search the heart rate by its code without a system: a shape no index leads (custom plans)",
)
@click.option(
    "--callgrind",
    is_flag=True,
    help="run under `valgrind --tool=callgrind --instr-atstart=no`: instructions of the measured requests",
)
@click.option(
    "--sections",
    "with_sections",
    is_flag=True,
    help="thread CPU per request of the parts of the chain (benchmarks/sections.py)",
)
@click.option(
    "--statements",
    "with_statements",
    is_flag=True,
    help="our PostgreSQL backend's and Redis's CPU per request by statement (benchmarks/statements.py)",
)
def main(
    postgres_url: str,
    observations: int,
    count: int,
    bundles: int,
    profile: int,
    only: tuple[str, ...],
    code_alone: bool,
    callgrind: bool,
    with_sections: bool,
    with_statements: bool,
) -> None:
    """CPU ms per request of the app in this process (one thread) and of the database and Redis."""
    data = make_dataset(observations, 500, 60, 1)
    results = []
    with tempfile.TemporaryDirectory(prefix="dho-inproc-") as tmp:
        log = Path(tmp) / "server.log"
        with fresh_database("postgresql", Path(tmp), postgres_url) as url, api_server(url, 1, log) as server:
            port, base = server.port, f"http://127.0.0.1:{server.port}"
            creds = Credentials(base, register(url, TENANT))
            conn = Connection(port, timeout=300)
            publish_all(conn, creds, f"/{TENANT}/fhir", data.bundles)
            conn.close()
            analyze(url)
            os.environ.update(
                {
                    "DHO_DATABASE_URL": url,
                    "DHO_REDIS_URL": REDIS_URL,
                    "DHO_PUBLIC_URL": base,
                    "DHO_SEARCH_SESSION_TTL": "60",
                    "DHO_SIGNING_KEYS_PATH": str(Path(tmp) / "signing-keys.json"),
                    "DHO_AUDIT_KEY_PATH": str(Path(tmp) / "audit-key.pem"),
                    "DHO_RATE_LIMIT": "100000000",
                    # The server sequences the audit log; no background threads here.
                    "DHO_AUDIT_SEQUENCER_INTERVAL": "0",
                    "DHO_SUBSCRIPTION_DELIVERY_INTERVAL": "0",
                }
            )
            from sharing_api.app import create_app
            from sharing_api.metrics import use_multiprocess_dir
            from sharing_api.request_log import configure_json_logging

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path(tmp) / "metrics")
            os.mkdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
            use_multiprocess_dir()  # as `dho-share serve` does

            saved_stderr = sys.stderr
            with open(Path(tmp) / "inprocess.log", "w") as log_file:
                sys.stderr = log_file
                try:
                    configure_json_logging()
                    app = create_app()
                    timers = sections.install(app) if with_sections else None
                    by_statement = statements.install(REDIS_URL) if with_statements else None
                    probe = CpuProbe(os.getpid(), url.rsplit("/", 1)[1])
                    path = f"/{TENANT}/fhir/Observation/_search"
                    code = HEART_RATE_CODE_ALONE if code_alone else HEART_RATE
                    forms = search_forms(data, 256, data.seed, code)

                    def search(i: int) -> Environ:
                        form = forms[i % len(forms)]
                        headers = creds.search_headers(form, base + path)
                        return _environ("POST", path, base, headers, form)

                    _, answer = _call(app, search(0))
                    ids = [e["resource"]["id"] for e in orjson.loads(answer)["entry"]]
                    fnr = form_patient(forms[0])

                    def read(i: int) -> Environ:
                        target = f"/{TENANT}/fhir/Observation/{ids[i % len(ids)]}"
                        headers = creds.headers(creds.reader(fnr), "GET", base + target)
                        return _environ("GET", target, base, headers)

                    endpoint = creds.publisher.token_endpoint()
                    token_path = "/" + endpoint.split("/", 3)[3]

                    def token(_: int) -> Environ:
                        # The hospital's client assertion (with the attestation) and a fresh DPoP proof.
                        body, headers = creds.token_request(creds.reader(fnr), endpoint)
                        return _environ("POST", token_path, base, headers, body)

                    scenarios: dict[str, Callable[[int], Environ]] = {
                        "healthz": lambda _: _environ("GET", "/healthz", base, []),
                        "search": search,
                        "read": read,
                        "token": token,
                    }
                    for name, make in scenarios.items():
                        if only and name not in only:
                            continue
                        results.append(
                            _run(
                                name,
                                app,
                                make,
                                count,
                                probe,
                                profile,
                                callgrind,
                                timers=timers,
                                by_statement=by_statement,
                            )
                        )
                    if not only or "ingest" in only:
                        results.append(_ingest(app, creds, base, bundles, probe, profile, callgrind))
                finally:
                    sys.stderr = saved_stderr
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}; {count} requests per scenario, one at a time, in process")
    print(f"{'scenario':10} {'app CPU ms':>11} {'storage CPU ms':>15} {'of it, our backends':>20}")
    for name, app_ms, storage_ms, backend_ms in results:
        print(f"{name:10} {app_ms:11.3f} {storage_ms:15.3f} {backend_ms:20.3f}")


if __name__ == "__main__":
    main()
