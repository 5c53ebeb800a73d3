"""Small factories for audit tests: facts of a typical request, and a filled log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import AuditFacts, Coded, DecisionRef, SharingDecision
from sharing_api.audit.log import AuditLog

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

TENANT = "921234562"
OTHER_TENANT = "923456783"
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
HOSPITAL = "993467049"
T0 = datetime(2025, 3, 19, 6, 45, tzinfo=UTC)


def synthetic_fnr(n: int) -> str:
    """An 11-digit synthetic person number (month + 80); the control digits do not matter here."""
    return f"{(n % 28) + 1:02d}{81 + n % 12:02d}69{n % 100000:05d}"


def facts(n: int = 0, **changes: Any) -> AuditFacts:
    """The facts of a hospital doctor's permitted search for patient ``n`` at ``T0 + n seconds``."""
    base = AuditFacts(
        action=AuditAction.OBSERVATION_SEARCH,
        outcome=Outcome.SUCCESS,
        recorded=T0 + timedelta(seconds=n),
        tenant=TENANT,
        client_id="ous-dips-epj",
        organisation=HOSPITAL,
        organisation_name="Oslo universitetssykehus HF",
        point_of_care="874716782",
        practitioner_hpr="9144897",
        practitioner_name="August September",
        purpose_of_use="TREAT",
        purpose_of_use_details=Coded(
            system="https://terminology.dips.com/decisiontemplate",
            code="POLBESOK",
            display="Poliklinisk besøk",
        ),
        healthcare_service=Coded(
            system="urn:oid:2.16.578.1.12.4.1.1.8655", code="S03", display="Indremedisin"
        ),
        decision_ref=DecisionRef(id="23423255", user_selected=False, description="Innlagt pasient"),
        attested_at=T0,
        patient=(FNR, synthetic_fnr(n)),
        query=f"POST /{TENANT}/fhir/Observation/_search\n\npatient={synthetic_fnr(n)}&code=8867-4".encode(),
        data_categories=("vital-signs",),
        resources=(f"Observation/{n:08d}-0000-4000-8000-000000000000",),
        decision=SharingDecision(
            permit=True, reasons=("PERMIT_AGREEMENT",), used=("SharingAgreement/ag-1", "Consent/c-9")
        ),
        token_jti=f"jti-{n}",
        correlation_id=f"req-{n}",
        source_address="10.1.2.3",
        description="search with 1 result",
        server="https://dho.kommune.example",
    )
    return replace(base, **changes)


def fill(log: AuditLog, count: int, tenant: str = TENANT, start: int = 0) -> list[int]:
    """Append ``count`` search events (one each) to ``tenant``'s log in one transaction."""
    from sharing_api.audit.events import build_audit_event

    ids = []
    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        for n in range(start, start + count):
            ids.append(log.append(conn, tenant, build_audit_event(facts(n, tenant=tenant))))
    return ids


def bulk_pending(log: AuditLog, count: int, tenant: str = TENANT, start: int = 0) -> None:
    """Insert ``count`` pending entries at once, as ``append`` would store them (test set-up only)."""
    from sharing_api.audit.events import build_audit_event
    from sharing_api.audit.log import entry_row
    from sharing_api.store.schema import audit_entries

    rows = [
        entry_row(tenant, build_audit_event(facts(n, tenant=tenant))) for n in range(start, start + count)
    ]
    with log.engine.begin() as conn:
        conn.execute(audit_entries.insert(), rows)


@contextmanager
def tampering(engine: Engine) -> Iterator[Connection]:
    """A transaction that edits the stored log as an attacker with the database superuser's rights can:
    on PostgreSQL past the append-only and index-claiming triggers (``session_replication_role =
    replica`` skips them); on SQLite the claiming triggers are dropped for the transaction (anyone who
    can write the file can do that) and made again after it."""
    with engine.begin() as conn:
        triggers: list[str] = []
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        else:
            found = conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_entries'"
            ).all()
            for name, sql in found:
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
                triggers.append(sql)
        yield conn
        for sql in triggers:
            conn.exec_driver_sql(sql)


def audit_selects(engine: Engine, work: Callable[[], Any]) -> list[tuple[str, Any]]:
    """Every SELECT on ``audit_entries`` that ``work()`` runs on ``engine``, with its parameters (for
    the plan tests to EXPLAIN): those through SQLAlchemy's execution (its events) and those sent
    straight to the driver for binary rows (``store.binary_rows``, which the events do not see)."""
    from sharing_api.store import binary_rows

    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "audit_entries" in statement:
            seen.append((statement, params))

    original = binary_rows.rows

    def rows(conn: Any, statement: Any, values: dict[str, Any]) -> list[Any]:
        if conn.dialect.name == "postgresql":  # on SQLite it runs through the Connection: recorded
            record(conn, None, statement.sql, statement.arguments(values), None, False)
        return original(conn, statement, values)

    event.listen(engine, "before_cursor_execute", record)
    binary_rows.rows = rows  # type: ignore[assignment]
    try:
        work()
    finally:
        binary_rows.rows = original  # type: ignore[assignment]
        event.remove(engine, "before_cursor_execute", record)
    return seen
