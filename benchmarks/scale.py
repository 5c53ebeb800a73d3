"""``python -m benchmarks --scale --observations N``: search and read latency as the store grows.

The observations are seeded directly through the store in bulk (validated as the API validates them,
then ``ObservationStore.create_many`` in transactions of ``SEED_BATCH``), not over HTTP, with a
progress bar. At 100,000 stored observations and again at N, the planner's statistics are refreshed
and the same searches (one patient, heart rate, six days: 12 hits) and reads by id are measured over
HTTP with the full chain, as ``python -m benchmarks`` does; the table compares the two p50s (target:
at most 1.5x from 100k to 10M, issue 12).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from benchmarks import report
from benchmarks.cpu import CpuProbe
from benchmarks.environment import (
    TENANT,
    Dataset,
    Server,
    analyze,
    api_server,
    database_version,
    fresh_database,
    search_forms,
)
from benchmarks.load import Connection, LoadResult, run_load
from benchmarks.parties import Credentials, form_patient, register
from sharing_api.fhir.dates import LOCAL_ZONE
from sharing_api.fhir.validation import validate_observation
from sharing_api.seed import Patient, make_patient, series
from sharing_api.store.engine import make_engine
from sharing_api.store.observations import ObservationStore
from sharing_api.store.tenants import TenantDirectory

console = Console(stderr=True)
REFERENCE = 100_000
"""The size the growth is measured from (the default run of ``python -m benchmarks``)."""
GROWTH_TARGET = 1.5
SEED_BATCH = 2_000
SEARCH_MIX = 256
HITS = 12
PER_CLIENT_SECOND = 400
"""Requests signed in advance per client and second of the measurement (proofs are single-use)."""


@dataclass
class Seeder:
    """Streams synthetic patients' series into the store; remembers whose series are complete."""

    url: str
    days: int
    seed: int
    end: datetime = field(default_factory=lambda: datetime.now(UTC))
    stored: int = 0
    seconds: float = 0.0
    whole: list[Patient] = field(default_factory=list)
    patient_count: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.engine = make_engine(self.url)
        self.store = ObservationStore(self.engine, lambda: time.time_ns() // 1000)
        record = TenantDirectory(self.engine).get(TENANT)
        assert record is not None
        self.tenant = record.validation
        self.stream = self._resources()

    def _resources(self) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        while True:
            person = make_patient(self.rng)
            if person.fnr in seen:
                continue
            seen.add(person.fnr)
            self.patient_count += 1
            yield from series(person, TENANT, self.days, self.rng, self.end)
            self.whole.append(person)

    def fill(self, target: int) -> None:
        """Store observations until ``target`` are stored, in transactions of ``SEED_BATCH``."""
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} obs/s"),
            TimeRemainingColumn(),
        )
        began, start = time.monotonic(), self.stored
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("seeding", total=target, completed=self.stored, rate="-")
            while self.stored < target:
                batch = [next(self.stream) for _ in range(min(SEED_BATCH, target - self.stored))]
                valid = [validate_observation(r, self.tenant) for r in batch]
                with self.store.writing() as conn:
                    self.store.create_many(conn, TENANT, valid)
                self.stored += len(batch)
                rate = (self.stored - start) / max(time.monotonic() - began, 1e-9)
                progress.update(task, advance=len(batch), rate=f"{rate:,.0f}")
        self.seconds += time.monotonic() - began

    def dataset(self) -> Dataset:
        first_day = (
            (self.end - timedelta(days=self.days))
            .astimezone(LOCAL_ZONE)
            .replace(hour=0, minute=0, second=0, microsecond=0)
        )
        return Dataset(
            [], self.stored, list(self.whole), self.patient_count, first_day, self.days, self.seed, 0
        )


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

    def searches(count: int, offset: int) -> list[bytes]:
        return [
            creds.search_request(port, path, f)
            for f in (forms[(offset + i) % len(forms)] for i in range(count))
        ]

    found = _found(port, searches(len(forms), 0))
    per_client = int(PER_CLIENT_SECOND * (warmup + duration))
    search = run_load(
        port,
        [searches(per_client, i * len(forms) // clients) for i in range(clients)],
        repeat=False,
        warmup=warmup,
        duration=duration,
        probe=probe,
    )
    targets = [(form_patient(f), obs_id) for f, ids in zip(forms, found, strict=True) for obs_id in ids[:2]]

    def reads(count: int, offset: int) -> list[bytes]:
        out = []
        for i in range(count):
            fnr, obs_id = targets[(offset + i) % len(targets)]
            out.append(creds.read_request(port, f"/{TENANT}/fhir/Observation/{obs_id}", fnr))
        return out

    read = run_load(
        port,
        [reads(per_client, i * len(targets) // clients) for i in range(clients)],
        repeat=False,
        warmup=warmup,
        duration=duration,
        probe=probe,
    )
    return search, read


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
    with (
        tempfile.TemporaryDirectory(prefix="dho-bench-") as tmp,
        fresh_database(database, Path(tmp), postgres_url) as url,
    ):
        db_version = database_version(url)
        seeder = Seeder(url, days, seed)
        with api_server(url, workers, Path(tmp) / "server.log") as server:
            probe = CpuProbe(server.pid, url.rsplit("/", 1)[1] if database == "postgresql" else None)
            creds = Credentials(f"http://127.0.0.1:{server.port}", register(url, TENANT))
            for target in checkpoints:
                before = seeder.seconds
                seeder.fill(target)
                console.print(f"seeded {seeder.stored:,} in {seeder.seconds - before:.0f} s; analyze ...")
                analyze(url)
                search, read = measure(server, creds, seeder.dataset(), probe, options)
                points.append(Point(seeder.stored, seeder.seconds, search, read))
        seeder.engine.dispose()
    context = [
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {report.machine()}, {db_version}; "
        f"load average before the run {load_before:.2f}",
        f"- command: `{' '.join(['python -m benchmarks', *sys.argv[1:]])}`; code: {report.revision()}",
        f"- seeding through the store (validated, create_many in transactions of {SEED_BATCH:,}, no HTTP): "
        + "; ".join(f"{p.stored:,} after {p.seed_seconds:.0f} s" for p in points)
        + f" ({seeder.patient_count:,} patients x {days} days)",
        f"- search and read by id: {int(options['clients'])} closed-loop clients, {options['warmup']:g} s "
        f"warm-up, {options['duration']:g} s measured, full chain, {workers} gunicorn workers, after ANALYZE",
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
        markdown_path.write_text("\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n")
    if any(r.errors for p in points for r in (p.search, p.read)):
        raise SystemExit("some requests failed: see the table")
