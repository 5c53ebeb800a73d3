"""The trust-framework attestation (tillitsrammeverk): who asks, for whom, and why.

A consumer (hospital EPJ) attests the health worker's basis for access as an ``authorization_details``
entry (RFC 9396) of type ``nhn:tillitsrammeverk:parameters``, sent in the client assertion as
``assertion_details`` and carried by the access token as ``authorization_details``.

Shape (NHN "Informasjons- og datamodell for attestering", §4.2-§4.6 and Vedlegg B/C)::

    practitioner       identifier (pid), hpr_nr, authorization (9060), legal_entity, point_of_care, department
    care_relationship  healthcare_service, purpose_of_use (TREAT/ETREAT/COC/BTG), purpose_of_use_details,
                       decision_ref {id, user_selected, description}
    patients           [{identifier, point_of_care, department}]
    toa                time of attestation (§4.6.1), when present

HelseID, its Test Token Tool and the sample code spell the second object ``care_relationship``; the
specification text spells it ``care_relation``. Both are read; having both is an error.

**What parsing requires.** ``practitioner.legal_entity`` and ``practitioner.point_of_care`` (organisation
numbers), and ``patients`` as a list (the specification allows it to be empty). Every element that is
present is checked: identifiers and codes are non-empty strings of bounded length and, where the
specification fixes a code system, it must be that system. ``purpose_of_use`` and ``decision_ref`` are
"required by agreement" (§4.4.2, §4.4.4) but absent from the specification's own example 1 (fastlege),
and HelseID's examples carry patients without an identifier; so they are optional here and
:func:`require_patient_access` enforces them where a patient's data is read.

Errors are :class:`~auth.errors.InvalidAuthorizationDetails` whose ``path`` is the JSON path of the
problem, e.g. ``authorization_details[1].care_relationship.purpose_of_use.system``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from auth.errors import InvalidAuthorizationDetails

__all__ = [
    "ATTESTATION_TYPE",
    "Attestation",
    "Coding",
    "DecisionRef",
    "Identifier",
    "PatientRef",
    "PurposeOfUse",
    "attestation_from_model",
    "find_attestation",
    "parse_attestation",
    "require_patient_access",
]

ATTESTATION_TYPE = "nhn:tillitsrammeverk:parameters"

OID_FNR = "urn:oid:2.16.578.1.12.4.1.4.1"  # fødselsnummer (Folkeregisteret)
OID_DNR = "urn:oid:2.16.578.1.12.4.1.4.2"  # D-nummer
OID_HNR = "urn:oid:2.16.578.1.12.4.1.4.3"  # H-nummer (help number, patients only)
OID_HPR = "urn:oid:2.16.578.1.12.4.1.4.4"  # Helsepersonellregisteret number
OID_ORGNR = "urn:oid:2.16.578.1.12.4.1.4.101"  # Enhetsregisteret organisation number
OID_AUTHORIZATION = "urn:oid:2.16.578.1.12.4.1.1.9060"  # Kategori helsepersonell
OID_PURPOSE_OF_USE = "urn:oid:2.16.840.1.113883.1.11.20448"  # HL7 v3 PurposeOfUse

#: Code systems the business rules allow for ``healthcare_service`` (forretningsregler ATT-37).
HEALTHCARE_SERVICE_SYSTEMS = frozenset(
    f"urn:oid:2.16.578.1.12.4.1.1.{n}" for n in (8655, 8627, 8451, 8668, 8663, 8662, 8664, 8666, 7750, 8254)
)

PRACTITIONER_ID_SYSTEMS = frozenset({OID_FNR, OID_DNR})
PATIENT_ID_SYSTEMS = frozenset({OID_FNR, OID_DNR, OID_HNR})
MAX_PATIENTS = 100
MAX_TEXT = 256
_ORGNR = re.compile(r"[0-9]{9}")
_NATIONAL_ID = re.compile(r"[0-9]{11}")
_HPR = re.compile(r"[0-9]{1,10}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class PurposeOfUse(StrEnum):
    """HL7 v3 PurposeOfUse codes the trust framework allows (forretningsregler §3.2)."""

    TREAT = "TREAT"  # treatment
    ETREAT = "ETREAT"  # emergency treatment
    COC = "COC"  # coordination of care
    BTG = "BTG"  # break the glass

    @property
    def is_emergency(self) -> bool:
        return self in (PurposeOfUse.ETREAT, PurposeOfUse.BTG)


@dataclass(frozen=True, slots=True)
class Identifier:
    """An identifier element: ``{id, name, system, authority}`` (§4.2.2.1)."""

    id: str
    system: str
    name: str | None = None
    authority: str | None = None


@dataclass(frozen=True, slots=True)
class Coding:
    """A code element: ``{code, text, system, assigner}`` (§4.2.2.1)."""

    code: str
    system: str
    text: str | None = None
    assigner: str | None = None


@dataclass(frozen=True, slots=True)
class DecisionRef:
    """Reference to the consumer's local access decision (§4.4.4); ``user_selected`` = self-authorised."""

    id: str
    user_selected: bool
    description: str | None = None


@dataclass(frozen=True, slots=True)
class PatientRef:
    """One entry of ``patients`` (§4.5)."""

    identifier: Identifier | None = None
    point_of_care: Identifier | None = None
    department: Identifier | None = None


@dataclass(frozen=True, slots=True)
class Attestation:
    """A parsed, structurally valid attestation. See the module docstring for what is required."""

    legal_entity: Identifier
    point_of_care: Identifier
    # National identity numbers stay out of repr() so that logging an Attestation leaks no PHI.
    patients: tuple[PatientRef, ...] = field(repr=False)
    practitioner: Identifier | None = field(default=None, repr=False)  # national identity number (pid)
    hpr_number: Identifier | None = None
    authorization: Coding | None = None
    department: Identifier | None = None
    healthcare_service: Coding | None = None
    purpose_of_use: PurposeOfUse | None = None
    purpose_of_use_coding: Coding | None = None
    purpose_of_use_details: Coding | None = None
    decision_ref: DecisionRef | None = None
    toa: int | None = None

    @property
    def practitioner_pid(self) -> str | None:
        return self.practitioner.id if self.practitioner else None

    @property
    def practitioner_hpr(self) -> str | None:
        return self.hpr_number.id if self.hpr_number else None

    @property
    def patient_ids(self) -> tuple[str, ...]:
        """National identity numbers of the patients that carry one, in order."""
        return tuple(p.identifier.id for p in self.patients if p.identifier is not None)


def _fail(message: str, path: str) -> InvalidAuthorizationDetails:
    return InvalidAuthorizationDetails(message, path=path)


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail("must be an object", path)
    return value


def _check_text(value: str, path: str, name: str) -> str:
    """``value`` (member ``name`` of the element at ``path``) if it is bounded, printable Unicode
    text; the path of a failure is only formatted when there is one (issue 12)."""
    if len(value) > MAX_TEXT:
        raise _fail(f"must be at most {MAX_TEXT} characters", f"{path}.{name}")
    # These strings end up in AuditEvents and access logs: no control characters, no lone surrogates.
    if _CONTROL.search(value):
        raise _fail("must not contain control characters", f"{path}.{name}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail("must be valid Unicode text", f"{path}.{name}") from None
    return value


def _text(obj: Mapping[str, Any], name: str, path: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _fail("must be a non-empty string", f"{path}.{name}")
    return _check_text(value, path, name)


def _optional_text(obj: Mapping[str, Any], name: str, path: str) -> str | None:
    # Descriptive members (name, text, authority, assigner) may be empty strings in real examples.
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail("must be a string", f"{path}.{name}")
    return _check_text(value, path, name) or None


def _identifier(
    value: Any, path: str, *, systems: frozenset[str] | None = None, pattern: re.Pattern[str] | None = None
) -> Identifier:
    obj = _object(value, path)
    ident = _text(obj, "id", path)
    system = _text(obj, "system", path)
    if systems is not None and system not in systems:
        raise _fail(f"must be one of {', '.join(sorted(systems))}", f"{path}.system")
    if pattern is not None and not pattern.fullmatch(ident):
        raise _fail("has the wrong format for its system", f"{path}.id")
    return Identifier(
        ident, system, _optional_text(obj, "name", path), _optional_text(obj, "authority", path)
    )


def _coding(value: Any, path: str, *, systems: frozenset[str] | None = None) -> Coding:
    obj = _object(value, path)
    code = _text(obj, "code", path)
    system = _text(obj, "system", path)
    if systems is not None and system not in systems:
        raise _fail(f"must be one of {', '.join(sorted(systems))}", f"{path}.system")
    return Coding(code, system, _optional_text(obj, "text", path), _optional_text(obj, "assigner", path))


def _decision_ref(value: Any, path: str) -> DecisionRef:
    obj = _object(value, path)
    ident = _text(obj, "id", path)
    selected = obj.get("user_selected")
    if not isinstance(selected, bool):
        raise _fail("must be true or false", f"{path}.user_selected")
    return DecisionRef(ident, selected, _optional_text(obj, "description", path))


def _patient(value: Any, path: str) -> PatientRef:
    obj = _object(value, path)
    identifier = obj.get("identifier")
    poc = obj.get("point_of_care")
    dept = obj.get("department")
    return PatientRef(
        identifier=None
        if identifier is None
        else _identifier(identifier, f"{path}.identifier", systems=PATIENT_ID_SYSTEMS, pattern=_NATIONAL_ID),
        point_of_care=None
        if poc is None
        else _identifier(poc, f"{path}.point_of_care", systems=frozenset({OID_ORGNR}), pattern=_ORGNR),
        department=None if dept is None else _identifier(dept, f"{path}.department"),
    )


def attestation_from_model(value: Any, path: str = "attestation") -> Attestation:
    """Parse the attestation body (the data model of the specification, with or without ``type``).

    Accepts the specification's §4.6 wrapper ``{"attestation": {...}}`` too (``toa`` inside it).

    :raise InvalidAuthorizationDetails: with ``path`` naming the first problem.
    """
    obj = _object(value, path)
    if "attestation" in obj and "practitioner" not in obj:
        path = f"{path}.attestation"
        obj = _object(obj["attestation"], path)

    practitioner_path = f"{path}.practitioner"
    practitioner = _object(obj.get("practitioner"), practitioner_path)
    org = frozenset({OID_ORGNR})

    def opt_identifier(name: str, **kwargs: Any) -> Identifier | None:
        raw = practitioner.get(name)
        return None if raw is None else _identifier(raw, f"{practitioner_path}.{name}", **kwargs)

    legal_entity = _identifier(
        practitioner.get("legal_entity"), f"{practitioner_path}.legal_entity", systems=org, pattern=_ORGNR
    )
    point_of_care = _identifier(
        practitioner.get("point_of_care"), f"{practitioner_path}.point_of_care", systems=org, pattern=_ORGNR
    )
    authorization_raw = practitioner.get("authorization")
    authorization = (
        None
        if authorization_raw is None
        else _coding(
            authorization_raw, f"{practitioner_path}.authorization", systems=frozenset({OID_AUTHORIZATION})
        )
    )

    if "care_relationship" in obj and "care_relation" in obj:
        raise _fail("give care_relationship or care_relation, not both", f"{path}.care_relationship")
    care_name = "care_relation" if "care_relation" in obj else "care_relationship"
    care_path = f"{path}.{care_name}"
    care_raw = obj.get(care_name)
    care = {} if care_raw is None else _object(care_raw, care_path)

    def opt_coding(name: str, **kwargs: Any) -> Coding | None:
        raw = care.get(name)
        return None if raw is None else _coding(raw, f"{care_path}.{name}", **kwargs)

    purpose_coding = opt_coding("purpose_of_use", systems=frozenset({OID_PURPOSE_OF_USE}))
    purpose = None
    if purpose_coding is not None:
        try:
            purpose = PurposeOfUse(purpose_coding.code)
        except ValueError:
            raise _fail(
                f"must be one of {', '.join(p.value for p in PurposeOfUse)}",
                f"{care_path}.purpose_of_use.code",
            ) from None
    decision_raw = care.get("decision_ref")

    patients_path = f"{path}.patients"
    patients_raw = obj.get("patients")
    if not isinstance(patients_raw, list):
        raise _fail("must be a list", patients_path)
    if len(patients_raw) > MAX_PATIENTS:
        raise _fail(f"must hold at most {MAX_PATIENTS} patients", patients_path)

    toa_raw = obj.get("toa")
    if toa_raw is not None and (not isinstance(toa_raw, int) or isinstance(toa_raw, bool) or toa_raw < 0):
        raise _fail("must be an integer (epoch seconds)", f"{path}.toa")

    return Attestation(
        legal_entity=legal_entity,
        point_of_care=point_of_care,
        patients=tuple(_patient(p, f"{patients_path}[{i}]") for i, p in enumerate(patients_raw)),
        practitioner=opt_identifier("identifier", systems=PRACTITIONER_ID_SYSTEMS, pattern=_NATIONAL_ID),
        hpr_number=opt_identifier("hpr_nr", systems=frozenset({OID_HPR}), pattern=_HPR),
        authorization=authorization,
        department=opt_identifier("department"),
        healthcare_service=opt_coding("healthcare_service", systems=HEALTHCARE_SERVICE_SYSTEMS),
        purpose_of_use=purpose,
        purpose_of_use_coding=purpose_coding,
        purpose_of_use_details=opt_coding("purpose_of_use_details"),
        decision_ref=None
        if decision_raw is None
        else _decision_ref(decision_raw, f"{care_path}.decision_ref"),
        toa=toa_raw,
    )


def find_attestation(
    authorization_details: Any, path: str = "authorization_details"
) -> tuple[Any, str] | None:
    """The raw ``nhn:tillitsrammeverk:parameters`` entry and its path, or ``None`` if there is none.

    ``authorization_details`` may be an array of RFC 9396 objects (the access token) or a single object
    (HelseID's ``assertion_details`` with one entry). Other entry types (``helseid_authorization``) are
    skipped.

    :raise InvalidAuthorizationDetails: not an object/array, an entry without a string ``type``, or more
        than one attestation.
    """
    if isinstance(authorization_details, dict):
        entries: list[tuple[Any, str]] = [(authorization_details, path)]
    elif isinstance(authorization_details, list):
        entries = [(entry, f"{path}[{i}]") for i, entry in enumerate(authorization_details)]
    else:
        raise _fail("must be an object or an array of objects", path)
    found: list[tuple[Any, str]] = []
    for entry, entry_path in entries:
        entry_obj = _object(entry, entry_path)
        kind = entry_obj.get("type")
        if not isinstance(kind, str) or not kind:
            raise _fail("must be a non-empty string (RFC 9396 §2)", f"{entry_path}.type")
        if kind == ATTESTATION_TYPE:
            found.append((entry, entry_path))
    if len(found) > 1:
        raise _fail("holds more than one attestation", path)
    return found[0] if found else None


def parse_attestation(authorization_details: Any, path: str = "authorization_details") -> Attestation:
    """Find and parse the attestation in ``authorization_details`` (or ``assertion_details``).

    :raise InvalidAuthorizationDetails: no entry of type ``nhn:tillitsrammeverk:parameters``, or an
        invalid one; ``path`` names the problem.
    """
    found = find_attestation(authorization_details, path)
    if found is None:
        raise _fail(f"no entry of type {ATTESTATION_TYPE}", path)
    entry, entry_path = found
    return attestation_from_model(entry, entry_path)


def require_patient_access(attestation: Attestation, path: str = "authorization_details") -> PatientRef:
    """The one patient a patient-data read is about, after checking the attestation is complete for it.

    Requires ``purpose_of_use``, ``decision_ref`` and exactly one patient with an ``identifier``: an
    attestation is bound to one patient and cannot be used for another (trust-framework business
    rules). Returns that patient.

    :raise InvalidAuthorizationDetails: naming the missing element.
    """
    if attestation.purpose_of_use is None:
        raise _fail("is required to read patient data", f"{path}.care_relationship.purpose_of_use")
    if attestation.decision_ref is None:
        raise _fail("is required to read patient data", f"{path}.care_relationship.decision_ref")
    identified = [p for p in attestation.patients if p.identifier is not None]
    if len(identified) != 1 or len(attestation.patients) != 1:
        raise _fail("must name exactly one patient with an identifier", f"{path}.patients")
    return identified[0]
