"""What one access was (``AuditFacts``) and the FHIR R4 ``AuditEvent`` JSON that records it.

The API hands over plain values, keyword by keyword; this module turns them into AuditEvent JSON shaped
per IHE Basic Audit Log Patterns (BALP) and HL7 Norway's trust-framework AuditEvent IG
(``shared/reference/auditevent/fsh/``). domain.md "Audit": who (practitioner with HPR, legal entity,
point of care), for whom (patient identifier), why (purpose of use, decision ref), what (query, data
categories, resource ids), the outcome, the consent decision, and the token's ``jti`` as
``urn:ietf:params:oauth:jti:<jti>`` in ``agent[user].policy`` (BALP ``OAUTHaccessTokenUse``). **Never**
the token, a DPoP proof, a client assertion or a
measurement value: ``AuditFacts`` has no field for them, string fields that look like a JWT are refused
(``ValueError``), and JWT-shaped runs inside the raw query are replaced (security-tests.md AUD-04).

Shapes (BALP 1.1, profiles on ``https://profiles.ihe.net/ITI/BALP/StructureDefinition/``):

=====================  ============================  =======  ==============================================
action                 BALP profile (when success)   action   what is recorded
=====================  ============================  =======  ==============================================
read, history          IHE.BasicAudit.PatientRead    R        patient, each resource read
search, $lastn, audit  IHE.BasicAudit.PatientQuery   E        patient, raw query (base64), resources returned
create                 IHE.BasicAudit.PatientCreate  C        patient, the resource created
update                 IHE.BasicAudit.PatientUpdate  U        patient, the resource changed
batch, transaction     (none; type ``rest``)         E        resources touched
token, refusals        (none; DICOM security types)  E        client, user, reason
=====================  ============================  =======  ==============================================

**One event per request.** The sharing decision is an entity of the request's own event (``entity``
named ``sharing-decision`` with the policy's answer and reasons, plus one entity per record it rests on:
``Consent/<id>``, and the agreement as ``Contract/<id>``), not a second BALP ``AuthZconsent`` event:
BALP's RESTful patterns slice ``entity`` openly, and AuthZconsent's own closed slicing and ``type``
(Security Alert) cannot describe the read itself. One event is one append and one commit
(docs/audit-profile.md). A denial shows in the event's ``outcome`` (minor failure).

A profile is named in ``meta.profile`` only when the event meets it: BALP fixes ``outcome`` to success
for the RESTful patterns ("failures are recorded differently": FHIR core *Access Denied*), so a refusal
keeps the same shape, with the failure outcome and ``outcomeDesc``, and claims no profile.

The Norwegian IG's elements are carried as that IG defines them (canonical ``http://hl7.no/fhir``): the
``auditevent-patient-extension`` pointing at a contained ``Patient``, the
``auditevent-carerelation-metadata-extension`` with ``decision-ref-id``/``-description``/``-user-selected``
and ``toa`` (each when the attestation has it), the health worker's agent as a contained
``PractitionerRole`` referring to a contained ``Practitioner`` (HPR identifier; the authorisation,
code system 9060, as ``qualification.code``), the legal entity as a contained ``Organization`` and the
point of care as a contained ``Location`` whose ``managingOrganization`` is the point of care's
``Organization`` (the org.nr lives on the Organization, never on the Location). A system client (no
health worker) gets no PractitionerRole: its organisation is the ``PROV`` agent, its point of care that
agent's ``location``. ``purposeOfEvent`` carries the v3 PurposeOfUse code
(system ``http://terminology.hl7.org/CodeSystem/v3-ActReason``, as the IG's instances spell it; the
attestation's ``urn:oid:2.16.840.1.113883.1.11.20448`` names the *value set*) plus the details coding.
``meta.profile`` does not name ``no-domain-Trustframework-Auditevent``: that profile restricts *every*
``agent.who`` to a PractitionerRole, while BALP requires client and server agents; BALP wins. Every
place where the two disagree, and which wins, is listed in ``docs/audit-profile.md``.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter, is_
from typing import Any

import orjson

from sharing_api.audit.actions import (
    PURPOSES_OF_USE,
    AuditAction,
    Interaction,
    Outcome,
    interaction_of,
)
from sharing_api.audit.encoding import canonical_event
from sharing_api.audit.pseudonym import PID_HASH_SYSTEM

__all__ = [
    "ACTION_SYSTEM",
    "HPR_SYSTEM",
    "JTI_PREFIX",
    "ORGNR_SYSTEM",
    "AuditFacts",
    "Classification",
    "Coded",
    "DecisionRef",
    "SharingDecision",
    "build_audit_event",
    "build_audit_events",
    "classification",
    "event_bytes",
    "fhir_reference",
    "format_recorded",
    "plain_facts",
    "redact_tokens",
]

HPR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.4"
ORGNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.101"
ACTION_SYSTEM = "urn:dho-share:audit-action"
"""Code system of ``AuditAction`` values, carried as an extra ``subtype`` coding (BALP slicing is open) so
that a stored event names its action. (AuthZconsent events, which logs written before one event per
request still hold, carry none and are indexed as ``AuditAction.ACCESS_DECISION``.)"""
JTI_PREFIX = "urn:ietf:params:oauth:jti:"
"""RFC 3553 URN prefix BALP requires for a token's ``jti`` (``OAUTHaccessTokenUse``: ``agent.policy``)."""
AUTHORIZATION_SYSTEM = "urn:oid:2.16.578.1.12.4.1.1.9060"
"""Volven 9060, *Kategori helsepersonell*: the practitioner's authorisation (LE doctor, SP nurse...)."""
AGREEMENT_RESOURCE = "Contract"
"""The FHIR resource type a sharing agreement is referred to as (``Contract/<id>``): a formally recorded
bilateral agreement, which is what FHIR R4 ``Contract`` models (docs/audit-profile.md)."""

BALP = "https://profiles.ihe.net/ITI/BALP"
NO_SD = "http://hl7.no/fhir/StructureDefinition"
EXT_PATIENT = f"{NO_SD}/auditevent-patient-extension"
EXT_CARE_RELATION = f"{NO_SD}/auditevent-carerelation-metadata-extension"
EXT_ENCOUNTER = f"{NO_SD}/auditevent-encounter-extension"

_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
_RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"

_TYPE_REST = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "Restful Operation",
}
_SECURITY_TYPES = {
    "110114": {"system": _DCM, "code": "110114", "display": "User Authentication"},
    "110113": {"system": _DCM, "code": "110113", "display": "Security Alert"},
}
_LOGIN = {"system": _DCM, "code": "110122"}
_SOURCE_ROLE = {"system": _DCM, "code": "110153"}
_DESTINATION_ROLE = {"system": _DCM, "code": "110152"}
_RECIPIENT = {"system": _PARTICIPATION, "code": "IRCP"}
_AUTHOR = {"system": _PARTICIPATION, "code": "AUT"}
_PROVIDER = {"system": _ROLE_CLASS, "code": "PROV"}
_APP_SERVER = {"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}
_PERSON = {"system": _ENTITY_TYPE, "code": "1"}
_SYSTEM_OBJECT = {"system": _ENTITY_TYPE, "code": "2"}
_ROLE_PATIENT = {"system": _OBJECT_ROLE, "code": "1"}
_ROLE_DOMAIN_RESOURCE = {"system": _OBJECT_ROLE, "code": "4"}
_ROLE_QUERY = {"system": _OBJECT_ROLE, "code": "24"}
_XREQUEST_ID = {"system": f"{BALP}/CodeSystem/BasicAuditEntityType", "code": "XrequestId"}
_OAUTH_AGENT = {"system": f"{BALP}/CodeSystem/UserAgentTypes", "code": "UserOauthAgent"}

_PROFILES = {
    Interaction.READ: f"{BALP}/StructureDefinition/IHE.BasicAudit.PatientRead",
    Interaction.QUERY: f"{BALP}/StructureDefinition/IHE.BasicAudit.PatientQuery",
    Interaction.CREATE: f"{BALP}/StructureDefinition/IHE.BasicAudit.PatientCreate",
    Interaction.UPDATE: f"{BALP}/StructureDefinition/IHE.BasicAudit.PatientUpdate",
}
_ACTION_CODES = {
    Interaction.READ: "R",
    Interaction.QUERY: "E",
    Interaction.CREATE: "C",
    Interaction.UPDATE: "U",
    Interaction.BATCH: "E",
    Interaction.SECURITY: "E",
}

# A JWS/JWE in compact serialisation: a base64url JSON header ("eyJ" is '{"') and at least two more parts.
_JWT_BYTES = re.compile(rb"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}")
_JWT_TEXT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.")
_JWT_PREFIX = "eyJ"
REDACTED = b"[redacted-jwt]"
MAX_TENANT = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class Coded:
    """A coding from the attestation, e.g. ``purpose_of_use_details`` (Volven 9151, DIPS template)."""

    system: str
    code: str
    display: str | None = None

    def coding(self) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRef:
    """``care_relationship.decision_ref`` of the attestation: the EPJ's own record of the care relation."""

    id: str
    user_selected: bool
    description: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SharingDecision:
    """The sharing policy's answer, as plain values (``consent.policy.Decision``).

    ``reasons`` are the policy's reason codes in order; ``used`` the references the answer rests on
    (``SharingAgreement/<id>``, ``Consent/<id>``).
    """

    permit: bool
    reasons: tuple[str, ...] = ()
    used: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFacts:
    """Everything one AuditEvent says, as plain values. Keyword-only; checked on construction.

    ``tenant`` is the data controller whose log receives the event (its org.nr); ``organisation`` and
    ``point_of_care`` are the caller's legal entity and point of care (org.nrs), ``practitioner_hpr``
    the health worker's HPR number. ``patient`` is ``(system, value)`` of the patient identifier.
    ``query`` is the raw request as received (for a ``POST _search``: method line, headers that matter
    and the form body); it is stored base64 in ``entity.query`` byte for byte, except that JWT-shaped
    runs are replaced by ``[redacted-jwt]``. ``resources`` are references such as
    ``Observation/<id>``. ``server`` is how the API names itself (its public base URL), recorded as the
    server agent and ``source.site``. ``attested_at`` is the attestation's ``toa``;
    ``practitioner_authorization`` its ``practitioner.authorization`` (Volven 9060).
    ``practitioner_pid_hash`` is the keyed hash of the health worker's national identity number
    (``audit.pseudonym.PidHasher``), never the number: a value of any other shape is refused.

    Raises ``TypeError`` or ``ValueError`` for a value of the wrong kind, a naive ``recorded``, an
    unknown purpose of use, or any string that looks like a JWT.
    """

    action: AuditAction
    outcome: Outcome
    recorded: datetime
    tenant: str
    client_id: str | None = None
    organisation: str | None = None
    organisation_name: str | None = None
    point_of_care: str | None = None
    point_of_care_name: str | None = None
    practitioner_hpr: str | None = None
    practitioner_pid_hash: str | None = None
    practitioner_name: str | None = None
    practitioner_authorization: Coded | None = None
    purpose_of_use: str | None = None
    purpose_of_use_details: Coded | None = None
    healthcare_service: Coded | None = None
    decision_ref: DecisionRef | None = None
    attested_at: datetime | None = None
    patient: tuple[str, str] | None = None
    query: bytes | None = None
    data_categories: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    decision: SharingDecision | None = None
    token_jti: str | None = None
    correlation_id: str | None = None
    source_address: str | None = None
    description: str | None = None
    server: str = "dho-share"

    def __post_init__(self) -> None:
        if not isinstance(self.action, AuditAction):
            raise TypeError(f"action must be an AuditAction, not {self.action!r}")
        if not isinstance(self.outcome, Outcome):
            raise TypeError(f"outcome must be an Outcome, not {self.outcome!r}")
        for name in ("recorded", "attested_at"):
            when = getattr(self, name)
            if when is not None and (not isinstance(when, datetime) or when.utcoffset() is None):
                raise ValueError(f"{name} must be a timezone-aware datetime")
        if not isinstance(self.tenant, str) or not 0 < len(self.tenant) <= MAX_TENANT:
            raise ValueError(f"tenant must be a non-empty string of at most {MAX_TENANT} characters")
        if self.purpose_of_use is not None and self.purpose_of_use not in PURPOSES_OF_USE:
            raise ValueError(f"purpose_of_use must be one of {sorted(PURPOSES_OF_USE)}")
        if self.patient is not None and (
            len(self.patient) != 2 or not all(isinstance(p, str) and p for p in self.patient)
        ):
            raise ValueError("patient must be (system, value), both non-empty strings")
        if self.practitioner_pid_hash is not None and not _PID_HASH.fullmatch(self.practitioner_pid_hash):
            raise ValueError("practitioner_pid_hash must be a PidHasher value, never the number itself")
        if self.query is not None and not isinstance(self.query, bytes):
            raise TypeError("query must be bytes, the request exactly as received")
        for name in ("data_categories", "resources"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"{name} must be a tuple of strings")
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None")
            if value and _JWT_PREFIX in value and _JWT_TEXT.search(value):
                raise ValueError(f"{name} looks like a token; tokens are never recorded (AUD-04)")
        for value in (*self.resources, *(self.decision.used if self.decision else ())):
            # Every match starts with the prefix: a plain ``in`` spares the regex call on each reference
            # (a page holds up to 500); anything but a str still meets the regex and its TypeError.
            if (type(value) is not str or _JWT_PREFIX in value) and _JWT_TEXT.search(value):
                raise ValueError("a reference looks like a token; tokens are never recorded (AUD-04)")


_PARTS = (Coded, DecisionRef, SharingDecision)
_PID_HASH = re.compile(r"[0-9a-f]{8}\.[0-9a-f]{64}")

_TEXT_FIELDS = (
    "client_id",
    "organisation",
    "organisation_name",
    "point_of_care",
    "point_of_care_name",
    "practitioner_hpr",
    "practitioner_pid_hash",
    "practitioner_name",
    "token_jti",
    "correlation_id",
    "source_address",
    "description",
    "server",
)

_CONVERTED = (AuditAction, Outcome, datetime, bytes)
"""Types of facts that ``build_audit_event`` never copies as they are: it writes an action's or outcome's
code, a time as a string (``recorded``) or whole seconds (``toa``, an int well within ±2**53 for any
``datetime``), and the query in base64."""


def plain_facts(facts: AuditFacts) -> bool:
    """Whether ``build_audit_event(facts)`` is made only of what ``orjson`` writes as RFC 8785 does
    (``encoding``), so that its canonical bytes need no walk over its ~240 values (``event_bytes``).

    The builder's keys are all ASCII literals, and every value it writes is a literal, a value it
    converts itself (``_CONVERTED``), or one it copies from ``facts``: those are plain when each is
    exactly a ``str``, ``bool`` or ``None`` (or a tuple of ``str``), in ``facts`` and in its parts
    (``Coded``, ``DecisionRef``, ``SharingDecision``). Anything else (a ``str`` subclass, a number, a
    type added later) answers ``False``, and the event is walked as before. ``tests/audit/test_encoding``
    checks this against the walk itself, field by field.
    """
    return _plain(facts, AuditFacts.__slots__)


_ONLY_STR = frozenset({str})


def _plain(facts: AuditFacts, fields: tuple[str, ...]) -> bool:
    """``plain_facts`` for the facts named ``fields`` only."""
    for name in fields:
        value = getattr(facts, name)
        kind = type(value)
        if kind is str or kind is bool or value is None or kind in _CONVERTED:
            continue
        if kind is tuple:
            if not _ONLY_STR.issuperset(map(type, value)):
                return False
        elif kind in _PARTS:
            for part in kind.__slots__:
                inner = getattr(value, part)
                inner_kind = type(inner)
                if inner_kind is tuple:
                    if not _ONLY_STR.issuperset(map(type, inner)):
                        return False
                elif not (inner_kind is str or inner_kind is bool or inner is None):
                    return False
        else:
            return False
    return True


_INTERNAL_AGREEMENT = "SharingAgreement/"


def fhir_reference(ref: str) -> str:
    """``ref`` as a FHIR reference: the sharing policy's ``SharingAgreement/<id>`` becomes
    ``Contract/<id>`` (:data:`AGREEMENT_RESOURCE`); ``Consent/<id>`` and others are FHIR already."""
    if ref.startswith(_INTERNAL_AGREEMENT):
        return f"{AGREEMENT_RESOURCE}/{ref.removeprefix(_INTERNAL_AGREEMENT)}"
    return ref


def redact_tokens(query: bytes) -> bytes:
    """``query`` with every JWT-shaped run (JWS or JWE compact serialisation) replaced by ``[redacted-jwt]``.

    AUD-03 wants the raw query byte-exact; AUD-04 wants no token anywhere in the audit. A token sent in
    a query string (AUTH-02) is where the two meet, and AUD-04 wins. Every other byte is kept.
    """
    if b"eyJ" not in query:
        return query
    return _JWT_BYTES.sub(REDACTED, query)


def format_recorded(when: datetime) -> str:
    """A FHIR ``instant`` in UTC with microseconds, e.g. ``2024-03-19T06:45:00.123456Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _organization(res_id: str, orgnr: str, name: str | None) -> dict[str, Any]:
    org: dict[str, Any] = {
        "resourceType": "Organization",
        "id": res_id,
        "identifier": [{"system": ORGNR_SYSTEM, "value": orgnr}],
    }
    if name:
        org["name"] = name
    return org


def _patient(patient: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "patient",
        "identifier": [{"system": patient[0], "value": patient[1]}],
    }


def _caller_contained(facts: AuditFacts) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The contained resources of the NO IG that follow the ``Patient``, and the reference to the health
    worker's role.

    For a health worker: ``Practitioner`` (HPR, name, authorisation as ``qualification``),
    ``PractitionerRole`` (practitioner, legal entity, point of care, healthcare service), the legal
    entity ``Organization``; for anyone with a point of care: a ``Location`` managed by the point of
    care's ``Organization`` (the legal entity's, when both are the same org.nr, as in the IG's GP
    example). A system client gets no PractitionerRole (it would have no practitioner).
    """
    contained: list[dict[str, Any]] = []
    worker = facts.practitioner_hpr is not None
    if worker and facts.organisation is not None:
        contained.append(_organization("legal-entity", facts.organisation, facts.organisation_name))
    # Referenced by the PractitionerRole, or by the organisation agent of a system client (dom-3: every
    # contained resource is referenced).
    if facts.point_of_care is not None and (worker or facts.organisation is not None):
        shared = worker and facts.point_of_care == facts.organisation
        contained.append(
            {
                "resourceType": "Location",
                "id": "point-of-care",
                "managingOrganization": {"reference": "#legal-entity" if shared else "#point-of-care-org"},
            }
        )
        if not shared:
            contained.append(
                _organization("point-of-care-org", facts.point_of_care, facts.point_of_care_name)
            )
    if facts.practitioner_hpr is None:
        return contained, None
    practitioner: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": "practitioner",
        "identifier": [{"system": HPR_SYSTEM, "value": facts.practitioner_hpr}],
    }
    if facts.practitioner_pid_hash is not None:
        # Never the national identity number itself: its keyed hash, for log-control rule R8 (self-access).
        practitioner["identifier"].append({"system": PID_HASH_SYSTEM, "value": facts.practitioner_pid_hash})
    if facts.practitioner_name:
        practitioner["name"] = [{"text": facts.practitioner_name}]
    if facts.practitioner_authorization is not None:
        practitioner["qualification"] = [{"code": {"coding": [facts.practitioner_authorization.coding()]}}]
    role: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": "practitioner-role",
        "practitioner": {"reference": "#practitioner"},
    }
    if facts.organisation is not None:
        role["organization"] = {"reference": "#legal-entity"}
    if facts.point_of_care is not None:
        role["location"] = [{"reference": "#point-of-care"}]
    if facts.healthcare_service is not None:
        role["code"] = [{"coding": [facts.healthcare_service.coding()]}]
    contained += (practitioner, role)
    return contained, {"reference": "#practitioner-role"}


def _care_relation(facts: AuditFacts) -> list[dict[str, Any]]:
    """The care-relation extension (the attestation's decision ref and ``toa``), when there is one."""
    out: list[dict[str, Any]] = []
    ref, toa = facts.decision_ref, facts.attested_at
    if ref is not None or toa is not None:
        parts: list[dict[str, Any]] = []
        if ref is not None:
            parts.append({"url": "decision-ref-id", "valueString": ref.id})
            if ref.description:
                parts.append({"url": "decision-ref-description", "valueString": ref.description})
            parts.append({"url": "decision-ref-user-selected", "valueBoolean": ref.user_selected})
        if toa is not None:
            parts.append({"url": "toa", "valueUnsignedInt": int(toa.timestamp())})
        out.append({"url": EXT_CARE_RELATION, "extension": parts})
    return out


def _purpose(facts: AuditFacts) -> list[dict[str, Any]]:
    if facts.purpose_of_use is None:
        return []
    codings = [
        {
            "system": _ACT_REASON,
            "code": facts.purpose_of_use,
            "display": PURPOSES_OF_USE[facts.purpose_of_use],
        }
    ]
    if facts.purpose_of_use_details is not None:
        codings.append(facts.purpose_of_use_details.coding())
    return [{"coding": codings}]


def _network(address: str, kind: str) -> dict[str, Any]:
    return {"address": address, "type": kind}


def _client_agent(facts: AuditFacts, role: dict[str, str]) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": {"coding": [role]},
        "who": {"identifier": {"value": facts.client_id}} if facts.client_id else {"display": "unknown"},
        "requestor": False,
    }
    if facts.source_address:
        agent["network"] = _network(facts.source_address, "2")  # IP address
    if facts.token_jti and facts.practitioner_hpr is None and facts.organisation is None:
        # No user or organisation agent to carry the token's jti: the client that presented it does.
        agent["policy"] = _policy(facts)
    return agent


def _server_agent(facts: AuditFacts, role: dict[str, str]) -> dict[str, Any]:
    return {
        "type": {"coding": [role]},
        "who": {"display": facts.server},
        "requestor": False,
        "network": _network(facts.server, "5"),  # URI
    }


def _policy(facts: AuditFacts) -> list[str]:
    return [JTI_PREFIX + facts.token_jti] if facts.token_jti else []


def _user_agents(facts: AuditFacts, who: dict[str, Any] | None, role: dict[str, str]) -> list[dict[str, Any]]:
    """The requestor and its organisation. The requestor (the health worker, else the organisation of a
    system client) is BALP's OAuth user agent: ``UserOauthAgent`` among its types and the token's
    ``jti`` in ``policy`` (``IHE.BasicAudit.OAUTHaccessTokenUse.Minimal``)."""
    agents: list[dict[str, Any]] = []
    if who is not None and facts.practitioner_hpr is not None:
        user: dict[str, Any] = {"type": {"coding": [role, _OAUTH_AGENT]}, "who": who, "requestor": True}
        if facts.practitioner_name:
            user["name"] = facts.practitioner_name
        if facts.token_jti:
            user["policy"] = _policy(facts)
        if facts.purpose_of_use_details is not None:
            user["purposeOfUse"] = [{"coding": [facts.purpose_of_use_details.coding()]}]
        agents.append(user)
    if facts.organisation is not None:
        system_client = facts.practitioner_hpr is None
        oauth_user = system_client and bool(facts.token_jti)
        org: dict[str, Any] = {
            "type": {"coding": [_PROVIDER, _OAUTH_AGENT] if oauth_user else [_PROVIDER]},
            "who": {
                "identifier": {"system": ORGNR_SYSTEM, "value": facts.organisation},
                **({"display": facts.organisation_name} if facts.organisation_name else {}),
            },
            "requestor": system_client,
        }
        if system_client and facts.point_of_care is not None:
            org["location"] = {"reference": "#point-of-care"}
        if system_client and facts.token_jti:
            org["policy"] = _policy(facts)
        agents.append(org)
    return agents


def _patient_entity() -> dict[str, Any]:
    return {"what": {"reference": "#patient"}, "type": _PERSON, "role": _ROLE_PATIENT}


def _policy_entities(decision: SharingDecision) -> list[dict[str, Any]]:
    """One entity per record the decision rests on, typed by its FHIR resource type (BALP
    AuthZconsent's ``entity[consent]`` pattern: ``resource-types#Consent``; agreements ``#Contract``)."""
    out = []
    for ref in map(fhir_reference, decision.used):
        code = ref.split("/", 1)[0]
        out.append({"what": {"reference": ref}, "type": {"system": _RESOURCE_TYPES, "code": code}})
    return out


def _decision_entity(decision: SharingDecision) -> dict[str, Any]:
    details = [{"type": "permit", "valueString": "true" if decision.permit else "false"}]
    details += [{"type": "reason", "valueString": r} for r in decision.reasons]
    return {
        "name": "sharing-decision",
        "description": "permit" if decision.permit else "deny",
        "detail": details,
    }


def _rest_entities(facts: AuditFacts, interaction: Interaction) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if facts.patient is not None:
        entities.append(_patient_entity())
    if facts.query is not None:
        entities.append(
            {
                "type": _SYSTEM_OBJECT,
                "role": _ROLE_QUERY,
                "query": base64.b64encode(redact_tokens(facts.query)).decode("ascii"),
            }
        )
    if interaction is Interaction.QUERY:
        # BALP records no results of a query; domain.md wants their ids, kept short (a page can hold 500).
        entities += [{"what": {"reference": fhir_reference(ref)}} for ref in facts.resources]
    else:
        entities += [
            {
                "what": {"reference": fhir_reference(ref)},
                "type": _SYSTEM_OBJECT,
                "role": _ROLE_DOMAIN_RESOURCE,
            }
            for ref in facts.resources
        ]
    if facts.data_categories:
        entities.append(
            {
                "name": "data-categories",
                "detail": [{"type": "data-category", "valueString": c} for c in facts.data_categories],
            }
        )
    if facts.decision is not None:
        entities.append(_decision_entity(facts.decision))
        entities += _policy_entities(facts.decision)
    if facts.correlation_id:
        entities.append({"what": {"identifier": {"value": facts.correlation_id}}, "type": _XREQUEST_ID})
    return entities


def _conforms(facts: AuditFacts, interaction: Interaction) -> bool:
    """Whether the event meets its BALP patient profile (success, patient, client network, data)."""
    if interaction not in _PROFILES or facts.outcome is not Outcome.SUCCESS or facts.patient is None:
        return False
    if not facts.source_address:
        return False
    if interaction is Interaction.QUERY:
        return facts.query is not None
    return len(facts.resources) == 1


@dataclass(frozen=True, slots=True)
class Classification:
    """How an action's events are coded: ``type``, ``subtype`` codings and the ``action`` code (C R U D E).

    The one source of these codes for building events and for searching them by ``type``, ``subtype``
    and ``action`` (routes/audit_api.py)."""

    type: dict[str, str]
    subtype: tuple[dict[str, str], ...]
    action: str


def classification(action: AuditAction) -> Classification:
    """The type, subtypes and action code every event of ``action`` carries (see the module table)."""
    interaction, code = interaction_of(action)
    action_coding = {"system": ACTION_SYSTEM, "code": action.value}
    if interaction is Interaction.SECURITY:
        subtypes = (_LOGIN, action_coding) if code == "110114" else (action_coding,)
        return Classification(_SECURITY_TYPES[code], subtypes, _ACTION_CODES[interaction])
    rest = {"system": "http://hl7.org/fhir/restful-interaction", "code": code}
    return Classification(_TYPE_REST, (rest, action_coding), _ACTION_CODES[interaction])


_CLASSIFICATIONS = {action: classification(action) for action in AuditAction}


_CALLER_FIELDS = (
    "organisation",
    "organisation_name",
    "point_of_care",
    "point_of_care_name",
    "practitioner_hpr",
    "practitioner_pid_hash",
    "practitioner_name",
    "practitioner_authorization",
    "purpose_of_use",
    "purpose_of_use_details",
    "healthcare_service",
    "decision_ref",
    "attested_at",
    "token_jti",
)
"""The facts ``_caller_parts`` reads: the caller's (its token and attestation), the same for every
request of one caller."""
_REQUEST_FIELDS = tuple(name for name in AuditFacts.__slots__ if name not in _CALLER_FIELDS)


@dataclass(frozen=True, slots=True)
class _CallerParts:
    """What an event says of its caller alone, each part where ``_event`` puts it: the contained resources
    after the ``Patient``, the care-relation extension, ``purposeOfEvent`` (``None``: none) and the user
    agents. Plain JSON in ``build_audit_event``; in ``event_bytes``, each as its canonical bytes
    (``orjson.Fragment``), made once per caller."""

    contained: list[Any]
    care_relation: list[Any]
    purpose: Any
    users: list[Any]


def _caller_parts(facts: AuditFacts, user_role: dict[str, str]) -> _CallerParts:
    contained, role_ref = _caller_contained(facts)
    return _CallerParts(
        contained=contained,
        care_relation=_care_relation(facts),
        purpose=_purpose(facts) or None,
        users=_user_agents(facts, role_ref, user_role),
    )


def _user_role(interaction: Interaction) -> dict[str, str]:
    return _AUTHOR if interaction in (Interaction.CREATE, Interaction.UPDATE) else _RECIPIENT


def build_audit_event(facts: AuditFacts) -> dict[str, Any]:
    """The FHIR R4 ``AuditEvent`` (JSON as a ``dict``) recording ``facts``, shaped per the module table.

    The result is plain JSON data (str, int, bool, list, dict) ready for ``AuditLog.append``; it is
    built fresh on every call and shares nothing with other calls.
    """
    interaction, _ = interaction_of(facts.action)
    return _event(facts, interaction, _caller_parts(facts, _user_role(interaction)))


def _event(facts: AuditFacts, interaction: Interaction, caller: _CallerParts) -> dict[str, Any]:
    event: dict[str, Any] = {"resourceType": "AuditEvent"}
    if _conforms(facts, interaction):
        event["meta"] = {"profile": [_PROFILES[interaction]]}
    contained = [_patient(facts.patient)] if facts.patient is not None else []
    contained += caller.contained
    if contained:
        event["contained"] = contained
    extensions = (
        [{"url": EXT_PATIENT, "valueReference": {"reference": "#patient"}}]
        if facts.patient is not None
        else []
    )
    extensions += caller.care_relation
    if extensions:
        event["extension"] = extensions
    kind = _CLASSIFICATIONS[facts.action]  # copied below: the event shares none of its dicts
    event["type"] = dict(kind.type)
    event["subtype"] = [dict(c) for c in kind.subtype]
    event["action"] = kind.action
    event["recorded"] = format_recorded(facts.recorded)
    event["outcome"] = facts.outcome.value
    if facts.description:
        event["outcomeDesc"] = facts.description
    if caller.purpose is not None:
        event["purposeOfEvent"] = caller.purpose
    # DICOM/IHE convention: the side the *request* flows from is the Source Role; for a read the data
    # flows to the client, so BALP's Read names the client Destination (PatientRead.fsh).
    if interaction is Interaction.READ:
        client_role, server_role = _DESTINATION_ROLE, _SOURCE_ROLE
    else:
        client_role, server_role = _SOURCE_ROLE, _DESTINATION_ROLE
    event["agent"] = [_client_agent(facts, client_role), _server_agent(facts, server_role), *caller.users]
    event["source"] = {"site": facts.server, "observer": {"display": facts.server}, "type": [_APP_SERVER]}
    entities = _rest_entities(facts, interaction)
    if entities:
        event["entity"] = entities
    return event


MAX_SERIALIZED_CALLERS = 1024
"""Callers whose parts ``event_bytes`` keeps as bytes: about one per live access token of a worker, as
``auditing.MAX_KNOWN_CALLERS``. Bounded, so memory stays flat."""
_serialized_callers: dict[tuple[str | None, str], tuple[tuple[Any, ...], _CallerParts | None]] = {}
_caller_values = attrgetter(*_CALLER_FIELDS)


def event_bytes(facts: AuditFacts) -> bytes:
    """``encoding.canonical_event(build_audit_event(facts))``, the same bytes for less: the request path.

    The parts of the event that say only who the caller is (``_caller_parts``: a third of a search's
    event) are built and serialized once per caller, by the same functions as ``build_audit_event``;
    they are kept by the caller's token and the user agents' role, for the very values of the caller's
    facts (``_CALLER_FIELDS``). Each request builds the rest (``_event``) around them as
    ``orjson.Fragment``s, and ``orjson`` writes it with sorted keys: the RFC 8785 bytes, as ``encoding``
    explains, when every value is plain (``plain_facts``: the caller's facts are checked once, the
    request's every time). Anything else takes ``build_audit_event`` and ``canonical_event``, which
    also raise what they raise. ``tests/audit/test_event_bytes`` compares the two.
    """
    interaction, _ = interaction_of(facts.action)
    caller = _serialized_caller(facts, _user_role(interaction))
    if caller is not None and _plain(facts, _REQUEST_FIELDS):
        try:
            return orjson.dumps(_event(facts, interaction, caller), option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # e.g. a lone surrogate: the general path says what is wrong
    return canonical_event(build_audit_event(facts))


def _serialized_caller(facts: AuditFacts, user_role: dict[str, str]) -> _CallerParts | None:
    """The caller's parts as bytes (``_serialized_parts``), made once per caller: kept by its token's
    ``jti``, and used again only for the very same values (``is``: all immutable when plain), so that
    an equal value of another type (``1 == True``) never gets another value's bytes."""
    values = _caller_values(facts)
    key = (facts.token_jti, user_role["code"])
    kept = _serialized_callers.get(key)
    if kept is not None and all(map(is_, kept[0], values)):
        return kept[1]
    made = _serialized_parts(facts, user_role)
    if len(_serialized_callers) >= MAX_SERIALIZED_CALLERS:
        _serialized_callers.clear()  # tokens live minutes: start over rather than keep an LRU order
    _serialized_callers[key] = (values, made)
    return made


def _serialized_parts(facts: AuditFacts, user_role: dict[str, str]) -> _CallerParts | None:
    """The caller's parts of the event of ``facts`` (``_caller_parts``), each as its canonical bytes;
    ``None`` when the caller's facts are not plain."""
    if not _plain(facts, _CALLER_FIELDS):
        return None
    parts = _caller_parts(facts, user_role)
    try:
        return _CallerParts(
            contained=[_fragment(r) for r in parts.contained],
            care_relation=[_fragment(x) for x in parts.care_relation],
            purpose=_fragment(parts.purpose) if parts.purpose is not None else None,
            users=[_fragment(a) for a in parts.users],
        )
    except orjson.JSONEncodeError:
        return None


def _fragment(value: Any) -> orjson.Fragment:
    return orjson.Fragment(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def build_audit_events(facts: AuditFacts) -> list[dict[str, Any]]:
    """The events one request records: exactly one, carrying the sharing decision as an entity (see the
    module docstring), so that recording a request is one append and one commit.

    One request, one patient: for a query whose results span several patients, BALP PatientQuery wants
    one event per patient, so call this once per patient with ``patient`` (and ``resources``) set.
    """
    return [build_audit_event(facts)]
