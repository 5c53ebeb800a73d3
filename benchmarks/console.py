"""``python -m benchmarks.console``: the auditor console over a large audit log (issue 10 "Scale").

One run: a fresh PostgreSQL database (dropped at the end) or SQLite file; ``--events`` audit events
for one tenant over 30 days, in arrival order, seeded in bulk: each event is built by
``audit.events.build_audit_event`` and stored as ``audit.log.entry_row`` makes it, already sequenced
(index ``n``, leaf hash ``export_format.entry_leaf``, exactly what the sequencer would store), by
``--jobs`` processes and, on PostgreSQL, ``COPY``; the tenant's tree head is then computed from the
leaves and one checkpoint signed (``AuditLog.checkpoint``). ``VACUUM ANALYZE`` follows, as autovacuum
would do on a live database. ``--verify`` runs the server-side verifier over the whole log at the end
(``console.integrity.verify_now``), which proves the seeded log is a valid one. Then
the console's pages are requested through Flask's test client (the whole request: session, queries,
rendering) ``--repeat`` times each, and the median and the slowest are printed:

* the dashboard (tiles, daily chart and table over 30 days, integrity badge);
* a filtered event search (one health worker, a 7-day period, 50 rows, newest first);
* the disclosure report for one patient (all their accesses, grouped into episodes).

Targets (issue 10): dashboard < 2 s, filtered search < 1 s, disclosure report < 1 s.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import psycopg
from sqlalchemy import Engine, func, insert, select

from sharing_api.app import create_app
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import AuditFacts, Coded, DecisionRef, SharingDecision, build_audit_event
from sharing_api.audit.export_format import entry_leaf
from sharing_api.audit.log import entry_row
from sharing_api.audit.tree import TreeState
from sharing_api.console import rollup
from sharing_api.console.accounts import AuditorAccounts
from sharing_api.console.aggregates import OSLO
from sharing_api.console.integrity import verify_now
from sharing_api.settings import Settings
from sharing_api.store import audit_partitions
from sharing_api.store.engine import upgrade
from sharing_api.store.schema import audit_entries, audit_heads

TENANT = "921234562"
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
PASSWORD = "benchmark password"  # noqa: S105 (a throw-away account in a throw-away database)


def _facts(rng: random.Random, n: int, end: datetime, patients: int, workers: int) -> AuditFacts:
    hpr = rng.randrange(workers)
    permit = rng.random() > 0.02
    when = end - timedelta(seconds=rng.random() * 60)
    return AuditFacts(
        action=AuditAction.OBSERVATION_SEARCH if permit else AuditAction.REQUEST_REFUSED,
        outcome=Outcome.SUCCESS if permit else Outcome.MINOR_FAILURE,
        recorded=when,
        tenant=TENANT,
        client_id=f"epj-{hpr % 20}",
        organisation=f"99{hpr % 20:07d}",
        organisation_name=f"Sykehus {hpr % 20}",
        point_of_care=f"87{hpr % 40:07d}",
        practitioner_hpr=f"9{hpr:06d}",
        practitioner_name=f"Lege {hpr}",
        purpose_of_use="ETREAT" if rng.random() < 0.005 else "TREAT",
        healthcare_service=Coded(
            system="urn:oid:2.16.578.1.12.4.1.1.8655", code="S03", display="Indremedisin"
        ),
        decision_ref=DecisionRef(id=f"d-{n}", user_selected=False),
        attested_at=when,
        patient=(FNR, f"{rng.randrange(patients):011d}"),
        data_categories=("vital-signs",),
        decision=SharingDecision(permit=permit, reasons=("permit-agreement",) if permit else ("no-consent",)),
        token_jti=f"jti-{n}",
        correlation_id=f"req-{n}",
        description="search with 3 results",
    )


_CHUNK = 10_000
_COLUMNS = (
    "tenant",
    "seq",
    "leaf",
    "recorded",
    "action",
    "outcome",
    "purpose",
    "patient_system",
    "patient_value",
    "agent_hpr",
    "organisation",
    "client_id",
    "event",
)


def _chunk(job: tuple[int, int, int, datetime, int, int, int]) -> list[dict[str, Any]]:
    """Rows ``first .. stop-1`` of the log, sequenced: what ``append`` and then the sequencer store."""
    first, stop, events, end, patients, workers, seed = job
    rng = random.Random(seed * 1_000_003 + first)
    rows = []
    for n in range(first, stop):
        when = end - timedelta(seconds=30 * 86400 * (events - n) / events)
        row = entry_row(TENANT, build_audit_event(_facts(rng, n, when, patients, workers)))
        row["seq"] = n
        row["leaf"] = entry_leaf(row["event"], n)
        rows.append(row)
    return rows


def _store(engine: Engine, rows: list[dict[str, Any]]) -> None:
    if engine.dialect.name != "postgresql":
        with engine.begin() as conn:
            conn.execute(audit_entries.insert(), rows)
        return
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY audit_entries ({', '.join(_COLUMNS)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(tuple(row[c] for c in _COLUMNS))
        raw.commit()
    finally:
        raw.close()


def _timed(call: object, repeat: int) -> tuple[float, float]:
    assert callable(call)
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), max(runs)


def _seed(svc: Any, url: str, events: int, jobs: int, seed: int) -> None:
    """``events`` sequenced entries, the tree head over them and one checkpoint (module docstring)."""
    end = datetime.now(UTC)
    since = audit_partitions.Month.of(end - timedelta(days=31))  # the entries span the last 30 days
    audit_partitions.ensure(svc.engine, now=end, since=since)
    patients, workers = max(events // 50, 10), max(events // 2000, 10)
    started = time.perf_counter()
    state = TreeState()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        chunks = [
            (i, min(i + _CHUNK, events), events, end, patients, workers, seed)
            for i in range(0, events, _CHUNK)
        ]
        for rows in pool.map(_chunk, chunks):
            _store(svc.engine, rows)
            for row in rows:
                state.append(row["leaf"])
            click.echo(f"  {rows[-1]['seq'] + 1} / {events}", err=True)
    with svc.engine.begin() as conn:
        now = time.time_ns() // 1000
        conn.execute(
            insert(audit_heads).values(
                tenant=TENANT,
                size=state.size,
                root=state.root(),
                peaks=state.pack(),
                checkpoint_size=0,
                checkpoint_at=now,
                updated=now,
                origin=svc.audit_log.default_name(TENANT),
            )
        )
    svc.audit_log.checkpoint(TENANT)
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    if svc.engine.dialect.name == "postgresql":
        with svc.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE audit_entries")
    else:
        with svc.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    vacuumed = time.perf_counter() - started
    click.echo(
        f"{events} events: seeded in {inserted:.1f} s ({jobs} jobs), vacuum/analyze {vacuumed:.1f} s"
        f" ({url.split(':')[0]})"
    )


@click.command()
@click.option("--events", default=1_000_000, show_default=True, type=click.IntRange(1000))
@click.option(
    "--database", type=click.Choice(["postgresql", "sqlite"]), default="postgresql", show_default=True
)
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True)
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=1, show_default=True)
@click.option(
    "--jobs", default=2, show_default=True, type=click.IntRange(1), help="processes building events"
)
@click.option("--verify/--no-verify", default=False, help="verify the whole log at the end")
@click.option(
    "--slow-pages",
    is_flag=True,
    help="time the pages that read every event of the period instead (health workers, organisation"
    " flows, review queue), once each",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="keep the seeded database and its keys in this directory (not dropped); a later run with the"
    " same --keep reuses them (migrations applied, no seeding)",
)
def main(
    events: int,
    database: str,
    postgres_url: str,
    repeat: int,
    seed: int,
    jobs: int,
    verify: bool,
    keep: Path | None,
    slow_pages: bool,
) -> None:
    tmp = keep or Path(tempfile.mkdtemp(prefix="dho-console-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    reuse = (tmp / "url").exists()
    name = f"dho_bench_{uuid.uuid4().hex[:10]}"
    if reuse:
        url = (tmp / "url").read_text().strip()
        database = url.split(":")[0].split("+")[0]
    elif database == "postgresql":
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"{postgres_url.rsplit('/', 1)[0]}/{name}"
    else:
        url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    try:
        started = time.perf_counter()
        upgrade(url)
        click.echo(f"migrations: {time.perf_counter() - started:.1f} s")
        settings = Settings(
            database_url=url,
            redis_url=os.environ.get("DHO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
            signing_keys_path=tmp / "keys.json",
            audit_key_path=tmp / "audit.pem",
            audit_sequencer_interval=0,
        )
        app = create_app(settings)
        svc = app.extensions["dho"]
        if not reuse:
            svc.tenants.add(TENANT, "Benchmark kommune")
            AuditorAccounts(svc.engine).add("bench", TENANT, "Bench Revisor", PASSWORD)
            _seed(svc, url, events, jobs, seed)
            if keep is not None:
                (tmp / "url").write_text(url)
        with svc.engine.connect() as conn:
            last = conn.execute(select(func.max(audit_entries.c.recorded))).scalar_one()
        end = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=last)
        started = time.perf_counter()
        folded = rollup.fold(svc.engine, TENANT, OSLO)
        click.echo(f"dashboard rollup: {folded} entries folded in {time.perf_counter() - started:.1f} s")
        client = app.test_client()
        client.post("/console/login", data={"username": "bench", "password": PASSWORD})
        page = client.get("/console/").data.decode()
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        hpr = f"9{1:06d}"
        day = (end - timedelta(days=10)).date()
        patient = f"{FNR}|{7:011d}"
        checks = {
            "dashboard (30 days)": lambda: client.get("/console/"),
            "search: one HPR, 7 days, 50 rows": lambda: client.post(
                "/console/events",
                data={"csrf": csrf, "agent": hpr, "from": str(day - timedelta(days=7)), "to": str(day)},
            ),
            "disclosure report, one patient": lambda: client.post(
                "/console/patient", data={"csrf": csrf, "patient": patient}
            ),
        }
        if slow_pages:
            checks = {
                "health workers (30 days)": lambda: client.get("/console/workers"),
                "organisation flows (30 days)": lambda: client.get("/console/organisations"),
                "review queue, rules R1-R14 (30 days)": lambda: client.get("/console/review"),
            }
            repeat = 1
        for label, call in checks.items():
            response = call()
            assert response.status_code == 200, (label, response.status_code)
            median, worst = _timed(call, repeat)
            click.echo(f"{label}: median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms")
        if verify:
            started = time.perf_counter()
            result = verify_now(svc.audit_log, TENANT)
            took = time.perf_counter() - started
            click.echo(f"verify now: ok={result.ok} entries={result.entries} in {took:.1f} s")
            assert result.ok, result.detail
        svc.engine.dispose()
    finally:
        if database == "postgresql" and keep is None:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
