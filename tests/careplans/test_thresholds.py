"""The pure threshold check (``breaches``) that $evaluate and plan notifications use."""

from __future__ import annotations

from typing import Any

import pytest

from sharing_api.careplans.evaluation import assess
from sharing_api.careplans.thresholds import breaches, check, targets
from sharing_api.fhir.vitals import LOINC, SNOMED, UCUM
from tests.careplans.helpers import goal
from tests.factories import fnr, heart_rate

PATIENT = fnr()


def _bp(systolic: float, diastolic: float = 80, *, when: str = "2026-11-20T08:00:00+01:00") -> dict[str, Any]:
    def comp(code: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "system": UCUM, "code": "mm[Hg]", "unit": "mm[Hg]"},
        }

    return {
        "resourceType": "Observation",
        "id": f"bp-{systolic}-{when}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "effectiveDateTime": when,
        "component": [comp("8480-6", systolic), comp("8462-4", diastolic)],
    }


def _goal(**kwargs: Any) -> dict[str, Any]:
    return {**goal(PATIENT, **kwargs), "id": "g1"}


@pytest.mark.parametrize(("systolic", "outside"), [(120, False), (180, False), (180.5, True), (200, True)])
def test_systolic_above_180_breaches_a_target_of_at_most_180(systolic: float, outside: bool) -> None:
    found = breaches([_goal()], _bp(systolic))
    assert bool(found) == outside
    if outside:
        assert found[0].value == systolic
        assert found[0].target.text() == "<= 180 mm[Hg]"


def test_strict_and_lower_comparators() -> None:
    assert breaches([_goal(comparator="<")], _bp(180))
    assert not breaches([_goal(comparator=">=", value=90)], _bp(90))
    assert breaches([_goal(comparator=">", value=90)], _bp(90))


def test_a_range_target_and_another_code_system() -> None:
    spo2_goal = {
        "id": "g2",
        "lifecycleStatus": "active",
        "target": [
            {
                "measure": {"coding": [{"system": LOINC, "code": "2708-6"}]},
                "detailRange": {
                    "low": {"value": 92, "system": UCUM, "code": "%"},
                    "high": {"value": 100, "system": UCUM, "code": "%"},
                },
            }
        ],
    }
    reading = heart_rate(PATIENT)
    reading["code"] = {"coding": [{"system": SNOMED, "code": "431314004"}]}  # SpO2, SNOMED CT only
    reading["valueQuantity"] = {"value": 89, "system": UCUM, "code": "%"}
    assert [b.target.goal_id for b in breaches([spo2_goal], reading)] == ["g2"]
    reading["valueQuantity"]["value"] = 92
    assert breaches([spo2_goal], reading) == []


def test_units_are_converted_and_unrelated_measurements_ignored() -> None:
    weight_goal = {
        "id": "g3",
        "lifecycleStatus": "active",
        "target": [
            {
                "measure": {"coding": [{"system": LOINC, "code": "29463-7"}]},
                "detailQuantity": {"value": 80, "comparator": "<=", "system": UCUM, "code": "kg"},
            }
        ],
    }
    weight = heart_rate(PATIENT)
    weight["code"] = {"coding": [{"system": LOINC, "code": "29463-7"}]}
    weight["valueQuantity"] = {"value": 82_000, "system": UCUM, "code": "g"}
    assert len(breaches([weight_goal], weight)) == 1
    assert breaches([weight_goal], heart_rate(PATIENT, value=200)) == []
    assert breaches([_goal()], heart_rate(PATIENT, value=200)) == []


def test_inactive_goals_and_retracted_measurements_count_for_nothing() -> None:
    assert targets({**_goal(), "lifecycleStatus": "completed"}) == []
    assert breaches([{**_goal(), "lifecycleStatus": "cancelled"}], _bp(250)) == []
    assert breaches([_goal()], {**_bp(250), "status": "entered-in-error"}) == []


def test_since_when_is_the_start_of_the_current_run() -> None:
    g = _goal()
    (target,) = targets(g)
    series = [  # newest first
        _bp(190, when="2026-11-20T20:00:00+01:00"),
        _bp(185, when="2026-11-20T08:00:00+01:00"),
        _bp(150, when="2026-11-19T20:00:00+01:00"),
        _bp(200, when="2026-11-19T08:00:00+01:00"),
    ]
    result = assess(g, target, series)
    assert result.latest is not None
    assert result.latest.status == "outside"
    assert result.latest.value == 190
    assert result.since == "2026-11-20T08:00:00+01:00"
    calm = assess(g, target, series[2:])
    assert calm.latest is not None
    assert (calm.latest.status, calm.since) == ("within", "2026-11-19T20:00:00+01:00")
    assert assess(g, target, []).latest is None
    assert all(c.status == "within" for c in check([g], _bp(100)))
