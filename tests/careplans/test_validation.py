"""Bad plans are refused with an OperationOutcome naming the element, and nothing is stored."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from sharing_api.careplans.activities import ACTIVITY_CODES
from sharing_api.fhir.identifiers import DNR, FNR, ORGNR
from sharing_api.fhir.vitals import LOINC, MEASUREMENT_TYPES, measurement_type
from sharing_api.services import Services
from sharing_api.store.schema import plan_history, plan_resources
from tests.api_client import ApiClient
from tests.careplans.helpers import call, careplan, create, goal, plan_parties
from tests.factories import fnr

PATIENT = fnr()
Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(autouse=True)
def _parties(client: ApiClient, services: Services) -> None:
    plan_parties(client, services)


def _count(services: Services) -> int:
    with services.engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(plan_resources)).scalar_one()
        versions = conn.execute(select(func.count()).select_from(plan_history)).scalar_one()
    return int(rows) + int(versions)


def _set(path: str, value: Any) -> Edit:
    def edit(resource: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = resource
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return edit


_DELETE = object()

PLAN_CASES = [
    ("subject.identifier.value", "12345678901", "CarePlan.subject.identifier.value"),
    ("subject.identifier.system", "urn:oid:1.2.3", "CarePlan.subject.identifier.system"),
    ("subject", {"reference": "Patient/1"}, "CarePlan.subject.reference"),
    ("author", _DELETE, "CarePlan.author"),
    ("author", {"identifier": {"system": ORGNR, "value": "123456789"}}, "CarePlan.author.identifier.value"),
    ("author", {"identifier": {"system": FNR, "value": PATIENT}}, "CarePlan.author.identifier.system"),
    ("author", {"reference": "Organization/1"}, "CarePlan.author.reference"),
    (
        "activity.0.detail.code",
        {"coding": [{"system": LOINC, "code": "1234-5"}]},
        "CarePlan.activity[0].detail.code",
    ),
    ("activity.0.detail.scheduledTiming", _DELETE, "CarePlan.activity[0].detail.scheduledTiming.repeat"),
    (
        "activity.0.detail.scheduledTiming.repeat.periodUnit",
        "s",
        "CarePlan.activity[0].detail.scheduledTiming.repeat.periodUnit",
    ),
    (
        "activity.0.detail.scheduledTiming.repeat.frequency",
        0,
        "CarePlan.activity[0].detail.scheduledTiming.repeat.frequency",
    ),
    ("activity.0", {"reference": {"reference": "ServiceRequest/1"}}, "CarePlan.activity[0].reference"),
    ("goal", [{"reference": "Observation/1"}], "CarePlan.goal[0]"),
    ("status", "nonsense", "CarePlan.status"),
    ("intent", "wish", "CarePlan.intent"),
    ("activity.0.detail.status", "maybe", "CarePlan.activity[0].detail.status"),
    ("period", {"start": "2026-11-10", "end": "2026-11-01"}, "CarePlan.period.end"),
    ("meta", {"security": [{"system": "urn:x", "code": "R"}]}, "CarePlan.meta.security"),
    ("contained", [{"resourceType": "Goal"}], "CarePlan.contained"),
    ("unknownElement", 1, "CarePlan.unknownElement"),
]


@pytest.mark.parametrize(
    ("path", "value", "expression"),
    PLAN_CASES,
    ids=[f"{c[2]}={'(missing)' if c[1] is _DELETE else c[1]}" for c in PLAN_CASES],
)
def test_a_bad_careplan_is_refused_naming_the_element(
    client: ApiClient, services: Services, path: str, value: Any, expression: str
) -> None:
    plan = careplan(PATIENT)
    _set(path, value)(plan)
    response = create(client, plan) if path.startswith("subject") is False else _create_as(client, plan)
    assert response.status_code == 400, response.get_json()
    expressions = [e for issue in response.get_json()["issue"] for e in issue.get("expression", [])]
    assert expression in expressions
    assert _count(services) == 0


def _create_as(client: ApiClient, resource: dict[str, Any]) -> Any:
    return call(
        client, "POST", "/921234562/fhir/CarePlan", party="kommune-epj", patient=PATIENT, json=resource
    )


GOAL_CASES = [
    ("target.0.measure.coding.0.code", "1234-5", "Goal.target[0].measure"),
    ("target.0.measure.coding.0.code", "85354-9", "Goal.target[0].measure"),  # a panel has no one value
    ("target.0.detailQuantity.code", "kg", "Goal.target[0].detailQuantity.code"),
    ("target.0.detailQuantity.code", "not a unit", "Goal.target[0].detailQuantity.code"),
    ("target.0.detailQuantity.system", "urn:other", "Goal.target[0].detailQuantity.system"),
    ("target.0.detailQuantity.value", 900, "Goal.target[0].detailQuantity.value"),
    ("target.0.detailQuantity.comparator", _DELETE, "Goal.target[0].detailQuantity.comparator"),
    ("target.0.detailQuantity", _DELETE, "Goal.target[0].detail[x]"),
    ("lifecycleStatus", _DELETE, "Goal.lifecycleStatus"),
    ("lifecycleStatus", "wished", "Goal.lifecycleStatus"),
    ("subject.identifier.system", DNR, "Goal.subject.identifier.value"),  # an FNR is no valid D-nummer
]


@pytest.mark.parametrize(
    ("path", "value", "expression"),
    GOAL_CASES,
    ids=[f"{c[2]}={'(missing)' if c[1] is _DELETE else c[1]}" for c in GOAL_CASES],
)
def test_a_bad_goal_is_refused_naming_the_element(
    client: ApiClient, services: Services, path: str, value: Any, expression: str
) -> None:
    resource = goal(PATIENT)
    _set(path, value)(resource)
    response = _create_goal(client, resource)
    assert response.status_code == 400, response.get_json()
    expressions = [e for issue in response.get_json()["issue"] for e in issue.get("expression", [])]
    assert expression in expressions
    assert _count(services) == 0


def _create_goal(client: ApiClient, resource: dict[str, Any]) -> Any:
    return call(client, "POST", "/921234562/fhir/Goal", party="kommune-epj", patient=PATIENT, json=resource)


def test_a_range_target_in_each_registry_unit_is_accepted(client: ApiClient) -> None:
    """Every measure with a unit in the vital-sign registry takes a range in that unit (derived from it)."""
    for mt in MEASUREMENT_TYPES:
        for codes, rng in mt.components or ((mt.codes, r) for r in mt.ranges):
            system, code = sorted(codes)[0]
            resource = goal(PATIENT)
            resource["target"] = [
                {
                    "measure": {"coding": [{"system": system, "code": code}]},
                    "detailRange": {
                        "low": {"value": rng.low, "system": "http://unitsofmeasure.org", "code": rng.unit},
                        "high": {"value": rng.high, "system": "http://unitsofmeasure.org", "code": rng.unit},
                    },
                }
            ]
            response = _create_goal(client, resource)
            assert response.status_code == 201, (mt.kind, code, response.get_json())


def test_a_carePlan_goal_must_be_a_stored_goal_of_the_same_patient(
    client: ApiClient, services: Services
) -> None:
    other = fnr()
    theirs = call(
        client, "POST", "/921234562/fhir/Goal", party="kommune-epj", patient=other, json=goal(other)
    )
    for ref, expected in (("missing", 422), (theirs.get_json()["id"], 422)):
        plan = careplan(PATIENT, goals=(ref,))
        response = create(client, plan)
        assert response.status_code == expected
        assert response.get_json()["issue"][0]["expression"] == ["CarePlan.goal[0]"]
    assert _count(services) == 2  # only the other patient's goal (row and version)


def test_every_activity_code_is_a_registry_measurement() -> None:
    for activity in ACTIVITY_CODES:
        found = measurement_type([(LOINC, activity.code)])
        assert found is not None, activity
        assert found.kind == activity.kind, activity


def test_the_activity_value_set_is_documented(shared_dir: Any) -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "careplans.md").read_text(encoding="utf-8")
    table = doc.split("<!-- activities:start -->")[1].split("<!-- activities:end -->")[0]
    rows = [line.split("|")[1:4] for line in table.strip().splitlines()[2:]]
    assert [(c.strip().strip("`"), k.strip().strip("`"), d.strip()) for c, k, d in rows] == [
        (a.code, a.kind, a.display) for a in ACTIVITY_CODES
    ]


def test_nothing_is_copied_between_cases() -> None:
    assert careplan(PATIENT) == copy.deepcopy(careplan(PATIENT))
