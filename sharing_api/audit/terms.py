"""The searchable facts of a stored AuditEvent, read from its JSON when it is appended.

``AuditLog.append`` stores them in indexed columns so that the auditor's search and the patient's access
log do not parse events (product.md §2). They are read from the shapes ``events`` builds: the
``ACTION_SYSTEM`` coding of ``subtype`` (AuthZconsent events are ``access.decision``), ``outcome``,
``recorded``, the v3-ActReason coding of ``purposeOfEvent``, the contained ``Patient``, the health
worker's HPR and legal entity (through the contained ``PractitionerRole`` to the contained
``Practitioner`` and ``Organization``, or as logical references in events written before that), the
organisation agent (``PROV``) for a system client, and the client agent's identifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import ACTION_SYSTEM, HPR_SYSTEM, ORGNR_SYSTEM, AuditFacts

__all__ = ["SearchTerms", "facts_terms", "micros", "search_terms"]

_AUTHZ_SUBTYPE = "AuthZ-Consent"
_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_CLIENT_ROLES = frozenset({"110150", "110152", "110153"})
_PROVIDER = "PROV"


@dataclass(frozen=True, slots=True)
class SearchTerms:
    """The indexed columns of one log entry."""

    recorded: int
    action: AuditAction
    outcome: Outcome
    purpose: str | None
    patient_system: str | None
    patient_value: str | None
    agent_hpr: str | None
    organisation: str | None
    client_id: str | None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(when: datetime) -> int:
    """Microseconds since the epoch (UTC) of an aware datetime, as every time column stores it."""
    return (when - _EPOCH) // _MICROSECOND


def _codings(value: Any) -> list[Mapping[str, Any]]:
    return [c for c in value if isinstance(c, Mapping)] if isinstance(value, list) else []


def _action(event: Mapping[str, Any]) -> AuditAction:
    for coding in _codings(event.get("subtype")):
        if coding.get("system") == ACTION_SYSTEM:
            return AuditAction(str(coding.get("code")))
        if coding.get("code") == _AUTHZ_SUBTYPE:
            return AuditAction.ACCESS_DECISION
    raise ValueError("the AuditEvent names no AuditAction (build it with sharing_api.audit.events)")


def _identifier(resource: Mapping[str, Any], system: str | None = None) -> tuple[str, str] | None:
    for ident in resource.get("identifier") or ():
        if isinstance(ident, Mapping) and (system is None or ident.get("system") == system):
            sys_, value = ident.get("system"), ident.get("value")
            if isinstance(sys_, str) and isinstance(value, str):
                return sys_, value
    return None


def _reference(value: Any, system: str, contained: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The identifier value in ``system`` of a reference: a logical one (``Reference.identifier``) or
    one to a contained resource (``#id``) and that resource's identifier."""
    if not isinstance(value, Mapping):
        return None
    ref = value.get("reference")
    if isinstance(ref, str) and ref.startswith("#") and ref[1:] in contained:
        found = _identifier(contained[ref[1:]], system)
        return found[1] if found else None
    ident = value.get("identifier")
    if isinstance(ident, Mapping) and ident.get("system") == system and isinstance(ident.get("value"), str):
        return str(ident["value"])
    return None


def search_terms(event: Mapping[str, Any]) -> SearchTerms:
    """The indexed columns of ``event``; ``ValueError`` if it is not an AuditEvent this package built."""
    if event.get("resourceType") != "AuditEvent":
        raise ValueError("only AuditEvent resources go into the audit log")
    recorded = event.get("recorded")
    if not isinstance(recorded, str):
        raise ValueError("the AuditEvent has no recorded time")
    when = datetime.fromisoformat(recorded)
    if when.utcoffset() is None:
        raise ValueError("AuditEvent.recorded must carry a time zone")
    purpose = next(
        (
            c.get("code")
            for pe in event.get("purposeOfEvent") or ()
            for c in _codings(pe.get("coding"))
            if c.get("system") == _ACT_REASON
        ),
        None,
    )
    patient = hpr = org = None
    resources = [r for r in event.get("contained") or () if isinstance(r, Mapping)]
    by_id = {str(r["id"]): r for r in resources if isinstance(r.get("id"), str)}
    for res in resources:
        kind = res.get("resourceType")
        if kind == "Patient":
            patient = _identifier(res)
        elif kind == "PractitionerRole":
            hpr = _reference(res.get("practitioner"), HPR_SYSTEM, by_id)
            org = _reference(res.get("organization"), ORGNR_SYSTEM, by_id)
    client = None
    for agent in event.get("agent") or ():
        types = {c.get("code") for c in _codings((agent.get("type") or {}).get("coding"))}
        who = agent.get("who") or {}
        ident = who.get("identifier") or {}
        if client is None and types & _CLIENT_ROLES and isinstance(ident.get("value"), str):
            client = ident["value"]
        if org is None and _PROVIDER in types:
            org = _reference(who, ORGNR_SYSTEM, by_id)
    return SearchTerms(
        recorded=micros(when),
        action=_action(event),
        outcome=Outcome(str(event.get("outcome"))),
        purpose=purpose if isinstance(purpose, str) else None,
        patient_system=patient[0] if patient else None,
        patient_value=patient[1] if patient else None,
        agent_hpr=hpr,
        organisation=org,
        client_id=client,
    )


def facts_terms(facts: AuditFacts) -> SearchTerms:
    """``search_terms(build_audit_event(facts))``, read from the facts instead of the built event (the
    request path: ``log.facts_row``), value for value: ``recorded`` is written
    to the microsecond; the event's first v3-ActReason coding is ``purpose_of_use``; its contained
    ``Patient`` is ``patient``; its ``PractitionerRole`` exists when there is a ``practitioner_hpr``
    and names the ``organisation``'s ``Organization``, and without a health worker the ``PROV`` agent
    names ``organisation``; the client agent has an identifier when ``client_id`` is not empty.
    ``tests/audit/test_events`` compares the two for every action, outcome and shape of caller, and
    every search re-reads the columns from the event bytes (``log.column_mismatch``)."""
    patient = facts.patient
    return SearchTerms(
        recorded=micros(facts.recorded),
        action=facts.action,
        outcome=facts.outcome,
        purpose=facts.purpose_of_use,
        patient_system=patient[0] if patient else None,
        patient_value=patient[1] if patient else None,
        agent_hpr=facts.practitioner_hpr,
        organisation=facts.organisation,
        client_id=facts.client_id or None,
    )
