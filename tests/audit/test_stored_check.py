"""Every column a query filters on is checked against the signed event (issue 13): editing any of them on
disk hides or forges nothing unnoticed. ``check_stored_log`` (``dho-share audit verify --database``)
names the first bad index and the column; ``search`` refuses to return an entry that contradicts its
event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.cli import audit
from sharing_api.audit.events import build_audit_event
from sharing_api.audit.log import DERIVED_COLUMNS, AuditLog, LogCorrupted, entry_row
from sharing_api.audit.stored_check import CHECKED_COLUMNS, check_stored_log
from sharing_api.audit.verify import Problem
from sharing_api.store.schema import audit_entries
from tests.audit.factories import TENANT, facts, fill, tampering

e = audit_entries
INDEX = 13


def _other(value: Any) -> Any:
    """A different value of the column's type."""
    if isinstance(value, int):
        return value + 1_000_000
    if isinstance(value, bytes):
        return value.replace(b'"outcome":"0"', b'"outcome":"4"')
    if value is None:
        return "x"
    return "9" if value != "9" else "8"


@pytest.fixture
def filled(log: AuditLog) -> AuditLog:
    fill(log, 30)
    log.drain()
    log.checkpoint(TENANT)
    fill(log, 3, start=30)  # and three pending entries
    return log


def test_the_checked_columns_are_every_column_the_log_derives_from_an_event() -> None:
    derived = set(entry_row(TENANT, build_audit_event(facts(0)))) - {"tenant"}
    columns = {c.name for c in audit_entries.columns} - {"id", "tenant", "seq", "leaf"}
    assert set(CHECKED_COLUMNS) == columns == derived
    assert set(DERIVED_COLUMNS) | {"event"} == columns


def test_an_untouched_log_passes(filled: AuditLog, signer: AuditSigner) -> None:
    report = check_stored_log(filled, TENANT, signer.verifier)
    assert report.ok, report.detail
    assert report.rows == 33
    assert report.tree.signed_size == 30


@pytest.mark.parametrize("column", CHECKED_COLUMNS)
def test_each_edited_column_is_named_with_its_index(
    column: str, filled: AuditLog, signer: AuditSigner
) -> None:
    with tampering(filled.engine) as conn:
        stored = conn.execute(select(e.c[column]).where(e.c.seq == INDEX)).scalar()
        conn.execute(update(e).where(e.c.seq == INDEX).values({column: _other(stored)}))
    report = check_stored_log(filled, TENANT, signer.verifier)
    assert not report.ok
    if column == "event":  # the event bytes are in the Merkle tree: the leaf no longer matches
        assert (report.problem, report.index) == (Problem.ALTERED, INDEX)
    else:
        assert (report.index, report.column) == (INDEX, column), report.detail
        assert f"index {INDEX}" in report.detail


@pytest.mark.parametrize("column", DERIVED_COLUMNS)
def test_an_edited_pending_entry_is_named_by_its_row(
    column: str, filled: AuditLog, signer: AuditSigner
) -> None:
    with tampering(filled.engine) as conn:
        row_id, stored = conn.execute(
            select(e.c.id, e.c[column]).where(e.c.seq.is_(None)).order_by(e.c.id)
        ).first()  # type: ignore[misc]
        conn.execute(update(e).where(e.c.id == row_id).values({column: _other(stored)}))
    report = check_stored_log(filled, TENANT, signer.verifier)
    assert (report.ok, report.index, report.entry_id, report.column) == (False, None, row_id, column)


def test_a_patient_hidden_from_search_is_found_by_the_check(filled: AuditLog, signer: AuditSigner) -> None:
    target = filled.search(TENANT, count=1000)[INDEX]
    assert target.patient_value is not None
    assert [x.seq for x in filled.search(TENANT, patient=target.patient_value)] == [INDEX]
    with tampering(filled.engine) as conn:
        conn.execute(update(e).where(e.c.seq == INDEX).values(patient_value="00000000000"))
    assert filled.search(TENANT, patient=target.patient_value) == []  # hidden from the search...
    report = check_stored_log(filled, TENANT, signer.verifier)
    assert (report.ok, report.index, report.column) == (
        False,
        INDEX,
        "patient_value",
    )  # ...not from the check
    with pytest.raises(LogCorrupted, match=f"index {INDEX} column patient_value"):
        filled.search(TENANT, patient="00000000000")  # and never shown under the forged value


def test_the_cli_checks_the_database(
    filled: AuditLog, signer: AuditSigner, database_url: str, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DHO_DATABASE_URL", database_url)
    monkeypatch.setenv("DHO_AUDIT_KEY_PATH", str(key_file))
    runner = CliRunner()
    good = runner.invoke(audit, ["verify", "--database", TENANT, "--json"])
    assert good.exit_code == 0, good.output
    assert orjson.loads(good.output)["ok"] is True
    with tampering(filled.engine) as conn:
        conn.execute(update(e).where(e.c.seq == INDEX).values(outcome="8"))
    bad = runner.invoke(audit, ["verify", "--database", TENANT, "--json"])
    assert bad.exit_code == 1
    out = orjson.loads(bad.output)
    assert (out["ok"], out["index"], out["column"]) == (False, INDEX, "outcome")
    human = runner.invoke(audit, ["verify", "--database", TENANT])
    assert "outcome" in human.output
    assert human.exit_code == 1
    assert runner.invoke(audit, ["verify"]).exit_code == 2  # neither an export nor --database
