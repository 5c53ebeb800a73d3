"""The audit store without a shared lock on the request path, sequenced set-based, append-only in the
database (issues 12 and 13), and the migration that keeps existing logs' names."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, event, select, text, update
from sqlalchemy.exc import DBAPIError

from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.log import AuditLog
from sharing_api.audit.verify import verify
from sharing_api.store.engine import alembic_config, make_engine, upgrade
from sharing_api.store.schema import audit_checkpoints, audit_entries, audit_heads
from tests.audit.factories import TENANT, fill
from tests.conftest import migrate

e = audit_entries


def postgresql_only(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks and the append-only trigger are PostgreSQL's (SQLite has one writer)")


def test_appends_and_polling_sequencers_do_not_wait_for_a_held_head(log: AuditLog) -> None:
    postgresql_only(log.engine)
    log.drain(TENANT)  # the head exists
    holder = log.engine.connect()
    holder.begin()
    holder.execute(select(audit_heads).where(audit_heads.c.tenant == TENANT).with_for_update())
    results: dict[str, Any] = {}

    def work() -> None:
        fill(log, 5)  # appends commit while a sequencer holds the head
        results["sequenced"] = log.sequence(TENANT, wait=False)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(120)  # a deadlock guard, not a timing assertion
    stuck = worker.is_alive()
    holder.rollback()
    holder.close()
    worker.join()
    assert not stuck, "an append or a polling sequencer waited for the held head row"
    assert results["sequenced"] == 0  # skipped: the holder is doing the work
    assert log.sequence(TENANT, wait=False) == 5
    assert [x.seq for x in log.search(TENANT)] == [0, 1, 2, 3, 4]


def test_a_batch_is_one_set_based_update(log: AuditLog) -> None:
    postgresql_only(log.engine)
    fill(log, 200)
    statements: list[tuple[str, bool]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE AUDIT_ENTRIES"):
            statements.append((statement, many))

    event.listen(log.engine, "before_cursor_execute", seen)
    try:
        assert log.sequence(TENANT, max_batch=500) == 200
    finally:
        event.remove(log.engine, "before_cursor_execute", seen)
    assert len(statements) == 1
    assert statements[0][1] is False  # one statement, not one per entry
    report = verify(log.export(TENANT), log.signer.verifier)  # type: ignore[union-attr]
    assert report.ok, report.detail


@pytest.mark.parametrize(
    ("what", "statement"),
    [
        ("a sequenced entry's column", update(e).where(e.c.seq == 1).values(outcome="8")),
        ("a sequenced entry's event", update(e).where(e.c.seq == 1).values(event=b"{}")),
        ("a sequenced entry's index", update(e).where(e.c.seq == 1).values(seq=99)),
        ("a pending entry's column", update(e).where(e.c.seq.is_(None)).values(patient_value="1")),
        ("a sequenced entry", e.delete().where(e.c.seq == 1)),
        ("a pending entry", e.delete().where(e.c.seq.is_(None))),
        ("a checkpoint", audit_checkpoints.delete()),
        ("a checkpoint's note", update(audit_checkpoints).values(note="x")),
    ],
)
def test_the_database_refuses_to_change_the_log(what: str, statement: Any, log: AuditLog) -> None:
    postgresql_only(log.engine)
    fill(log, 12)
    log.drain()
    log.checkpoint(TENANT)
    fill(log, 2, start=12)  # pending
    with pytest.raises(DBAPIError, match="append-only"), log.engine.begin() as conn:
        conn.execute(statement)
    log.drain()  # the sequencer's own update still works
    assert log.checkpoint(TENANT) is not None
    report = verify(log.export(TENANT), log.signer.verifier)  # type: ignore[union-attr]
    assert (report.ok, report.entries) == (True, 14), what


def test_the_migration_keeps_the_name_existing_checkpoints_carry(fresh_url: str, signer: AuditSigner) -> None:
    migrate(fresh_url)
    engine = make_engine(fresh_url)
    try:
        old = AuditLog(engine, signer=signer, origin="https://old-url.example/audit")  # the name before 0004
        fill(old, 9)
        old.drain()
        old.checkpoint(TENANT)
        engine.dispose()
        command.downgrade(alembic_config(fresh_url), "0003")  # as the database was before 0004
        upgrade(fresh_url)
        with engine.begin() as conn:
            assert (
                conn.execute(text("SELECT origin FROM audit_heads")).scalar()
                == f"https://old-url.example/audit/{TENANT}"
            )
        new = AuditLog(engine, signer=signer, origin="dho-share.new-host.example/audit")
        assert new.log_name(TENANT) == f"https://old-url.example/audit/{TENANT}"
        fill(new, 3, start=9)
        new.drain()
        new.checkpoint(TENANT)
        report = verify(new.export(TENANT), signer.verifier)
        assert (report.ok, report.checkpoints, report.entries) == (True, 2, 12), report.detail
        assert new.log_name("923456783") == "dho-share.new-host.example/audit/923456783"  # a new log
    finally:
        engine.dispose()
