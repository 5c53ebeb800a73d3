"""Synthetic home-monitoring series: plausible values, a daily rhythm, synthetic identity numbers only.

Every patient gets a baseline and a handful of measurement types (blood pressure and pulse morning and
evening, SpO2, weight, temperature, respiratory rate, glucose for some, NEWS2 and frailty scores now
and then). Values drift slowly and vary around the baseline, as home measurements do.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sharing_api.fhir.dates import LOCAL_ZONE
from sharing_api.fhir.identifiers import FNR, ORGNR, synthetic_fnr
from sharing_api.fhir.vitals import LOINC, NPU, OBSERVATION_CATEGORY, SNOMED, UCUM

SYSTEM_ID = "urn:dho-share:seed"


@dataclass(frozen=True, slots=True)
class Patient:
    fnr: str
    systolic: float
    diastolic: float
    pulse: float
    spo2: float
    weight: float
    diabetic: bool


def _category(code: str) -> list[dict[str, Any]]:
    display = "Vital Signs" if code == "vital-signs" else "Survey"
    return [{"coding": [{"system": OBSERVATION_CATEGORY, "code": code, "display": display}]}]


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _observation(
    patient: Patient, tenant: str, key: str, when: datetime, codes: list[tuple[str, str, str]], **content: Any
) -> dict[str, Any]:
    category = content.pop("category", "vital-signs")
    return {
        "resourceType": "Observation",
        "identifier": [{"system": SYSTEM_ID, "value": f"{tenant}-{patient.fnr}-{key}-{when:%Y%m%dT%H%M}"}],
        "status": "final",
        "category": _category(category),
        "code": {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codes]},
        "subject": {"identifier": {"system": FNR, "value": patient.fnr}},
        "effectiveDateTime": when.isoformat(timespec="seconds"),
        "performer": [{"identifier": {"system": ORGNR, "value": tenant}}],
        **content,
    }


def make_patient(rng: random.Random) -> Patient:
    return Patient(
        fnr=synthetic_fnr(rng),
        systolic=rng.gauss(135, 15),
        diastolic=rng.gauss(82, 8),
        pulse=rng.gauss(72, 9),
        spo2=min(99.0, rng.gauss(95, 2)),
        weight=rng.gauss(78, 15),
        diabetic=rng.random() < 0.3,
    )


def series(
    patient: Patient, tenant: str, days: int, rng: random.Random, end: datetime
) -> Iterator[dict[str, Any]]:
    """Every measurement of ``patient`` over the ``days`` days before ``end``."""
    start = (
        (end - timedelta(days=days)).astimezone(LOCAL_ZONE).replace(hour=0, minute=0, second=0, microsecond=0)
    )
    drift = rng.uniform(-0.05, 0.05)
    for day in range(days):
        date = start + timedelta(days=day)
        for slot, hour in (("am", 7), ("pm", 20)):
            when = date + timedelta(hours=hour, minutes=rng.randrange(0, 90))
            if when > end:
                continue
            sys_v = round(patient.systolic + drift * day + rng.gauss(0, 8))
            dia_v = round(min(sys_v - 20, patient.diastolic + rng.gauss(0, 5)))
            yield _observation(
                patient,
                tenant,
                f"bp{slot}",
                when,
                [(LOINC, "85354-9", "Blood pressure panel"), (SNOMED, "75367002", "Blood pressure")],
                component=[
                    {
                        "code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
                        "valueQuantity": _quantity(sys_v, "mm[Hg]"),
                    },
                    {
                        "code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic"}]},
                        "valueQuantity": _quantity(dia_v, "mm[Hg]"),
                    },
                ],
            )
            yield _observation(
                patient,
                tenant,
                f"hr{slot}",
                when,
                [(LOINC, "8867-4", "Heart rate")],
                valueQuantity=_quantity(round(patient.pulse + rng.gauss(0, 6)), "/min"),
            )
            if patient.diabetic:
                glucose = round(max(3.0, rng.gauss(7.5 if slot == "am" else 9.0, 1.5)), 1)
                yield _observation(
                    patient,
                    tenant,
                    f"glu{slot}",
                    when,
                    [(LOINC, "15074-8", "Glucose"), (NPU, "NPU02187", "P-Glukose")],
                    valueQuantity=_quantity(glucose, "mmol/L"),
                )
        morning = date + timedelta(hours=8, minutes=rng.randrange(0, 60))
        if morning > end:
            continue
        yield _observation(
            patient,
            tenant,
            "spo2",
            morning,
            [(LOINC, "2708-6", "Oxygen saturation")],
            valueQuantity=_quantity(round(min(100.0, patient.spo2 + rng.gauss(0, 1.2))), "%"),
        )
        yield _observation(
            patient,
            tenant,
            "weight",
            morning,
            [(LOINC, "29463-7", "Body weight")],
            valueQuantity=_quantity(round(patient.weight + drift * day * 0.5 + rng.gauss(0, 0.4), 1), "kg"),
        )
        if rng.random() < 0.4:
            yield _observation(
                patient,
                tenant,
                "temp",
                morning,
                [(LOINC, "8310-5", "Body temperature")],
                valueQuantity=_quantity(round(rng.gauss(36.8, 0.3), 1), "Cel"),
            )
            yield _observation(
                patient,
                tenant,
                "resp",
                morning,
                [(LOINC, "9279-1", "Respiratory rate")],
                valueQuantity=_quantity(round(rng.gauss(16, 2)), "/min"),
            )
        if day % 7 == 0:
            yield _observation(
                patient,
                tenant,
                "news2",
                morning,
                [(SNOMED, "1104051000000101", "NEWS2 score")],
                category="survey",
                valueQuantity={"value": rng.choice([0, 0, 1, 1, 2, 3, 5])},
            )
        if day % 30 == 0:
            yield _observation(
                patient,
                tenant,
                "cfs",
                morning,
                [(SNOMED, "763264000", "Clinical frailty scale")],
                category="survey",
                valueQuantity={"value": rng.randint(2, 6)},
            )


def batches(resources: Iterator[dict[str, Any]], size: int) -> Iterator[dict[str, Any]]:
    """Batch Bundles (PMD profile: a unique fullUrl per entry) of at most ``size`` entries."""
    entries: list[dict[str, Any]] = []
    for n, resource in enumerate(resources):
        entries.append(
            {
                "fullUrl": f"urn:uuid:seed-{n}",
                "resource": resource,
                "request": {"method": "POST", "url": "Observation"},
            }
        )
        if len(entries) == size:
            yield {"resourceType": "Bundle", "type": "batch", "entry": entries}
            entries = []
    if entries:
        yield {"resourceType": "Bundle", "type": "batch", "entry": entries}


SYSTOLIC_LIMIT = 160
SPO2_LIMIT = 92


def goal_for(patient: Patient) -> dict[str, Any]:
    """The thresholds of a seeded plan: call if systolic > 160 mm[Hg] or SpO2 < 92 %."""
    return {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": "Ring hjemmesykepleien ved systolisk trykk over 160 eller SpO2 under 92 %"},
        "subject": {"identifier": {"system": FNR, "value": patient.fnr}},
        "target": [
            {
                "measure": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
                "detailQuantity": {
                    "value": SYSTOLIC_LIMIT,
                    "comparator": "<=",
                    **_quantity(SYSTOLIC_LIMIT, "mm[Hg]"),
                },
            },
            {
                "measure": {"coding": [{"system": LOINC, "code": "2708-6", "display": "Oxygen saturation"}]},
                "detailQuantity": {"value": SPO2_LIMIT, "comparator": ">=", **_quantity(SPO2_LIMIT, "%")},
            },
        ],
    }


def _activity(code: str, display: str, frequency: int, period_unit: str) -> dict[str, Any]:
    return {
        "detail": {
            "status": "in-progress",
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "scheduledTiming": {"repeat": {"frequency": frequency, "period": 1, "periodUnit": period_unit}},
        }
    }


def careplan_for(patient: Patient, tenant: str, goal_id: str, start: datetime) -> dict[str, Any]:
    """A self-treatment plan: blood pressure twice a day, SpO2 and weight daily, with the goal above."""
    return {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "category": [{"coding": [{"system": SNOMED, "code": "734163000", "display": "Care plan"}]}],
        "title": "Egenbehandlingsplan",
        "subject": {"identifier": {"system": FNR, "value": patient.fnr}},
        "period": {"start": start.date().isoformat()},
        "author": {"identifier": {"system": ORGNR, "value": tenant}},
        "goal": [{"reference": f"Goal/{goal_id}"}],
        "activity": [
            _activity("85354-9", "Blood pressure", 2, "d"),
            _activity("59408-5", "Oxygen saturation", 1, "d"),
            _activity("29463-7", "Body weight", 1, "d"),
        ],
    }
