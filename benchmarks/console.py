"""``python -m benchmarks.console``: the auditor console over a large audit log (issue 10 "Scale").

One run: a fresh PostgreSQL database (dropped at the end) or SQLite file; ``--events`` audit events
for one tenant over 30 days, inserted in bulk as pending rows (``audit.log.entry_row``, the rows
``append`` stores) and then sequenced by ``AuditLog.drain`` (leaf hashes, tree head); one auditor. Then
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import psycopg

from sharing_api.app import create_app
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import AuditFacts, Coded, DecisionRef, SharingDecision, build_audit_event
from sharing_api.audit.log import entry_row
from sharing_api.console.accounts import AuditorAccounts
from sharing_api.settings import Settings
from sharing_api.store.engine import upgrade
from sharing_api.store.schema import audit_entries

TENANT = "921234562"
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
PASSWORD = "benchmark password"  # noqa: S105 (a throw-away account in a throw-away database)


def _facts(rng: random.Random, n: int, end: datetime, patients: int, workers: int) -> AuditFacts:
    hpr = rng.randrange(workers)
    permit = rng.random() > 0.02
    when = end - timedelta(seconds=rng.randrange(30 * 86400))
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


def _timed(call: object, repeat: int) -> tuple[float, float]:
    assert callable(call)
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), max(runs)


@click.command()
@click.option("--events", default=1_000_000, show_default=True, type=click.IntRange(1000))
@click.option(
    "--database", type=click.Choice(["postgresql", "sqlite"]), default="postgresql", show_default=True
)
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True)
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=1, show_default=True)
def main(events: int, database: str, postgres_url: str, repeat: int, seed: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dho-console-bench-"))
    name = f"dho_bench_{uuid.uuid4().hex[:10]}"
    if database == "postgresql":
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"{postgres_url.rsplit('/', 1)[0]}/{name}"
    else:
        url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    try:
        upgrade(url)
        settings = Settings(
            database_url=url,
            redis_url=os.environ.get("DHO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
            signing_keys_path=tmp / "keys.json",
            audit_key_path=tmp / "audit.pem",
            audit_sequencer_interval=0,
        )
        app = create_app(settings)
        svc = app.extensions["dho"]
        svc.tenants.add(TENANT, "Benchmark kommune")
        AuditorAccounts(svc.engine).add("bench", TENANT, "Bench Revisor", PASSWORD)
        rng = random.Random(seed)
        end = datetime.now(UTC)
        patients, workers = max(events // 50, 10), max(events // 2000, 10)
        started = time.perf_counter()
        for i in range(0, events, 5000):
            rows = []
            for n in range(i, min(i + 5000, events)):
                facts = _facts(rng, n, end, patients, workers)
                rows.append(entry_row(TENANT, build_audit_event(facts)))
            with svc.engine.begin() as conn:
                conn.execute(audit_entries.insert(), rows)
        inserted = time.perf_counter() - started
        started = time.perf_counter()
        svc.audit_log.drain(TENANT, max_batch=5000)
        sequenced = time.perf_counter() - started
        if database == "postgresql":
            with svc.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE audit_entries")
        click.echo(
            f"{events} events: insert {inserted:.1f} s, sequence {sequenced:.1f} s ({url.split(':')[0]})"
        )
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
        for label, call in checks.items():
            response = call()
            assert response.status_code == 200, (label, response.status_code)
            median, worst = _timed(call, repeat)
            click.echo(f"{label}: median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms")
        svc.engine.dispose()
    finally:
        if database == "postgresql":
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
