"""Monthly partitions of the audit table (PostgreSQL, migration 0006_audit_parts, issue 13 item 4).

What a user of the log would notice: existing logs still verify after the migration (and after its
downgrade); months are made ahead by ``db upgrade``, the sequencer and ``dho-share audit partitions
ensure``; a missing next month is reported by ``/readyz`` and ``audit partitions check`` while appends
still work; a missing current month makes audited requests answer 503 (never 500) with nothing stored;
the append-only trigger holds on every partition; queries bounded in time read only their months.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import DBAPIError

from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.cli import audit
from sharing_api.audit.log import AuditLog
from sharing_api.audit.sequencer import run
from sharing_api.audit.stored_check import check_stored_log
from sharing_api.audit.verify import verify
from sharing_api.console.aggregates import scan
from sharing_api.services import Services
from sharing_api.store import audit_partitions
from sharing_api.store.audit_partitions import Month
from sharing_api.store.engine import alembic_config, make_engine, upgrade
from sharing_api.store.schema import audit_entries, audit_seq_claims
from tests.api_client import ApiClient
from tests.audit.factories import T0, TENANT, audit_selects, facts
from tests.conftest import AUDIT_MONTHS_SINCE, TENANT_A
from tests.factories import fnr, heart_rate, search_form

e = audit_entries
BASE = f"/{TENANT_A}/fhir"


def postgresql_only(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps the audit log in one table: there are no partitions")


def append_at(log: AuditLog, moments: list[datetime]) -> None:
    from sharing_api.audit.events import build_audit_event

    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        for n, moment in enumerate(moments):
            log.append(conn, TENANT, build_audit_event(facts(n, recorded=moment)))


def partition_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {m.name for m in audit_partitions.existing(conn)}


# -- the migration -----------------------------------------------------------------------------------


def test_the_migration_keeps_existing_logs_verifiable_and_can_be_undone(
    fresh_url: str, signer: AuditSigner
) -> None:
    config = alembic_config(fresh_url)
    command.upgrade(config, "0005_subs")  # the database as it was before 0006
    engine = make_engine(fresh_url)
    try:
        log = AuditLog(engine, signer=signer, checkpoint_every=5, checkpoint_interval=3600)
        march, may = T0, T0 + timedelta(days=60)
        append_at(log, [march + timedelta(seconds=n) for n in range(7)] + [may])
        log.drain()
        log.checkpoint(TENANT)
        append_at(log, [may + timedelta(seconds=1)])  # pending across the migration
        engine.dispose()

        upgrade(fresh_url)
        if engine.dialect.name == "postgresql":
            made = partition_names(engine)
            assert {Month.of(march).name, Month.of(may).name} <= made  # every month with entries
            current = Month.of(datetime.now(UTC))
            assert {current.plus(i).name for i in range(audit_partitions.AHEAD + 1)} <= made
        with engine.connect() as conn:
            claimed = conn.execute(select(audit_seq_claims.c.seq).order_by(audit_seq_claims.c.seq)).scalars()
            assert list(claimed) == list(range(8))  # every index given before the migration is claimed
        stored = check_stored_log(log, TENANT, signer.verifier)
        assert (stored.ok, stored.rows) == (True, 9), stored.detail
        assert log.drain() == 1  # the pending entry gets the next index in its partition
        log.checkpoint(TENANT)
        report = verify(log.export(TENANT), signer.verifier)
        assert (report.ok, report.entries, report.checkpoints) == (True, 9, 3), report.detail
        engine.dispose()

        command.downgrade(config, "0005_subs")
        with engine.connect() as conn:
            assert "audit_seq_claims" not in inspect(conn).get_table_names()
            unique = {i["name"]: i["unique"] for i in inspect(conn).get_indexes("audit_entries")}
        assert unique["uq_audit_entries_tenant_seq"]
        after = verify(log.export(TENANT), signer.verifier)
        assert (after.ok, after.entries, after.checkpoints) == (True, 9, 3), after.detail
        engine.dispose()
        upgrade(fresh_url)  # and up again, from a downgraded database
        assert check_stored_log(log, TENANT, signer.verifier).ok
    finally:
        engine.dispose()


# -- months ahead, and what happens without one ------------------------------------------------------


@pytest.fixture
def months(database_url: str) -> Iterator[Engine]:
    """The session database's engine; every month the tests need is there again afterwards."""
    engine = make_engine(database_url)
    postgresql_only(engine)
    yield engine
    audit_partitions.ensure(engine, now=datetime.now(UTC), since=AUDIT_MONTHS_SINCE)
    engine.dispose()


def drop(engine: Engine, month: Month) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {month.name}")


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DHO_DATABASE_URL", database_url)
    return CliRunner()


def test_db_upgrade_makes_the_months_ahead(months: Engine) -> None:
    current = Month.of(datetime.now(UTC))
    assert {current.plus(i).name for i in range(audit_partitions.AHEAD + 1)} <= partition_names(months)
    with months.connect() as conn:  # each month is analysed sooner than by default (deploy/README.md)
        options = conn.execute(
            text("SELECT reloptions FROM pg_class WHERE relname = :name"), {"name": current.name}
        ).scalar()
    assert sorted(options) == sorted(audit_partitions.PARTITION_STORAGE.replace(" ", "").split(","))


def test_a_missing_next_month_is_reported_before_it_is_an_outage(
    months: Engine, app: Flask, client: ApiClient, cli: CliRunner
) -> None:
    current = Month.of(datetime.now(UTC))
    probe = app.test_client()
    assert probe.get("/readyz").get_json()["checks"]["audit_partitions"] == "ok"
    assert cli.invoke(audit, ["partitions", "check"]).exit_code == 0

    drop(months, current.plus(1))
    ready = probe.get("/readyz")
    assert ready.status_code == 200  # appends of this month still work
    assert ready.get_json()["checks"]["audit_partitions"].startswith("degraded")
    assert str(current.plus(1)) in ready.get_json()["checks"]["audit_partitions"]
    checked = cli.invoke(audit, ["partitions", "check"])
    assert checked.exit_code == 1
    assert str(current.plus(1)) in checked.output
    found = client.post(f"{BASE}/Observation/_search", data=search_form(fnr()))
    assert found.status_code == 200

    made = cli.invoke(audit, ["partitions", "ensure"])
    assert made.exit_code == 0, made.output
    assert cli.invoke(audit, ["partitions", "check"]).exit_code == 0
    assert probe.get("/readyz").get_json()["checks"]["audit_partitions"] == "ok"


def test_the_polling_sequencer_makes_missing_months(months: Engine, log: AuditLog) -> None:
    later = Month.of(datetime.now(UTC)).plus(audit_partitions.AHEAD)
    drop(months, later)
    assert later in audit_partitions.missing(months, now=datetime.now(UTC))
    stops = iter([False, True])
    run(log, loop=True, interval=0.01, should_stop=lambda: next(stops))
    assert audit_partitions.missing(months, now=datetime.now(UTC)) == []


def test_an_append_without_its_month_answers_503_and_stores_nothing(
    months: Engine, app: Flask, client: ApiClient, services: Services
) -> None:
    patient = fnr()
    assert client.post(f"{BASE}/Observation", json=heart_rate(fnr())).status_code == 201  # tokens in hand
    assert client.post(f"{BASE}/Observation/_search", data=search_form(patient)).status_code == 200
    current = Month.of(datetime.now(UTC))
    drop(months, current)
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["audit_partitions"].startswith("unavailable")

    written = client.post(f"{BASE}/Observation", json=heart_rate(patient))
    assert written.status_code == 503, written.get_json()
    assert written.headers["Retry-After"]
    read = client.post(f"{BASE}/Observation/_search", data=search_form(patient))
    assert read.status_code == 503, read.get_json()
    assert "entry" not in read.get_json()

    services.audit_log.ensure_partitions()
    found = client.post(f"{BASE}/Observation/_search", data=search_form(patient))
    assert found.status_code == 200
    assert found.get_json().get("total", 0) == 0  # the refused write stored nothing


# -- append-only on every partition -------------------------------------------------------------------


@pytest.mark.parametrize("statement", ["UPDATE {} SET outcome = '8'", "DELETE FROM {}"])
def test_each_partition_refuses_changes(log: AuditLog, statement: str) -> None:
    postgresql_only(log.engine)
    append_at(log, [T0, T0 + timedelta(days=60)])
    log.drain()
    for month in (Month.of(T0), Month.of(T0 + timedelta(days=60))):
        with pytest.raises(DBAPIError, match="append-only"), log.engine.begin() as conn:
            conn.exec_driver_sql(statement.format(month.name))
    with pytest.raises(DBAPIError, match="append-only"), log.engine.begin() as conn:
        conn.execute(audit_seq_claims.delete())
    report = verify(log.export(TENANT), log.signer.verifier)  # type: ignore[union-attr]
    assert (report.ok, report.entries) == (True, 2)


# -- queries bounded in time read only their months ---------------------------------------------------


def plans(engine: Engine, work: Any) -> list[str]:
    """``EXPLAIN`` of every SELECT on ``audit_entries`` that ``work()`` runs, with its parameters."""
    seen = audit_selects(engine, work)
    found = []
    with engine.connect() as conn:
        for statement, params in seen:
            rows = conn.exec_driver_sql("EXPLAIN " + statement, params).scalars().all()
            found.append("\n".join(rows))
    return found


def test_queries_bounded_in_time_read_only_their_months(log: AuditLog) -> None:
    postgresql_only(log.engine)
    march, may = T0, T0 + timedelta(days=60)
    append_at(log, [march, march + timedelta(hours=1), may])
    log.drain()
    with log.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE audit_entries")
    start, end = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)
    other = partition_names(log.engine) - {Month.of(march).name}
    assert Month.of(may).name in other

    def search() -> None:
        assert len(log.search(TENANT, date_from=start, date_to=end, sequence_first=False)) == 2

    def report() -> None:
        log.report(TENANT, start, end, sequence_first=False)

    def dashboard() -> None:
        scan(log.engine, TENANT, start, end)

    for name, work in (("search", search), ("report", report), ("console", dashboard)):
        explained = plans(log.engine, work)
        assert explained, name
        for plan in explained:
            assert Month.of(march).name in plan, (name, plan)
            assert not [p for p in other if p in plan], (name, plan)
