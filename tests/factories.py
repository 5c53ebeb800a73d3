"""Small factories for test data: synthetic patients and VKP observations."""

from __future__ import annotations

import copy
import random
from typing import Any

from sharing_api.fhir.identifiers import FNR, ORGNR, synthetic_fnr

LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_rng = random.Random(20261125)
FHIR_JSON = "application/fhir+json"


def fnr() -> str:
    return synthetic_fnr(_rng)


def heart_rate(
    patient: str,
    *,
    value: float = 72,
    when: str = "2026-11-20T08:00:00+01:00",
    identifier: str | None = None,
    tenant: str | None = None,
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"identifier": {"system": FNR, "value": patient}},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
    if identifier:
        obs["identifier"] = [{"system": "urn:test:ids", "value": identifier}]
    if tenant:
        obs["performer"] = [{"identifier": {"system": ORGNR, "value": tenant}}]
    return obs


def spo2(patient: str, *, value: float = 97, when: str = "2026-11-20T08:00:00+01:00") -> dict[str, Any]:
    obs = heart_rate(patient, when=when)
    obs["code"] = {"coding": [{"system": LOINC, "code": "2708-6", "display": "Oxygen saturation"}]}
    obs["valueQuantity"] = {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    return obs


def batch(*resources: dict[str, Any], kind: str = "batch", method: str = "POST") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "fullUrl": f"urn:uuid:entry-{i}",
                "resource": copy.deepcopy(r),
                "request": {"method": method, "url": "Observation"},
            }
            for i, r in enumerate(resources)
        ],
    }


def search_form(patient: str, **extra: str) -> dict[str, str]:
    return {"patient.identifier": f"{FNR}|{patient}", **extra}
