"""A patient's privacy directive as a FHIR R4 ``Consent`` resource (plain JSON dicts) and back.

domain.md, "Sharing policy": directives are stored as FHIR ``Consent`` resources (scope
``patient-privacy``, provisions by actor organisation or practitioner, purpose, period, data class) and
enforced from the stored records. The mapping, one root provision per resource:

=================  =====================================  =========================================
``provision.type``  ``provision.actor``                    becomes
=================  =====================================  =========================================
``deny``            none                                   :class:`Reservation` against everyone
``deny``            organisation (organisasjonsnummer)     :class:`Reservation` against that organisation
``deny``            practitioner (HPR number)              :class:`Block` of that health worker
``permit``          none or organisation                   :class:`Consent` (opt-in tenants)
=================  =====================================  =========================================

``status``: ``active`` is in force; ``inactive`` (a revoked directive) and ``rejected`` are not, and are
written back as ``inactive``. Actors, like VKP's subject, are *logical references by identifier*. The
other choices (periods, purposes, data classes, what is refused) are in ``docs/sharing-policy.md``.

Structure is checked here, element by element; anything this module cannot represent faithfully is
refused rather than dropped, because dropping a condition of a permit widens it. Every refusal is a
:class:`ConsentFormatError` naming the element as a FHIRPath (style.md, item 10), ready to become an
``OperationOutcome.issue.expression``. Full FHIR validation of the resource (datatypes, unknown
elements) is the API edge's job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from consent.model import (
    ALWAYS,
    DNR,
    FNR,
    HPR,
    ORGNR,
    PATIENT_SYSTEMS,
    PURPOSE_OF_USE_SYSTEM,
    Block,
    Consent,
    PatientDirective,
    PatientId,
    Period,
    PurposeOfUse,
    Reservation,
)

CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
PATIENT_PRIVACY = "patient-privacy"
LOINC = "http://loinc.org"
PATIENT_CONSENT = "59284-0"
ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
"""The code system holding the v3 PurposeOfUse codes, as FHIR names it; written on output."""
PURPOSE_SYSTEMS = frozenset({ACT_REASON_SYSTEM, PURPOSE_OF_USE_SYSTEM, "urn:oid:2.16.840.1.113883.5.8"})
"""Accepted for ``provision.purpose``: ActReason by URL or OID, and the PurposeOfUse value-set OID the
tillitsrammeverk attestation uses (domain.md, "Tokens")."""
PARTICIPATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RECIPIENT_ROLES = frozenset({"IRCP", "PRCP"})
"""Actor roles meaning "the one who would receive the data"; ``IRCP`` is written on output."""
CONSENT_ACTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentaction"
READ_ACTIONS = frozenset({"access", "use", "disclose"})
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
"""A data category without ``|`` (``vital-signs``) is a code of this system; ``system|code`` otherwise."""

LOCAL_ZONE = ZoneInfo("Europe/Oslo")
"""Dates without a time are read as Norwegian local dates, where the directives are recorded."""

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DATETIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2}))?)?)?"
)
_NIN_W1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_NIN_W2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
_ORG_W = (3, 2, 7, 6, 5, 4, 3, 2)


class ConsentFormatError(ValueError):
    """A ``Consent`` resource this service cannot read as a directive.

    ``message`` says what is wrong in words; ``expression`` is the FHIRPath of the element at fault
    (e.g. ``Consent.provision.actor[0].reference.identifier.system``). ``str()`` is
    ``"<message> @ <expression>"``.
    """

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(f"{message} @ {expression}")
        self.message = message
        self.expression = expression


# --- identifiers (domain.md, "Identifiers") ------------------------------------------------------------


def _mod11(digits: str, weights: tuple[int, ...]) -> int | None:
    rest = 11 - sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    if rest == 11:
        return 0
    return None if rest == 10 else rest


def _is_digits(value: str, length: int | None = None) -> bool:
    return value.isascii() and value.isdigit() and (length is None or len(value) == length)


def _has_nin_control_digits(value: str) -> bool:
    """FNR and DNR: eleven digits ending in two mod-11 control digits."""
    return (
        _is_digits(value, 11)
        and _mod11(value[:9], _NIN_W1) == int(value[9])
        and _mod11(value[:10], _NIN_W2) == int(value[10])
    )


def _is_orgnr(value: str) -> bool:
    """Organisasjonsnummer: nine digits, the last a mod-11 control digit."""
    return _is_digits(value, 9) and _mod11(value[:8], _ORG_W) == int(value[8])


# --- reading JSON with a path ----------------------------------------------------------------------


def _object(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConsentFormatError("expected a JSON object", path)
    return value


def _array(value: object, path: str) -> Sequence[Any]:
    if not isinstance(value, list) or not value:
        raise ConsentFormatError("expected a non-empty JSON array", path)
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConsentFormatError("expected a non-empty string", path)
    return value


def _codings(concept: object, path: str) -> list[tuple[str | None, str | None]]:
    """The ``(system, code)`` pairs of a ``CodeableConcept``."""
    codings = _array(_object(concept, path).get("coding"), f"{path}.coding")
    pairs = []
    for i, coding in enumerate(codings):
        c = _object(coding, f"{path}.coding[{i}]")
        pairs.append((c.get("system"), c.get("code")))
    return pairs


# --- FHIR dateTime and Period ----------------------------------------------------------------------


def _datetime_range(value: object, path: str) -> tuple[datetime, datetime]:
    """The half-open range ``[start, end)`` a FHIR ``dateTime`` stands for, at its precision.

    ``2024`` is the year, ``2024-05-01`` the day (in Norwegian local time), ``...T10:00:00+02:00`` the
    second, ``...T10:00:00.5+02:00`` the tenth of a second (R4 datatypes: a time needs seconds and a
    zone). Finer than microseconds is read at microseconds.
    """
    text = _string(value, path)
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise ConsentFormatError(f"{text!r} is not a FHIR dateTime", path)
    g = m.groupdict()
    try:
        lo, hi = _range_of(g)
        return lo.astimezone(UTC), hi.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # 2024-02-30, 25:00:00, +25:00, year 0, beyond year 9999
        raise ConsentFormatError(f"{text!r} is not a valid date or time", path) from exc


def _range_of(g: dict[str, str | None]) -> tuple[datetime, datetime]:
    year = int(g["year"] or "")
    if g["month"] is None:
        return datetime(year, 1, 1, tzinfo=LOCAL_ZONE), datetime(year + 1, 1, 1, tzinfo=LOCAL_ZONE)
    month = int(g["month"])
    if g["day"] is None:
        nxt = (year + 1, 1) if month == 12 else (year, month + 1)
        return datetime(year, month, 1, tzinfo=LOCAL_ZONE), datetime(*nxt, 1, tzinfo=LOCAL_ZONE)
    day = datetime(year, month, int(g["day"] or ""))
    if g["hour"] is None:  # midnight is never skipped nor repeated in Europe/Oslo
        return day.replace(tzinfo=LOCAL_ZONE), (day + timedelta(days=1)).replace(tzinfo=LOCAL_ZONE)
    fraction = g["fraction"] or ""
    moment = day.replace(
        hour=int(g["hour"]),
        minute=int(g["minute"] or ""),
        second=int(g["second"] or ""),
        microsecond=int((fraction + "000000")[:6]),
        tzinfo=UTC if g["tz"] == "Z" else _offset(g["tz"] or ""),
    )
    step = (
        timedelta(microseconds=10 ** (6 - len(fraction))) if len(fraction) <= 6 else timedelta(microseconds=1)
    )
    return moment, moment + step


def _offset(text: str) -> timezone:
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _period(value: object, path: str) -> Period:
    """A FHIR ``Period`` as a half-open :class:`Period`: from its start, up to the end of its end.

    FHIR's ``end`` "includes any matching date/time" (R4 datatypes, Period), so ``end`` ``2024-12-31``
    keeps the whole of that day.
    """
    obj = _object(value, path)
    start = _datetime_range(obj["start"], f"{path}.start")[0] if "start" in obj else None
    end = _datetime_range(obj["end"], f"{path}.end")[1] if "end" in obj else None
    if start is not None and end is not None and not start < end:
        raise ConsentFormatError("the period ends before it starts", path)
    return Period(start, end)


def _format_moment(moment: datetime, *, microseconds: bool) -> str:
    text = moment.astimezone(UTC).isoformat(timespec="microseconds" if microseconds else "seconds")
    return text.removesuffix("+00:00") + "Z"


def _period_json(period: Period) -> dict[str, str]:
    """The FHIR ``Period`` that :func:`_period` reads back as ``period``, in UTC.

    The end is written as the last instant still inside: one second before a whole-second end (at
    seconds precision), else one microsecond before it (at microseconds precision).
    """
    out: dict[str, str] = {}
    if period.start is not None:
        out["start"] = _format_moment(period.start, microseconds=period.start.microsecond != 0)
    if period.end is not None:
        whole = period.end.microsecond == 0
        last = period.end - (timedelta(seconds=1) if whole else timedelta(microseconds=1))
        out["end"] = _format_moment(last, microseconds=not whole)
    return out


# --- elements --------------------------------------------------------------------------------------


def _patient(value: object, path: str) -> PatientId:
    obj = _object(value, path)
    if "reference" in obj:
        raise ConsentFormatError(
            "name the patient by identifier, not by a literal reference", f"{path}.reference"
        )
    identifier = _object(obj.get("identifier"), f"{path}.identifier")
    system = _string(identifier.get("system"), f"{path}.identifier.system")
    if system not in PATIENT_SYSTEMS:
        raise ConsentFormatError(
            "the patient is named by fødselsnummer, D-nummer or felles hjelpenummer",
            f"{path}.identifier.system",
        )
    number = _string(identifier.get("value"), f"{path}.identifier.value")
    if system in (FNR, DNR) and not _has_nin_control_digits(number):
        raise ConsentFormatError("not a valid national identity number", f"{path}.identifier.value")
    if not _is_digits(number):
        raise ConsentFormatError("a felles hjelpenummer is digits only", f"{path}.identifier.value")
    return PatientId(system, number)


def _actor(provision: Mapping[str, Any], path: str) -> tuple[str, str] | None:
    """``(system, value)`` of the provision's one actor, ORGNR or HPR, or ``None`` when it has none."""
    if "actor" not in provision:
        return None
    actors = _array(provision["actor"], path)
    if len(actors) > 1:
        raise ConsentFormatError(
            "one actor per directive: record each organisation or health worker apart", f"{path}[1]"
        )
    actor = _object(actors[0], f"{path}[0]")
    roles = {
        code
        for system, code in _codings(actor.get("role"), f"{path}[0].role")
        if system == PARTICIPATION_TYPE_SYSTEM
    }
    if not roles & RECIPIENT_ROLES:
        raise ConsentFormatError(
            f"the actor's role must be the recipient ({PARTICIPATION_TYPE_SYSTEM} IRCP or PRCP)",
            f"{path}[0].role",
        )
    ref_path = f"{path}[0].reference"
    reference = _object(actor.get("reference"), ref_path)
    if "reference" in reference:
        raise ConsentFormatError(
            "name the actor by identifier, not by a literal reference", f"{ref_path}.reference"
        )
    identifier = _object(reference.get("identifier"), f"{ref_path}.identifier")
    system = _string(identifier.get("system"), f"{ref_path}.identifier.system")
    number = _string(identifier.get("value"), f"{ref_path}.identifier.value")
    expected_type = {ORGNR: "Organization", HPR: "Practitioner"}.get(system)
    if expected_type is None:
        raise ConsentFormatError(
            f"an actor is an organisation ({ORGNR}) or a health worker ({HPR})",
            f"{ref_path}.identifier.system",
        )
    if "type" in reference and reference["type"] != expected_type:
        raise ConsentFormatError(f"an identifier of {system} names a {expected_type}", f"{ref_path}.type")
    if system == ORGNR and not _is_orgnr(number):
        raise ConsentFormatError("not a valid organisasjonsnummer", f"{ref_path}.identifier.value")
    if system == HPR and not _is_digits(number):
        raise ConsentFormatError("an HPR number is digits only", f"{ref_path}.identifier.value")
    return system, number


def _purposes(provision: Mapping[str, Any], path: str) -> frozenset[PurposeOfUse]:
    if "purpose" not in provision:
        return frozenset()
    purposes = set()
    for i, coding in enumerate(_array(provision["purpose"], path)):
        c = _object(coding, f"{path}[{i}]")
        if c.get("system") not in PURPOSE_SYSTEMS:
            raise ConsentFormatError(
                f"a purpose is a v3 PurposeOfUse code ({ACT_REASON_SYSTEM})", f"{path}[{i}].system"
            )
        code = _string(c.get("code"), f"{path}[{i}].code")
        try:
            purposes.add(PurposeOfUse(code))
        except ValueError:
            allowed = ", ".join(PurposeOfUse)
            raise ConsentFormatError(
                f"purpose {code!r} is not one of {allowed}", f"{path}[{i}].code"
            ) from None
    return frozenset(purposes)


def _categories(provision: Mapping[str, Any], path: str) -> frozenset[str] | None:
    if "class" not in provision:
        return None
    categories = set()
    for i, coding in enumerate(_array(provision["class"], path)):
        c = _object(coding, f"{path}[{i}]")
        system = _string(c.get("system"), f"{path}[{i}].system")
        code = _string(c.get("code"), f"{path}[{i}].code")
        categories.add(code if system == OBSERVATION_CATEGORY_SYSTEM else f"{system}|{code}")
    return frozenset(categories)


def _check_actions(provision: Mapping[str, Any], path: str) -> None:
    if "action" not in provision:
        return
    codes = set()
    for i, concept in enumerate(_array(provision["action"], path)):
        codes |= {
            code for system, code in _codings(concept, f"{path}[{i}]") if system == CONSENT_ACTION_SYSTEM
        }
    if not codes & READ_ACTIONS:
        raise ConsentFormatError("the directive must control reading: action access, use or disclose", path)


_UNSUPPORTED_PROVISION_ELEMENTS = ("provision", "data", "code", "securityLabel")

_STATUS = {"active": True, "inactive": False, "rejected": False}


def directive_from_fhir(resource: object, *, record_id: str | None = None) -> PatientDirective:
    """Read a FHIR R4 ``Consent`` as a :class:`Reservation`, :class:`Block` or :class:`Consent`.

    ``record_id`` names the record when the resource has no ``id`` yet (a create); otherwise
    ``Consent.id`` does. Raises :class:`ConsentFormatError` naming the first element at fault.
    """
    root = _object(resource, "Consent")
    if root.get("resourceType") != "Consent":
        raise ConsentFormatError("expected a Consent resource", "Consent.resourceType")
    identity = record_id if record_id is not None else root.get("id")
    if identity is None:
        raise ConsentFormatError("the Consent has no id", "Consent.id")
    if not isinstance(identity, str) or not _ID.fullmatch(identity):
        raise ConsentFormatError("not a FHIR id", "Consent.id")

    status = _string(root.get("status"), "Consent.status")
    if status not in _STATUS:
        raise ConsentFormatError("status must be active, inactive (revoked) or rejected", "Consent.status")
    active = _STATUS[status]

    scopes = _codings(root.get("scope"), "Consent.scope")
    if (CONSENT_SCOPE_SYSTEM, PATIENT_PRIVACY) not in scopes:
        raise ConsentFormatError(f"scope must be {CONSENT_SCOPE_SYSTEM}#{PATIENT_PRIVACY}", "Consent.scope")
    _array(root.get("category"), "Consent.category")
    patient = _patient(root.get("patient"), "Consent.patient")

    provision = _object(root.get("provision"), "Consent.provision")
    for element in _UNSUPPORTED_PROVISION_ELEMENTS:
        if element in provision:
            raise ConsentFormatError(f"provision.{element} is not supported", f"Consent.provision.{element}")
    kind = provision.get("type")
    if kind not in ("deny", "permit"):
        raise ConsentFormatError("provision.type must be deny or permit", "Consent.provision.type")
    _check_actions(provision, "Consent.provision.action")
    period = _period(provision["period"], "Consent.provision.period") if "period" in provision else ALWAYS
    actor = _actor(provision, "Consent.provision.actor")
    purposes = _purposes(provision, "Consent.provision.purpose")
    categories = _categories(provision, "Consent.provision.class")
    data_period = (
        _period(provision["dataPeriod"], "Consent.provision.dataPeriod")
        if "dataPeriod" in provision
        else None
    )

    if kind == "deny":
        for element, present in (("purpose", purposes), ("class", categories), ("dataPeriod", data_period)):
            if present:
                raise ConsentFormatError(
                    f"a reservation or block covers every purpose, category and time: {element} is refused",
                    f"Consent.provision.{element}",
                )
        if actor is not None and actor[0] == HPR:
            return Block(identity, patient, actor[1], period, active)
        return Reservation(identity, patient, None if actor is None else actor[1], period, active)

    if actor is not None and actor[0] == HPR:
        raise ConsentFormatError(
            "a consent names an organisation, not a health worker",
            "Consent.provision.actor[0].reference.identifier.system",
        )
    return Consent(
        identity,
        patient,
        None if actor is None else actor[1],
        categories,
        purposes,
        period,
        data_period,
        active,
    )


def _actor_json(system: str, value: str) -> dict[str, Any]:
    return {
        "role": {"coding": [{"system": PARTICIPATION_TYPE_SYSTEM, "code": "IRCP"}]},
        "reference": {
            "type": "Organization" if system == ORGNR else "Practitioner",
            "identifier": {"system": system, "value": value},
        },
    }


def _category_json(category: str) -> dict[str, str]:
    system, bar, code = category.rpartition("|")
    return (
        {"system": system, "code": code} if bar else {"system": OBSERVATION_CATEGORY_SYSTEM, "code": category}
    )


def directive_to_fhir(directive: PatientDirective) -> dict[str, Any]:
    """The FHIR R4 ``Consent`` that :func:`directive_from_fhir` reads back as ``directive``.

    ``policyRule`` says which national default the directive departs from: ``OPTOUT`` (share unless the
    patient objects) for reservations and blocks, ``OPTIN`` for consents. Lists are sorted, so equal
    directives give equal JSON.
    """
    provision: dict[str, Any] = {"type": "permit" if isinstance(directive, Consent) else "deny"}
    if not directive.period.is_unbounded:
        provision["period"] = _period_json(directive.period)
    actor: tuple[str, str] | None
    if isinstance(directive, Block):
        actor = (HPR, directive.practitioner_hpr)
    elif isinstance(directive, Reservation):
        actor = None if directive.organisation is None else (ORGNR, directive.organisation)
    else:
        actor = None if directive.consumer is None else (ORGNR, directive.consumer)
    if actor is not None:
        provision["actor"] = [_actor_json(*actor)]
    provision["action"] = [{"coding": [{"system": CONSENT_ACTION_SYSTEM, "code": "access"}]}]
    if isinstance(directive, Consent):
        if directive.purposes:
            provision["purpose"] = [
                {"system": ACT_REASON_SYSTEM, "code": p} for p in sorted(directive.purposes)
            ]
        if directive.categories is not None:
            provision["class"] = [_category_json(c) for c in sorted(directive.categories)]
        if directive.data_period is not None:
            provision["dataPeriod"] = _period_json(directive.data_period)

    return {
        "resourceType": "Consent",
        "id": directive.id,
        "status": "active" if directive.active else "inactive",
        "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": PATIENT_PRIVACY}]},
        "category": [{"coding": [{"system": LOINC, "code": PATIENT_CONSENT, "display": "Patient Consent"}]}],
        "patient": {"identifier": {"system": directive.patient.system, "value": directive.patient.value}},
        "policyRule": {
            "coding": [
                {"system": ACT_CODE_SYSTEM, "code": "OPTIN" if isinstance(directive, Consent) else "OPTOUT"}
            ]
        },
        "provision": provision,
    }
