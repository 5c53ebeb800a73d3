"""``python -m benchmarks.audit_wal``: what one audit event writes on PostgreSQL, load-independent.

Appends ``--events`` search events to a fresh database, each as the API appends a read's event (one
INSERT in autocommit), under ``EXPLAIN (ANALYZE, WAL)``; then gives them their indexes with the
sequencer's set-based UPDATE under the same EXPLAIN. Prints WAL records (one per row version and per
index entry written, plus the claim), full-page images and bytes per event. ``--revision`` migrates the
database down to an older schema first (e.g. ``0006_console_r8``, before the partial audit indexes), so
two schemas can be compared on the same events. WAL records do not depend on the machine's load;
full-page images depend on when the server last checkpointed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click
from alembic import command
from sqlalchemy import select

from benchmarks.environment import fresh_database
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import build_audit_events
from sharing_api.audit.log import _SET_LEAVES_PG, _insert_returning, entry_row
from sharing_api.auditing import RequestInfo, audit_facts
from sharing_api.store.engine import alembic_config, make_engine
from sharing_api.store.schema import audit_entries

TENANT = "t1"


def _rows(count: int) -> list[dict[str, Any]]:
    request = RequestInfo("POST", "/fhir/Observation/_search", b"patient=x&code=y", "c", "10.0.0.1", "api")
    rows = []
    for i in range(count):
        patient = ("urn:oid:2.16.578.1.12.4.1.4.1", f"{10000000000 + i % 50}")
        facts = audit_facts(
            action=AuditAction.OBSERVATION_SEARCH,
            outcome=Outcome.SUCCESS,
            tenant=TENANT,
            caller=None,
            request=request,
            patient=patient,
        )
        rows.append(entry_row(TENANT, build_audit_events(facts)[0]))
    return rows


def _wal(plan: Any) -> tuple[int, int, int]:
    top = plan[0]["Plan"]
    return int(top["WAL Records"]), int(top["WAL FPI"]), int(top["WAL Bytes"])


@click.command()
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True)
@click.option("--events", default=200, show_default=True)
@click.option("--revision", default=None, help="migrate down to this revision first")
def main(postgres_url: str, events: int, revision: str | None) -> None:
    rows = _rows(events)
    with tempfile.TemporaryDirectory() as tmp, fresh_database("postgresql", Path(tmp), postgres_url) as url:
        if revision:
            command.downgrade(alembic_config(url), revision)
        engine = make_engine(url, pool_size=1)
        try:
            insert = _insert_returning(engine.dialect)
            append = [0, 0, 0]
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for row in rows:
                    plan = conn.exec_driver_sql(
                        "EXPLAIN (ANALYZE, WAL, FORMAT JSON) " + insert.sql, insert.arguments(row)
                    ).scalar()
                    append = [a + b for a, b in zip(append, _wal(plan), strict=True)]
                got = conn.execute(
                    select(audit_entries.c.id, audit_entries.c.recorded).order_by(audit_entries.c.id)
                ).all()
                values = {
                    "ids": [g.id for g in got],
                    "recorded": [g.recorded for g in got],
                    "seqs": list(range(len(got))),
                    "leaves": [bytes(32)] * len(got),
                }
                compiled = _SET_LEAVES_PG.compile(dialect=engine.dialect)
                plan = conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, WAL, FORMAT JSON) " + str(compiled), compiled.construct_params(values)
                ).scalar()
                sequence = _wal(plan)
        finally:
            engine.dispose()
    n = len(rows)
    click.echo(f"schema {revision or 'head'}: {n} events")
    for label, (records, fpi, size) in (("append", append), ("sequence", sequence)):
        click.echo(
            f"{label:9s} {records / n:6.2f} WAL records  {fpi / n:5.2f} FPI  {size / n:7.0f} bytes per event"
        )


if __name__ == "__main__":
    main()
