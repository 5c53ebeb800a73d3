"""``python -m benchmarks --scale --observations N``: search and read latency as the store grows.

The observations are seeded directly through the store in bulk (``seeding.py``: validated as the API
validates them, the rows ``create_many`` writes, by ``COPY`` on PostgreSQL), not over HTTP, with a
progress bar. At 100,000 stored observations and again at N, after ``ANALYZE``, the same searches
(one patient, heart rate, six days: 12 hits) and reads by id are measured over HTTP with the full
chain, as ``python -m benchmarks`` does; the table compares the two p50s (target: at most 1.5x from
100k to 10M, issue 12), and ``EXPLAIN (ANALYZE, BUFFERS)`` of one search at each size shows the plan.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import click
import orjson
from rich.console import Console
from rich.table import Table

from benchmarks import report
from benchmarks.cpu import CpuProbe
from benchmarks.environment import (
    TENANT,
    Dataset,
    Server,
    api_server,
    database_version,
    fresh_database,
    search_forms,
)
from benchmarks.load import ENDLESS, Connection, LoadResult, OnDemand, run_load
from benchmarks.parties import AGREEMENT_CATEGORIES, AGREEMENT_START, Credentials, form_patient, register
from benchmarks.seeding import Seeder
from sharing_api.fhir.dates import to_micros
from sharing_api.fhir.search import parse_search
from sharing_api.store.engine import make_engine
from sharing_api.store.observations import ObservationStore, ReadScope

console = Console(stderr=True)
REFERENCE = 100_000
"""The size the growth is measured from (the default run of ``python -m benchmarks``)."""
GROWTH_TARGET = 1.5
SEARCH_MIX = 256
HITS = 12


@dataclass(frozen=True)
class Point:
    stored: int
    seed_seconds: float
    search: LoadResult
    read: LoadResult


def _found(port: int, requests: list[bytes]) -> list[list[str]]:
    """The ids every search of the mix found; each must find ``HITS``."""
    conn = Connection(port)
    try:
        out = []
        for request in requests:
            status, body = conn.roundtrip(request)
            bundle = orjson.loads(body) if status == 200 else {}
            if status != 200 or len(bundle.get("entry", [])) != HITS:
                raise click.ClickException(
                    f"a check search answered {status} ({body[:200]!r}); expected {HITS}"
                )
            out.append([e["resource"]["id"] for e in bundle["entry"]])
        return out
    finally:
        conn.close()


def measure(
    server: Server, creds: Credentials, data: Dataset, probe: CpuProbe, options: dict[str, Any]
) -> tuple[LoadResult, LoadResult]:
    """Search and read by id, full chain, over HTTP (as ``python -m benchmarks`` measures them)."""
    port, clients = server.port, int(options["clients"])
    warmup, duration = float(options["warmup"]), float(options["duration"])
    path = f"/{TENANT}/fhir/Observation/_search"
    forms = search_forms(data, SEARCH_MIX, data.seed)

    def search(i: int) -> bytes:
        return creds.search_request(port, path, forms[i % len(forms)])

    found = _found(port, [search(i) for i in range(len(forms))])
    targets = [(form_patient(f), obs_id) for f, ids in zip(forms, found, strict=True) for obs_id in ids[:2]]

    def read(i: int) -> bytes:
        fnr, obs_id = targets[i % len(targets)]
        return creds.read_request(port, f"/{TENANT}/fhir/Observation/{obs_id}", fnr)

    results = []
    for make, items in ((search, len(forms)), (read, len(targets))):
        results.append(
            run_load(
                port,
                [OnDemand(make, ENDLESS[i * items // clients :]) for i in range(clients)],
                repeat=False,
                warmup=warmup,
                duration=duration,
                probe=probe,
            )
        )
    search_result, read_result = results
    return search_result, read_result


COLUMNS = (
    "Scenario",
    "Stored observations",
    "Requests",
    "Errors",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "load avg",
    "server+storage CPU ms per request",
    f"p50 vs {REFERENCE // 1000}k",
    f"Target (issue 12: <= {GROWTH_TARGET}x)",
)


def table_rows(points: list[Point]) -> list[list[str]]:
    out = []
    first = points[0]
    for point in points:
        for name, r, ref in (("search", point.search, first.search), ("read by id", point.read, first.read)):
            ms = report.cpu_ms_per_item(r, r.requests)
            growth = r.percentile_ms(50) / ref.percentile_ms(50)
            at_reference = point is first
            out.append(
                [
                    name,
                    f"{point.stored:,}",
                    f"{r.requests:,}",
                    str(r.errors),
                    *(f"{r.percentile_ms(p):.2f}" for p in (50, 95, 99)),
                    f"{r.load_average:.1f}",
                    "n/a" if ms is None else f"{ms:.2f}",
                    "1.00x (reference)" if at_reference else f"{growth:.2f}x",
                    "n/a" if at_reference else ("met" if growth <= GROWTH_TARGET else "not met"),
                ]
            )
    return out


def explain(url: str, form: bytes) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of one search of the mix, as the store builds it for the benchmark's
    reader (the agreement's categories and start in the read scope, as ``access.scope_of`` makes them)."""
    query = parse_search(parse_qsl(form.decode()), strict=True, default_count=50, max_count=1000)
    scope = ReadScope(categories=AGREEMENT_CATEGORIES, start=to_micros(AGREEMENT_START))
    engine = make_engine(url)
    store = ObservationStore(engine, lambda: 0)
    stmt = store.search_statement(TENANT, query, scope=scope)
    sql = str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    try:
        with engine.connect() as conn:
            lines = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").scalars().all()
    finally:
        engine.dispose()
    return "\n".join(str(line) for line in lines)


def run(
    database: str,
    postgres_url: str,
    observations: int,
    days: int,
    workers: int,
    seed: int,
    markdown_path: Path | None,
    options: dict[str, Any],
) -> None:
    """Seed to 100k (or fewer), measure; seed on to ``observations``, measure again; print the table."""
    load_before = os.getloadavg()[0]
    checkpoints = sorted({min(REFERENCE, observations), observations})
    points: list[Point] = []
    plans: list[tuple[int, str]] = []
    processes, rebuild = int(options["seed_processes"]), options["seed_indexes"] == "rebuild"
    with (
        tempfile.TemporaryDirectory(prefix="dho-bench-") as tmp,
        fresh_database(database, Path(tmp), postgres_url) as url,
    ):
        db_version = database_version(url)
        seeder = Seeder(url, days, seed, processes, rebuild)
        with api_server(url, workers, Path(tmp) / "server.log") as server:
            probe = CpuProbe(server.pid, url.rsplit("/", 1)[1] if database == "postgresql" else None)
            creds = Credentials(f"http://127.0.0.1:{server.port}", register(url, TENANT))
            for target in checkpoints:
                before = seeder.seconds
                seeder.fill(target)
                console.print(f"seeded {seeder.stored:,} in {seeder.seconds - before:.0f} s")
                if database == "postgresql":
                    console.print(f"database size: {database_size(url)}")
                data = seeder.dataset()
                search, read = measure(server, creds, data, probe, options)
                points.append(Point(seeder.stored, seeder.seconds, search, read))
                if database == "postgresql":
                    plans.append((seeder.stored, explain(url, search_forms(data, 1, data.seed)[0])))
                    console.print(plans[-1][1], markup=False, highlight=False)
        if database == "postgresql":
            size = database_size(url)
        seeder.dispose()
    rebuilt = seeder.rebuild_indexes and database == "postgresql"
    context = [
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {report.machine()}, {db_version}; "
        f"load average before the run {load_before:.2f}",
        f"- command: `{' '.join(['python -m benchmarks', *sys.argv[1:]])}`; code: {report.revision()}",
        f"- seeding straight into the store ({'COPY' if database == 'postgresql' else 'create_many'}, "
        f"{seeder.processes} processes, indexes {'rebuilt after' if rebuilt else 'kept during'} each load, "
        "then ANALYZE; no HTTP): "
        + "; ".join(f"{n:,} after {s:.0f} s (indexes and ANALYZE {i:.0f} s)" for n, s, i in seeder.loads)
        + f" ({seeder.patient_count:,} patients x {days} days)"
        + (f"; database size at the end {size}" if database == "postgresql" else ""),
        f"- search and read by id: {int(options['clients'])} closed-loop clients, {options['warmup']:g} s "
        f"warm-up, {options['duration']:g} s measured, full chain, {workers} granian workers",
    ]
    rows = table_rows(points)
    table = Table(*COLUMNS, title="dho-share scale run")
    for row in rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 170).print(table)
    for line in context:
        Console().print(line, markup=False, highlight=False)
    if markdown_path:
        lines = [*context, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        for stored, plan in plans:
            lines += ["", f"EXPLAIN (ANALYZE, BUFFERS) of one search at {stored:,}:", "", "```", plan, "```"]
        markdown_path.write_text("\n".join(lines) + "\n")
    if any(r.errors for p in points for r in (p.search, p.read)):
        raise SystemExit("some requests failed: see the table")


def database_size(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return str(
                conn.exec_driver_sql("SELECT pg_size_pretty(pg_database_size(current_database()))").scalar()
            )
    finally:
        engine.dispose()
