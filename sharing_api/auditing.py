"""From a request's plain facts to the audit log: who, for whom, why, what, and the decision.

Web-free: the routes hand in the :class:`Caller`, the tenant, the patient and a :class:`RequestInfo`.
Writing fails closed: an error propagates, and the caller answers 503 with no data (product.md §4 step 5).
Tokens, proofs and measurement values are never part of what is recorded: only reads record the request
body (a search's form), never writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from auth.caller import Caller
from consent.policy import Decision
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import AuditFacts, Coded, DecisionRef, SharingDecision
from sharing_api.audit.log import AuditLog
from sharing_api.audit.pseudonym import PidHasher


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the audit keeps of the HTTP request itself."""

    method: str
    target: str
    """Path and query string, exactly as received."""
    body: bytes | None
    """The form body of a read (search parameters), else ``None``."""
    correlation_id: str
    source_address: str | None
    server: str

    def query(self) -> bytes:
        """The raw query for ``entity.query``: the request line, and a search's form body."""
        head = f"{self.method} {self.target}".encode()
        return head + (b"\n\n" + self.body if self.body else b"")


def _coded(coding: object) -> Coded | None:
    code, system = getattr(coding, "code", None), getattr(coding, "system", None)
    if not code or not system:
        return None
    return Coded(system=system, code=code, display=getattr(coding, "text", None))


def _name(ident: object, caller: Caller | None, *, of_care: bool = False) -> str | None:
    """The attestation's name for the caller's legal entity (or point of care), when it names that one."""
    if caller is None or ident is None:
        return None
    number = caller.point_of_care if of_care else caller.organisation
    name = getattr(ident, "name", None)
    return name if name and getattr(ident, "id", None) == number else None


@dataclass(frozen=True, slots=True)
class CallerFacts:
    """What one request's facts say of its caller: a pure function of the (frozen) ``Caller`` and the
    deployment's ``pid_hash``, so the same for every request of one cached token (``caller_facts``).
    Each field is the ``AuditFacts`` field of the same name (``audit_facts`` passes them on by name)."""

    client_id: str | None = None
    organisation: str | None = None
    organisation_name: str | None = None
    point_of_care: str | None = None
    point_of_care_name: str | None = None
    practitioner_hpr: str | None = None
    practitioner_pid_hash: str | None = None
    practitioner_authorization: Coded | None = None
    purpose_of_use: str | None = None
    purpose_of_use_details: Coded | None = None
    healthcare_service: Coded | None = None
    decision_ref: DecisionRef | None = None
    attested_at: datetime | None = None
    token_jti: str | None = None


_NOBODY = CallerFacts()
MAX_KNOWN_CALLERS = 1024
"""Callers whose ``CallerFacts`` are remembered: about one per live access token of a worker (a
``Caller`` is built once per cached token, auth/resource.py). Bounded, so memory stays flat."""
_Known = tuple[CallerFacts, dict[str, Any]]
"""A caller's facts, and the same as ``AuditFacts`` keyword arguments (``audit_facts``)."""
_known_callers: dict[int, tuple[Caller, Callable[[str], str] | None, _Known]] = {}


def _fields(facts: CallerFacts) -> dict[str, Any]:
    return {name: getattr(facts, name) for name in CallerFacts.__slots__}


_NOBODY_KNOWN: _Known = (_NOBODY, _fields(_NOBODY))


def caller_facts(caller: Caller | None, pid_hash: Callable[[str], str] | None = None) -> CallerFacts:
    """The caller's part of the facts, made once per ``Caller`` object and ``pid_hash``.

    Remembered by the caller's identity, and used only for that very object and that very
    ``pid_hash`` (``is``: a ``Caller`` is immutable, and the entry holds it, so its id is not reused
    while remembered); a new token is a new ``Caller`` and gets its own. Nothing in it is a secret
    (the keyed hash of a number is what the log records anyway)."""
    return _known(caller, pid_hash)[0]


def _known(caller: Caller | None, pid_hash: Callable[[str], str] | None) -> _Known:
    if caller is None:
        return _NOBODY_KNOWN
    known = _known_callers.get(id(caller))
    if known is not None and known[0] is caller and known[1] is pid_hash:
        return known[2]
    made = _caller_facts(caller, pid_hash)
    if len(_known_callers) >= MAX_KNOWN_CALLERS:
        _known_callers.clear()  # tokens live minutes: start over rather than keep an LRU order
    entry = _known_callers[id(caller)] = (caller, pid_hash, (made, _fields(made)))
    return entry[2]


def _caller_facts(caller: Caller, pid_hash: Callable[[str], str] | None) -> CallerFacts:
    attestation = caller.attestation
    decision_ref = None
    if attestation is not None and attestation.decision_ref is not None:
        ref = attestation.decision_ref
        decision_ref = DecisionRef(id=ref.id, user_selected=ref.user_selected, description=ref.description)
    return CallerFacts(
        client_id=caller.client_id,
        organisation=caller.organisation,
        organisation_name=_name(attestation.legal_entity if attestation else None, caller),
        point_of_care=caller.point_of_care,
        point_of_care_name=_name(attestation.point_of_care if attestation else None, caller, of_care=True),
        practitioner_hpr=caller.practitioner_hpr,
        practitioner_pid_hash=pid_hash(caller.pid) if pid_hash and caller.pid else None,
        practitioner_authorization=_coded(attestation.authorization) if attestation else None,
        purpose_of_use=str(caller.purpose_of_use) if caller.purpose_of_use else None,
        purpose_of_use_details=_coded(attestation.purpose_of_use_details) if attestation else None,
        healthcare_service=_coded(attestation.healthcare_service) if attestation else None,
        decision_ref=decision_ref,
        attested_at=datetime.fromtimestamp(attestation.toa, UTC) if attestation and attestation.toa else None,
        token_jti=caller.token_jti,
    )


def audit_facts(
    *,
    action: AuditAction,
    outcome: Outcome,
    tenant: str,
    caller: Caller | None,
    request: RequestInfo,
    patient: tuple[str, str] | None = None,
    resources: Sequence[str] = (),
    decision: Decision | None = None,
    categories: Sequence[str] = (),
    description: str | None = None,
    pid_hash: Callable[[str], str] | None = None,
) -> AuditFacts:
    """The facts of one request. ``pid_hash`` (``Auditor.pid_hash``) turns the health worker's national
    identity number into the keyed hash the event records for rule R8; the number itself never goes
    into the facts. The caller's part is made once per caller (``caller_facts``)."""
    return AuditFacts(
        action=action,
        outcome=outcome,
        recorded=datetime.now(UTC),
        tenant=tenant,
        **_known(caller, pid_hash)[1],
        patient=patient,
        query=request.query(),
        data_categories=tuple(categories),
        resources=tuple(resources),
        decision=SharingDecision(
            permit=decision.permit, reasons=tuple(map(str, decision.reasons)), used=decision.used
        )
        if decision is not None
        else None,
        correlation_id=request.correlation_id,
        source_address=request.source_address,
        description=description,
        server=request.server,
    )


class Auditor:
    """Records facts in the tenant's log, inside a given transaction or in one of its own.

    ``pid_hash`` is the deployment's :class:`PidHasher` (the keyed hash of health workers' national
    identity numbers, for rule R8); without one, events carry no such hash and R8 finds nothing."""

    def __init__(self, log: AuditLog, pid_hash: PidHasher | None = None):
        self.log = log
        self.pid_hash = pid_hash
        #: times each append (the ``/metrics`` histogram); set by ``create_app``
        self.timer: Callable[[], AbstractContextManager[None]] = nullcontext

    def record_in(self, conn: Connection, facts: AuditFacts) -> None:
        with self.timer():
            self.log.record(conn, facts)

    def record(self, facts: AuditFacts) -> None:
        """Record and commit now (before the response that it records is sent).

        A request records one event (``events.build_audit_events``), which ``AuditLog.record`` writes
        as its own transaction (``conn=None``): on PostgreSQL one INSERT in autocommit straight through
        the driver (issue 12), which PostgreSQL commits (durably, ``synchronous_commit`` on) before it
        answers; no BEGIN and COMMIT round trips. Any error still propagates before a byte of the
        response is sent.
        """
        with self.timer():
            self.log.record(None, facts)
