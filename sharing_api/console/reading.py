"""What the console shows of one stored audit entry: the entry's indexed columns plus the fields an
auditor reads in the AuditEvent (the health worker's name, organisation names, healthcare service,
decision reasons, ``decision_ref``), read leniently so that a field the event does not carry is ``None``.

The AuditEvent shape is the one ``sharing_api.audit.events`` builds (BALP + HL7 Norway's trust-framework
extension); the console never writes events, it only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from sharing_api.audit.actions import EMERGENCY_PURPOSES, Outcome
from sharing_api.audit.log import Entry
from sharing_api.audit.pseudonym import PID_HASH_SYSTEM

__all__ = ["EntryView", "view_of"]

_SUCCESS: str = Outcome.SUCCESS.value  # read once: the rules ask every access (an Enum lookup each time)


@dataclass(frozen=True, slots=True)
class EntryView:
    seq: int | None
    recorded: datetime
    action: str
    outcome: str
    purpose: str | None
    patient_system: str | None
    patient_value: str | None
    agent_hpr: str | None
    organisation: str | None
    client_id: str | None
    practitioner_name: str | None
    organisation_name: str | None
    point_of_care: str | None
    healthcare_service: str | None
    purpose_details: str | None
    categories: tuple[str, ...]
    reasons: tuple[str, ...]
    user_selected: bool | None
    decision_ref: str | None
    jti: str | None
    description: str | None
    correlation_id: str | None = None
    pid_hash: str | None = None
    """The keyed hash of the health worker's national identity number (``audit.pseudonym``), never
    the number; rule R8 compares it with the same hash of ``patient_value``."""

    @property
    def permitted(self) -> bool:
        return self.outcome == _SUCCESS

    @property
    def emergency(self) -> bool:
        return self.purpose in EMERGENCY_PURPOSES


def _contained(event: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in event.get("contained", []):
        if isinstance(item, dict) and item.get("resourceType") == kind:
            return item
    return {}


def _resolve(event: dict[str, Any], ref: Any) -> dict[str, Any]:
    """A ``Reference`` as the contained resource it points to (``#id``), or the reference itself."""
    if not isinstance(ref, dict):
        return {}
    target = ref.get("reference")
    if isinstance(target, str) and target.startswith("#"):
        for item in event.get("contained", []):
            if isinstance(item, dict) and item.get("id") == target[1:]:
                return item
    return ref


def _name(resource: dict[str, Any]) -> str | None:
    """``display`` of a reference, ``name`` of an Organization/Location, ``name[0].text`` of a person."""
    names = resource.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        return _text(names[0].get("text"))
    return _text(resource.get("display")) or _text(names)


def _identifier(resource: dict[str, Any]) -> str | None:
    ident = resource.get("identifier")
    if isinstance(ident, list):
        ident = ident[0] if ident else {}
    return _text((ident or {}).get("value")) if isinstance(ident, dict) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def view_of(entry: Entry) -> EntryView:
    """The console's view of ``entry`` (see the module docstring)."""
    try:
        event: dict[str, Any] = orjson.loads(entry.event)
    except orjson.JSONDecodeError:
        event = {}
    role = _contained(event, "PractitionerRole")
    practitioner = _resolve(event, role.get("practitioner"))
    organization = _resolve(event, role.get("organization"))
    location = _resolve(event, (role.get("location") or [{}])[0])
    place = _resolve(event, location.get("managingOrganization")) if location else {}
    service = ((role.get("code") or [{}])[0].get("coding") or [{}])[0]
    pid_hash = None
    for ident in practitioner.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == PID_HASH_SYSTEM:
            pid_hash = _text(ident.get("value"))
    details = None
    for purpose in event.get("purposeOfEvent", []):
        for coding in purpose.get("coding", [])[1:]:
            details = details or _text(coding.get("display")) or _text(coding.get("code"))
    categories: list[str] = []
    reasons: list[str] = []
    jti = correlation = None
    for entity in event.get("entity", []):
        if (entity.get("type") or {}).get("code") == "XrequestId":
            correlation = _text(((entity.get("what") or {}).get("identifier") or {}).get("value"))
        for detail in entity.get("detail", []) or []:
            if detail.get("type") == "data-category" and _text(detail.get("valueString")):
                categories.append(detail["valueString"])
            if detail.get("type") == "reason" and _text(detail.get("valueString")):
                reasons.append(detail["valueString"])
        ident = ((entity.get("what") or {}).get("identifier") or {}).get("value")
        if isinstance(ident, str) and ident.startswith("urn:ietf:params:oauth:jti:"):
            jti = ident.removeprefix("urn:ietf:params:oauth:jti:")
    for agent in event.get("agent", []):
        for policy in agent.get("policy", []) or []:
            if isinstance(policy, str) and policy.startswith("urn:ietf:params:oauth:jti:"):
                jti = jti or policy.removeprefix("urn:ietf:params:oauth:jti:")
    user_selected = decision_ref = None
    for extension in event.get("extension", []):
        if extension.get("url", "").endswith("carerelation-metadata-extension"):
            for part in extension.get("extension", []):
                if part.get("url") == "decision-ref-user-selected":
                    user_selected = bool(part.get("valueBoolean"))
                elif part.get("url") == "decision-ref-id":
                    decision_ref = _text(part.get("valueString"))
    return EntryView(
        seq=entry.seq,
        recorded=entry.recorded_at,
        action=entry.action,
        outcome=entry.outcome,
        purpose=entry.purpose,
        patient_system=entry.patient_system,
        patient_value=entry.patient_value,
        agent_hpr=entry.agent_hpr,
        organisation=entry.organisation,
        client_id=entry.client_id,
        practitioner_name=_name(practitioner),
        organisation_name=_name(organization),
        point_of_care=_name(location) or _identifier(location) or _name(place) or _identifier(place),
        healthcare_service=_text(service.get("display")) or _text(service.get("code")),
        purpose_details=details,
        categories=tuple(dict.fromkeys(categories)),
        reasons=tuple(dict.fromkeys(reasons)),
        user_selected=user_selected,
        decision_ref=decision_ref,
        jti=jti,
        description=_text(event.get("outcomeDesc")),
        correlation_id=correlation,
        pid_hash=pid_hash,
    )
