"""The audit log's partial indexes serve the queries that read them (migration 0007_audit_partial).

``ix_audit_entries_seq``, ``_patient``, ``_agent`` and ``_organisation`` hold only sequenced entries and
``ix_audit_entries_pending`` only pending ones, so an append adds fewer index entries. That is only
right if every query that needs one of them still gets it: each query below is EXPLAINed (sequential
scans off, so a query that cannot use its partial index would show another index or a scan), on both
backends.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from sharing_api.audit.log import AuditLog
from tests.audit.factories import HOSPITAL, TENANT, audit_selects, bulk_pending, facts


def plans(engine: Engine, work: Any) -> list[str]:
    """The plan of every SELECT on ``audit_entries`` that ``work()`` runs, with its parameters."""
    seen = audit_selects(engine, work)
    postgres = engine.dialect.name == "postgresql"
    found = []
    with engine.connect() as conn:
        if postgres:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, params in seen:
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(explain + statement, params).all()
            found.append("\n".join(str(r[-1]) for r in rows))
    return found


def index_names(engine: Engine, index: str) -> set[str]:
    """``index`` and, on PostgreSQL, the indexes of each monthly partition attached to it."""
    if engine.dialect.name != "postgresql":
        return {index}
    with engine.connect() as conn:
        parts = conn.exec_driver_sql(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = CAST(%(index)s AS regclass)",
            {"index": index},
        )
        return {index, *parts.scalars()}


def _uses(plan: str, names: set[str]) -> bool:
    words = set(plan.replace("(", " ").split())
    return bool(words & names)


def test_each_partial_index_serves_its_queries(log: AuditLog) -> None:
    bulk_pending(log, 120)
    assert log.drain(TENANT) == 120
    bulk_pending(log, 10, start=120)  # pending, for the sequencer's queries
    with log.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    patient = facts(7).patient
    assert patient is not None
    hpr = facts(7).practitioner_hpr
    assert hpr is not None
    cases: list[tuple[str, Any, str]] = [
        (
            "the sequencer's pending entries",
            lambda: log.sequence(TENANT, max_batch=5),
            "ix_audit_entries_pending",
        ),
        ("the tenants with pending entries", lambda: log.pending_tenants(), "ix_audit_entries_pending"),
        ("the head's highest index", lambda: log.sequence(TENANT, max_batch=5), "ix_audit_entries_seq"),
        ("an entry by its index", lambda: log.entry(TENANT, 42), "ix_audit_entries_seq"),
        (
            "a patient's entries",
            lambda: log.search(TENANT, patient=patient, sequence_first=False),
            "ix_audit_entries_patient",
        ),
        (
            "a health worker's entries",
            lambda: log.search(TENANT, agent_hpr=hpr, sequence_first=False),
            "ix_audit_entries_agent",
        ),
        (
            "an organisation's entries",
            lambda: log.search(TENANT, organisation=HOSPITAL, sequence_first=False),
            "ix_audit_entries_organisation",
        ),
    ]
    for what, work, index in cases:
        explained = plans(log.engine, work)
        names = index_names(log.engine, index)
        assert any(_uses(plan, names) for plan in explained), (what, index, explained)
