"""Inbound Observation validation: FHIR R4 structure (fhir.resources R4B models) plus the VkpObservation
rules (``../shared/reference/vkpobservation/fsh/``, domain.md "Measurements").

The pydantic model is used here, at the edge, and nowhere else: the validated JSON is what is stored and
served. Every problem becomes an ``Issue`` whose ``expression`` names the element, and all problems of a
resource are reported together.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from sharing_api.errors import InvalidResource, Issue, SecurityLabelRefused
from sharing_api.fhir import identifiers as ids
from sharing_api.fhir import vitals
from sharing_api.fhir.dates import OPEN_END, DateFormatError, parse_range

PUBLISHABLE_STATUSES = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
)
"""R4's required binding ``observation-status``, all of it. ``unknown`` is allowed: no VKP profile
constrains ``status`` (``../shared/reference/vkpobservation/fsh/profiles/VkpObservation.fsh`` lines 1-50
set subject, performer and code.coding rules and no ``* status`` rule; nor does any other profile there)."""
SERVER_TAG_SYSTEMS = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "urn:dho-share:")
"""``meta.tag`` systems only the server writes (``SUBSETTED`` marks a partial copy, FHIR R4 §3.1.1.5.9;
``urn:dho-share:`` is ours). A client claiming one is refused, like any ``meta.security``."""
_UNSAFE_NARRATIVE = re.compile(r"<\s*(script|iframe|object|embed|style|form)|\son\w+\s*=|javascript:", re.I)


@dataclass(frozen=True, slots=True)
class Tenant:
    """The data controller whose base URL received the request (enough of it for validation)."""

    orgnr: str
    resh_ids: frozenset[str] = frozenset()
    allow_unknown_codes: bool = False
    """Codes outside :data:`vitals.MEASUREMENT_TYPES` are stored (their unit must still be UCUM)."""
    clock_skew_seconds: int = 300
    """How far in the future an effective time may lie (clocks of measuring devices drift)."""


@dataclass(frozen=True, slots=True)
class ValidObservation:
    """A validated Observation and the values the store indexes it by."""

    resource: dict[str, Any]
    patient: tuple[str, str]
    identifiers: tuple[tuple[str, str], ...]
    codes: tuple[tuple[str, str], ...]
    categories: tuple[tuple[str, str], ...]
    status: str
    effective: tuple[int, int]
    kind: str


def _path(loc: tuple[int | str, ...]) -> str:
    out = "Observation"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("__root__",):
            out += f".{part}"
    return out


def _structure_issues(resource: dict[str, Any]) -> list[Issue]:
    try:
        Observation.model_validate(resource)
    except ValidationError as exc:
        return [Issue(e["msg"], _path(tuple(e["loc"]))) for e in exc.errors(include_url=False)]
    except (ValueError, TypeError) as exc:  # fhir.resources raises plain errors from some validators
        return [Issue(str(exc), "Observation")]
    return []


def codings(concept: Any, path: str, issues: list[Issue]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not isinstance(concept, dict):
        return out
    for i, coding in enumerate(concept.get("coding") or []):
        if (
            isinstance(coding, dict)
            and isinstance(coding.get("system"), str)
            and isinstance(coding.get("code"), str)
        ):
            out.append((coding["system"], coding["code"]))
        else:
            issues.append(Issue("a coding needs both system and code", f"{path}.coding[{i}]"))
    return out


def check_subject(
    resource: dict[str, Any], issues: list[Issue], root: str = "Observation"
) -> tuple[str, str]:
    """The patient of ``resource.subject`` by FNR/DNR/FHN identifier with valid control digits; each
    problem is an issue naming ``<root>.subject...``."""
    subject = resource.get("subject")
    if not isinstance(subject, dict):
        issues.append(Issue("subject is required: the patient by national identifier", f"{root}.subject"))
        return ("", "")
    if "reference" in subject:
        issues.append(
            Issue(
                "VKP references the patient by identifier only, not by a literal reference",
                f"{root}.subject.reference",
            )
        )
    identifier = subject.get("identifier")
    if not isinstance(identifier, dict):
        issues.append(Issue("subject.identifier is required (FNR, DNR or FHN)", f"{root}.subject.identifier"))
        return ("", "")
    system, value = identifier.get("system"), identifier.get("value")
    if not isinstance(system, str):
        issues.append(Issue("subject.identifier.system is required", f"{root}.subject.identifier.system"))
        return ("", "")
    if system not in ids.PATIENT_SYSTEMS:
        issues.append(
            Issue(
                f"identifier system {system!r} is not FNR ({ids.FNR}), DNR ({ids.DNR}) or FHN ({ids.FHN})",
                f"{root}.subject.identifier.system",
            )
        )
        return ("", "")
    if not isinstance(value, str):
        issues.append(Issue("subject.identifier.value is required", f"{root}.subject.identifier.value"))
        return ("", "")
    problem = ids.check_patient_identifier(system, value)
    if problem:
        issues.append(Issue(f"the patient identifier {problem}", f"{root}.subject.identifier.value"))
    return (system, value)


def _check_performers(resource: dict[str, Any], tenant: Tenant, issues: list[Issue]) -> None:
    for i, performer in enumerate(resource.get("performer") or []):
        path = f"Observation.performer[{i}]"
        identifier = performer.get("identifier") if isinstance(performer, dict) else None
        if not isinstance(identifier, dict) or not isinstance(identifier.get("system"), str):
            issues.append(
                Issue("a performer is given by identifier (system and value)", f"{path}.identifier")
            )
            continue
        system, value = identifier["system"], identifier.get("value")
        if not isinstance(value, str):
            issues.append(Issue("performer identifier value is required", f"{path}.identifier.value"))
        elif system == ids.ORGNR:
            if value != tenant.orgnr:
                issues.append(
                    Issue(
                        f"the performer organisation must be this data controller ({tenant.orgnr})",
                        f"{path}.identifier.value",
                    )
                )
        elif system == ids.RESH:
            if value not in tenant.resh_ids:
                issues.append(
                    Issue("the RESH id is not registered to this data controller", f"{path}.identifier.value")
                )
        elif system in (ids.FNR, ids.DNR):
            problem = ids.check_patient_identifier(system, value)
            if problem:
                issues.append(Issue(f"the performer identifier {problem}", f"{path}.identifier.value"))
        elif system == ids.HPR:
            if not ids.is_valid_hpr(value):
                issues.append(Issue("an HPR number is 1-9 digits", f"{path}.identifier.value"))
        else:
            issues.append(
                Issue(
                    f"performer identifier system {system!r} is not FNR, DNR, HPR, org.nr or RESH",
                    f"{path}.identifier.system",
                )
            )


def check_quantity(
    quantity: Any,
    allowed: vitals.MeasurementType | None,
    rng: vitals.Range | None,
    ranges: tuple[vitals.Range, ...],
    path: str,
    issues: list[Issue],
) -> None:
    if not isinstance(quantity, dict):
        return
    code = quantity.get("code")
    if quantity.get("system") not in (None, vitals.UCUM) and code is not None:
        issues.append(Issue("quantities use UCUM (http://unitsofmeasure.org)", f"{path}.system"))
        return
    candidates = (rng,) if rng else ranges
    if not candidates:
        return
    if not isinstance(code, str) or quantity.get("system") != vitals.UCUM:
        units = " or ".join(r.unit for r in candidates)
        issues.append(Issue(f"the value needs a UCUM unit ({units}) in system and code", f"{path}.code"))
        return
    unit = vitals.canonical_ucum(code)
    match = next((r for r in candidates if r.unit == unit), None)
    if match is None:
        units = " or ".join(r.unit for r in candidates)
        issues.append(Issue(f"unit {code!r} is wrong for this measurement; use {units}", f"{path}.code"))
        return
    value = quantity.get("value")
    if isinstance(value, int | float) and not match.low <= value <= match.high:
        issues.append(
            Issue(
                f"{value} {match.unit} is outside the plausible range {match.low}-{match.high}",
                f"{path}.value",
            )
        )


def _check_value(resource: dict[str, Any], mt: vitals.MeasurementType | None, issues: list[Issue]) -> None:
    has_value = any(k.startswith("value") for k in resource)
    components = resource.get("component") or []
    if not has_value and not components and "dataAbsentReason" not in resource:
        issues.append(
            Issue("a measurement needs a value, components or dataAbsentReason", "Observation.value[x]")
        )
    if "valueQuantity" in resource:
        check_quantity(
            resource["valueQuantity"], mt, None, mt.ranges if mt else (), "Observation.valueQuantity", issues
        )
        if mt is None:
            _check_ucum(resource["valueQuantity"], "Observation.valueQuantity", issues)
    if mt is None or not mt.components:
        for i, comp in enumerate(components):
            if isinstance(comp, dict) and "valueQuantity" in comp:
                path = f"Observation.component[{i}].valueQuantity"
                check_quantity(comp["valueQuantity"], None, None, (), path, issues)
                if mt is None:
                    _check_ucum(comp["valueQuantity"], path, issues)
        return
    for i, comp in enumerate(components):
        if not isinstance(comp, dict):
            continue
        codes = set(codings(comp.get("code"), f"Observation.component[{i}].code", issues))
        rng = next((r for cc, r in mt.components if codes & cc), None)
        if "valueQuantity" in comp:
            check_quantity(
                comp["valueQuantity"], mt, rng, (), f"Observation.component[{i}].valueQuantity", issues
            )


def _check_ucum(quantity: Any, path: str, issues: list[Issue]) -> None:
    """A quantity of an unknown code (tenant allows those) still needs a valid UCUM unit."""
    if not isinstance(quantity, dict):
        return
    code = quantity.get("code")
    if quantity.get("system") != vitals.UCUM or not isinstance(code, str):
        issues.append(Issue("the value needs a UCUM unit in system and code", f"{path}.code"))
    elif not vitals.is_ucum(code):
        issues.append(Issue(f"unit {code[:64]!r} is not a valid UCUM code", f"{path}.code"))


def _check_future(
    effective: tuple[int, int], resource: dict[str, Any], tenant: Tenant, now: int
) -> list[Issue]:
    """A measurement cannot have been taken later than now, give or take the allowed clock skew."""
    latest = now + tenant.clock_skew_seconds * 1_000_000
    start, end = effective
    if not start or start <= latest:
        period = resource.get("effectivePeriod")
        if isinstance(period, dict) and "end" in period and end > latest + 1:
            return [Issue("effectivePeriod ends in the future", "Observation.effectivePeriod.end")]
        return []
    key = next((k for k in ("effectiveDateTime", "effectiveInstant", "effectivePeriod") if k in resource), "")
    where = f"Observation.{key}" + (".start" if key == "effectivePeriod" else "")
    return [
        Issue(
            f"the time of measurement lies in the future (more than {tenant.clock_skew_seconds} s ahead)",
            where,
        )
    ]


def check_narrative(resource: dict[str, Any], issues: list[Issue], root: str = "Observation") -> None:
    text = resource.get("text")
    if isinstance(text, dict) and isinstance(text.get("div"), str) and _UNSAFE_NARRATIVE.search(text["div"]):
        issues.append(
            Issue("the narrative holds active content (script, event handlers)", f"{root}.text.div")
        )


def _effective(resource: dict[str, Any], issues: list[Issue]) -> tuple[int, int]:
    for key in ("effectiveDateTime", "effectiveInstant"):
        if key in resource:
            try:
                return parse_range(resource[key])
            except (DateFormatError, TypeError) as exc:
                issues.append(Issue(str(exc), f"Observation.{key}"))
                return (0, 0)
    if "effectivePeriod" in resource:
        period = resource["effectivePeriod"]
        try:
            start = parse_range(period["start"])[0] if "start" in period else None
            end = parse_range(period["end"])[1] if "end" in period else None
        except (DateFormatError, TypeError) as exc:
            issues.append(Issue(str(exc), "Observation.effectivePeriod"))
            return (0, 0)
        if start is None:
            issues.append(Issue("effectivePeriod needs a start", "Observation.effectivePeriod.start"))
            return (0, 0)
        if end is not None and end < start:
            issues.append(Issue("effectivePeriod ends before it starts", "Observation.effectivePeriod.end"))
        return (start, end if end is not None else OPEN_END)  # no end: ongoing (R4 Period)
    issues.append(
        Issue(
            "the time of measurement is required (effectiveDateTime or effectivePeriod)",
            "Observation.effective[x]",
        )
    )
    return (0, 0)


def refuse_server_labels(resource: Any, path: str) -> None:
    """Refuse security labels and server-owned tags sent by a client (FHIR R4 §3.1.1.5: ``meta.security``
    labels are the server's to assign); raise :class:`SecurityLabelRefused` naming the element.

    Refused rather than overwritten: a publisher that labels data believes the label protects it, and it
    would not; the attempt is audited by the API (``FhirError.audited``).
    """
    meta = resource.get("meta") if isinstance(resource, dict) else None
    if not isinstance(meta, dict):
        return
    if "security" in meta:
        raise SecurityLabelRefused(
            "meta.security is set by the server only; send the resource without security labels",
            f"{path}.meta.security",
        )
    for i, tag in enumerate(meta.get("tag") or () if isinstance(meta.get("tag"), list) else ()):
        system = tag.get("system") if isinstance(tag, dict) else None
        if isinstance(system, str) and system.startswith(SERVER_TAG_SYSTEMS):
            raise SecurityLabelRefused(
                f"meta.tag system {system!r} is the server's own; leave it out", f"{path}.meta.tag[{i}]"
            )


def validate_observation(
    resource: Any, tenant: Tenant, *, path: str = "Observation", now: int | None = None
) -> ValidObservation:
    """Validate one inbound Observation for ``tenant``; raise ``InvalidResource`` naming every problem.

    ``path`` prefixes expressions when the Observation sits inside a Bundle (``Bundle.entry[3].resource``);
    ``now`` (microseconds since the epoch, default the wall clock) bounds the effective time.
    """
    if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
        raise InvalidResource(
            "expected an Observation resource",
            f"{path}.resourceType" if path != "Observation" else "Observation",
        )
    refuse_server_labels(resource, path)
    issues = _structure_issues(resource)
    patient = check_subject(resource, issues)
    _check_performers(resource, tenant, issues)
    codes = codings(resource.get("code"), "Observation.code", issues)
    if not any(system in vitals.CODE_SYSTEMS for system, _ in codes):
        issues.append(
            Issue("Observation.code needs a coding from LOINC, SNOMED CT or NPU", "Observation.code.coding")
        )
    mt = vitals.measurement_type(codes)
    if mt is None and codes and not tenant.allow_unknown_codes:
        known = ", ".join(sorted(m.kind for m in vitals.MEASUREMENT_TYPES))
        issues.append(
            Issue(
                f"Observation.code is not a measurement this service knows ({known}); the data "
                "controller can allow other codes (dho-share tenants add --allow-unknown-codes)",
                "Observation.code",
            )
        )
    categories: list[tuple[str, str]] = []
    for i, cat in enumerate(resource.get("category") or []):
        categories += codings(cat, f"Observation.category[{i}]", issues)
    if not categories:
        issues.append(
            Issue("category is required (vital-signs, or survey for scores)", "Observation.category")
        )
    status = resource.get("status")
    if status not in PUBLISHABLE_STATUSES:
        issues.append(
            Issue(f"status must be one of {', '.join(sorted(PUBLISHABLE_STATUSES))}", "Observation.status")
        )
    effective = _effective(resource, issues)
    issues += _check_future(effective, resource, tenant, time.time_ns() // 1000 if now is None else now)
    _check_value(resource, mt, issues)
    check_narrative(resource, issues)
    identifiers = []
    for i, ident in enumerate(resource.get("identifier") or []):
        if (
            isinstance(ident, dict)
            and isinstance(ident.get("system"), str)
            and isinstance(ident.get("value"), str)
        ):
            identifiers.append((ident["system"], ident["value"]))
        else:
            issues.append(
                Issue("a business identifier needs system and value", f"Observation.identifier[{i}]")
            )
    if issues:
        if path != "Observation":
            issues = [i.rebased(path) for i in issues]
        raise InvalidResource(issues[0].diagnostics, issues=_dedupe(issues))
    kind = mt.kind if mt else f"{codes[0][0]}|{codes[0][1]}"
    return ValidObservation(
        resource=resource,
        patient=patient,
        identifiers=tuple(dict.fromkeys(identifiers)),
        codes=tuple(dict.fromkeys(codes)),
        categories=tuple(dict.fromkeys(categories)),
        status=str(status),
        effective=effective,
        kind=kind,
    )


def _dedupe(issues: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(issues))
