"""Log control (logkontroll): what a controller's privacy officer must look at in a period.

Controllers must keep and review access logs (Normen; pasientjournalforskriften § 14; product.md §2,
"runs log-control reports (emergency access, denied attempts, unusual volume)"). ``log_control`` reads
the indexed columns of one tenant's log over ``[date_from, date_to)`` and returns findings of four kinds:

* ``emergency``: accesses with purpose ETREAT or BTG, which domain.md flags for review every time;
* ``denied``: requests that ended in a failure outcome (refusals by authentication, scope or policy),
  each with ``why`` in words: the sharing policy's reasons (the patient's reservation, a block of the
  health worker, no agreement...) from the event's ``sharing-decision`` entity, else its ``outcomeDesc``
  (e.g. the scope the token lacked);
* ``volume``: a health worker (HPR) who read more than ``volume_threshold`` distinct patients, or made
  more than ``request_threshold`` reads (many requests about few patients is unusual too);
* ``outside_agreement``: a successful read by another organisation at a moment when no sharing
  agreement with that organisation was valid. The agreements table belongs to the sharing policy, so
  the caller passes either ``(consumer org.nr, valid from, valid to or None)`` periods or a callable
  ``(org.nr, moment) -> bool``. The controller's own reads need no agreement.

Each request is one entry carrying its decision (a denial is the entry's failure outcome). Logs written
before that also hold separate AuthZconsent records (``access.decision``) repeating their request; those
are left out, so old and new logs are counted alike.
Each kind lists at most ``max_findings`` entries; ``totals`` counts them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from consent.policy import Reason
from sharing_api.audit.actions import EMERGENCY_PURPOSES, READ_ACTIONS, AuditAction, Outcome
from sharing_api.audit.terms import micros
from sharing_api.store.schema import audit_entries

__all__ = ["AgreementCheck", "AgreementPeriod", "Finding", "FindingKind", "LogControlReport", "log_control"]

e = audit_entries
AgreementPeriod = tuple[str, datetime, datetime | None]
AgreementCheck = Callable[[str, datetime], bool]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_READS = sorted(a.value for a in READ_ACTIONS)


REASONS_IN_WORDS: dict[str, str] = {
    Reason.NO_AGREEMENT: "no sharing agreement",
    Reason.AGREEMENT_EXPIRED: "the sharing agreement has ended",
    Reason.AGREEMENT_NOT_YET_VALID: "the sharing agreement is not yet in force",
    Reason.PURPOSE_NOT_AGREED: "the purpose is not covered by the agreement",
    Reason.SCOPE_NOT_AGREED: "the data asked for is not covered by the agreement",
    Reason.BLOCKED_PRACTITIONER: "the patient has blocked this health worker",
    Reason.PRACTITIONER_NOT_NAMED: "no health worker named (a block cannot be checked)",
    Reason.RESERVATION: "the patient's reservation against sharing",
    Reason.NO_CONSENT: "no consent from the patient (opt-in tenant)",
    Reason.SCOPE_NOT_CONSENTED: "the data asked for is not covered by the patient's consent",
}
"""The sharing policy's deny reasons (``consent.policy.Reason``) as an auditor reads them."""


def refusal_reason(event: bytes) -> str | None:
    """Why the request of this stored AuditEvent was refused, in words: the policy's reasons, else the
    event's ``outcomeDesc`` (authentication and scope refusals), else ``None``."""
    try:
        parsed = orjson.loads(event)
    except orjson.JSONDecodeError:
        return None
    reasons = [
        d.get("valueString", "")
        for entity in parsed.get("entity", [])
        if entity.get("name") == "sharing-decision"
        for d in entity.get("detail", [])
        if d.get("type") == "reason"
    ]
    denials = [REASONS_IN_WORDS[r] for r in reasons if r in REASONS_IN_WORDS]
    if denials:
        return "; ".join(denials)
    described = parsed.get("outcomeDesc")
    return str(described) if described else None


class FindingKind(StrEnum):
    EMERGENCY = "emergency"
    DENIED = "denied"
    VOLUME = "volume"
    OUTSIDE_AGREEMENT = "outside_agreement"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One thing to review. Entry findings name the entry (``seq``); volume findings the health worker."""

    kind: FindingKind
    detail: str
    seq: int | None = None
    recorded: datetime | None = None
    action: str | None = None
    outcome: str | None = None
    purpose: str | None = None
    organisation: str | None = None
    agent_hpr: str | None = None
    patient: str | None = None
    why: str | None = None
    requests: int | None = None
    patients: int | None = None

    def to_json(self, zone: tzinfo = UTC) -> dict[str, Any]:
        """The finding as JSON; ``recorded`` as ISO 8601 in ``zone``."""
        out: dict[str, Any] = {"kind": self.kind.value, "detail": self.detail}
        for name in FIELDS[2:]:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.recorded is not None:
            out["recorded"] = self.recorded.astimezone(zone).isoformat()
        return out


FIELDS = (
    "kind",
    "detail",
    "seq",
    "action",
    "outcome",
    "purpose",
    "organisation",
    "agent_hpr",
    "patient",
    "why",
    "requests",
    "patients",
)
"""The fields of a finding besides ``recorded``, in the order reports print them."""


@dataclass(frozen=True, slots=True)
class LogControlReport:
    """The findings of one log-control run, with how many there were of each kind."""

    tenant: str
    date_from: datetime
    date_to: datetime
    entries: int
    findings: tuple[Finding, ...]
    totals: dict[str, int] = field(default_factory=dict)

    def of(self, kind: FindingKind) -> list[Finding]:
        return [f for f in self.findings if f.kind is kind]

    def to_json(self, zone: tzinfo = UTC) -> dict[str, Any]:
        """The report as JSON, times as ISO 8601 in ``zone``."""
        return {
            "tenant": self.tenant,
            "from": self.date_from.astimezone(zone).isoformat(),
            "to": self.date_to.astimezone(zone).isoformat(),
            "entries": self.entries,
            "totals": dict(self.totals),
            "findings": [f.to_json(zone) for f in self.findings],
        }


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _finding(kind: FindingKind, row: Any, detail: str) -> Finding:
    return Finding(
        kind=kind,
        detail=detail,
        seq=row.seq,
        recorded=_at(row.recorded),
        action=row.action,
        outcome=row.outcome,
        purpose=row.purpose,
        organisation=row.organisation,
        agent_hpr=row.agent_hpr,
        patient=row.patient_value,
        why=refusal_reason(bytes(row.event)) if kind is FindingKind.DENIED else None,
    )


_COLUMNS = (
    e.c.seq,
    e.c.recorded,
    e.c.action,
    e.c.outcome,
    e.c.purpose,
    e.c.organisation,
    e.c.agent_hpr,
    e.c.patient_value,
    e.c.event,
)


def _listed(
    conn: Connection,
    where: list[ColumnElement[bool]],
    limit: int,
    kind: FindingKind,
    detail: Callable[[Any], str],
) -> tuple[int, list[Finding]]:
    total = int(conn.execute(select(func.count()).select_from(e).where(*where)).scalar() or 0)
    rows = conn.execute(select(*_COLUMNS).where(*where).order_by(e.c.recorded, e.c.id).limit(limit)).all()
    return total, [_finding(kind, r, detail(r)) for r in rows]


def _uncovered(
    periods: list[tuple[datetime, datetime | None]], start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The parts of ``[start, end)`` that no period covers."""
    gaps, cursor = [], start
    for lo, hi in sorted(periods, key=lambda p: p[0]):
        if lo > cursor:
            gaps.append((cursor, min(lo, end)))
        if hi is None:
            return [g for g in gaps if g[0] < g[1]]
        cursor = max(cursor, hi)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end))
    return [g for g in gaps if g[0] < g[1]]


def _outside_agreement(
    conn: Connection,
    base: list[ColumnElement[bool]],
    tenant: str,
    agreements: Iterable[AgreementPeriod] | AgreementCheck,
    date_from: datetime,
    date_to: datetime,
    limit: int,
) -> tuple[int, list[Finding]]:
    reads = [
        *base,
        e.c.action.in_(_READS),
        e.c.outcome == Outcome.SUCCESS.value,
        e.c.organisation.is_not(None),
        e.c.organisation != tenant,
    ]
    if callable(agreements):
        check = agreements
        total, found = 0, list[Finding]()
        stream = conn.execute(select(*_COLUMNS).where(*reads).order_by(e.c.recorded, e.c.id))
        for row in stream:
            if not check(row.organisation, _at(row.recorded)):
                total += 1
                if len(found) < limit:
                    found.append(_finding(FindingKind.OUTSIDE_AGREEMENT, row, "no valid sharing agreement"))
        return total, found
    by_org: dict[str, list[tuple[datetime, datetime | None]]] = {}
    for consumer, valid_from, valid_to in agreements:
        by_org.setdefault(consumer, []).append((valid_from, valid_to))
    orgs = conn.execute(select(e.c.organisation).where(*reads).distinct()).scalars().all()
    conds: list[ColumnElement[bool]] = []
    for org in orgs:
        gaps = _uncovered(by_org.get(org, []), date_from, date_to)
        if gaps:
            window = or_(*(and_(e.c.recorded >= micros(lo), e.c.recorded < micros(hi)) for lo, hi in gaps))
            conds.append(and_(e.c.organisation == org, window))
    if not conds:
        return 0, []
    return _listed(
        conn,
        [*reads, or_(*conds)],
        limit,
        FindingKind.OUTSIDE_AGREEMENT,
        lambda r: "no valid sharing agreement",
    )


def log_control(
    engine: Engine,
    tenant: str,
    date_from: datetime,
    date_to: datetime,
    *,
    volume_threshold: int = 50,
    request_threshold: int = 500,
    agreements: Iterable[AgreementPeriod] | AgreementCheck | None = None,
    max_findings: int = 1000,
) -> LogControlReport:
    """The log-control findings of ``tenant`` over ``[date_from, date_to)`` (module docstring).

    Reads sequenced and pending entries alike (a pending entry's finding has ``seq`` ``None``).
    Without ``agreements`` there are no ``outside_agreement`` findings.
    """
    if date_from.utcoffset() is None or date_to.utcoffset() is None:
        raise ValueError("report dates must be timezone-aware")
    base: list[ColumnElement[bool]] = [
        e.c.tenant == tenant,
        e.c.recorded >= micros(date_from),
        e.c.recorded < micros(date_to),
    ]
    requests = [*base, e.c.action != AuditAction.ACCESS_DECISION.value]
    findings: list[Finding] = []
    totals: dict[str, int] = {}
    with engine.connect() as conn, conn.begin():
        entries = int(conn.execute(select(func.count()).select_from(e).where(*base)).scalar() or 0)
        total, found = _listed(
            conn,
            [*requests, e.c.purpose.in_(sorted(EMERGENCY_PURPOSES))],
            max_findings,
            FindingKind.EMERGENCY,
            lambda r: f"emergency access ({r.purpose})",
        )
        totals[FindingKind.EMERGENCY.value] = total
        findings += found
        total, found = _listed(
            conn,
            [*requests, e.c.outcome != Outcome.SUCCESS.value],
            max_findings,
            FindingKind.DENIED,
            lambda r: f"{r.action} refused (outcome {r.outcome})",
        )
        totals[FindingKind.DENIED.value] = total
        findings += found
        patients = func.count(e.c.patient_value.distinct())
        reads = func.count()
        volume = conn.execute(
            select(
                e.c.agent_hpr,
                patients.label("patients"),
                reads.label("requests"),
                func.max(e.c.organisation).label("org"),
            )
            .where(
                *requests,
                e.c.action.in_(_READS),
                e.c.outcome == Outcome.SUCCESS.value,
                e.c.agent_hpr.is_not(None),
                e.c.patient_value.is_not(None),
            )
            .group_by(e.c.agent_hpr)
            .having(or_(patients > volume_threshold, reads > request_threshold))
            .order_by(patients.desc(), reads.desc(), e.c.agent_hpr)
        ).all()
        totals[FindingKind.VOLUME.value] = len(volume)
        findings += (
            Finding(
                kind=FindingKind.VOLUME,
                detail=(
                    f"read {r.patients} distinct patients in {r.requests} requests "
                    f"(thresholds {volume_threshold} patients, {request_threshold} requests)"
                ),
                agent_hpr=r.agent_hpr,
                organisation=r.org,
                requests=r.requests,
                patients=r.patients,
            )
            for r in volume[:max_findings]
        )
        if agreements is not None:
            total, found = _outside_agreement(
                conn, requests, tenant, agreements, date_from, date_to, max_findings
            )
            totals[FindingKind.OUTSIDE_AGREEMENT.value] = total
            findings += found
    return LogControlReport(tenant, date_from, date_to, entries, tuple(findings), totals)
