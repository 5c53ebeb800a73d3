"""``Observation/$evaluate``: the patient's latest measurements against the active plan's thresholds."""

from __future__ import annotations

from typing import Any

import pytest

from consent.fhir_consent import directive_to_fhir
from consent.model import Block, PatientId
from sharing_api.audit.actions import AuditAction
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from tests.api_client import HOSPITAL, HPR, READ, ApiClient, Party
from tests.careplans.helpers import BASE, PLAN_READ, call, plan_parties, put, stored_plan
from tests.careplans.test_thresholds import _bp
from tests.conftest import TENANT_A
from tests.factories import fnr


@pytest.fixture(autouse=True)
def _parties(client: ApiClient, services: Services) -> None:
    plan_parties(client, services)


def _publish(client: ApiClient, patient: str, systolic: float, when: str) -> None:
    obs = _bp(systolic, when=when)
    del obs["id"]
    obs["subject"] = {"identifier": {"system": FNR, "value": patient}}
    obs["category"] = [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                }
            ]
        }
    ]
    response = client.post(f"{BASE}/Observation", json=obs)
    assert response.status_code == 201, response.get_json()


def _evaluate(client: ApiClient, patient: str, party: str = "hospital-plan") -> Any:
    form = {"patient.identifier": f"{FNR}|{patient}"}
    return call(client, "POST", f"{BASE}/Observation/$evaluate", party=party, patient=patient, data=form)


def _evaluations(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for parameter in body.get("parameter", []):
        if parameter["name"] == "evaluation":
            out.append(
                {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in parameter["part"]}
            )
    return out


def test_outside_since_the_first_reading_of_the_run(client: ApiClient, services: Services) -> None:
    patient = fnr()
    goal, plan = stored_plan(client, patient)
    _publish(client, patient, 150, "2026-11-19T08:00:00+01:00")
    _publish(client, patient, 185, "2026-11-19T20:00:00+01:00")
    _publish(client, patient, 192, "2026-11-20T08:00:00+01:00")
    response = _evaluate(client, patient)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["resourceType"] == "Parameters"
    assert {"name": "carePlan", "valueReference": {"reference": f"CarePlan/{plan['id']}"}} in body[
        "parameter"
    ]
    (evaluation,) = _evaluations(body)
    assert evaluation["goal"] == {"reference": f"Goal/{goal['id']}"}
    # The measure as the Goal names it (code and system; no display in this Goal).
    assert evaluation["measure"] == goal["target"][0]["measure"]["coding"][0]
    assert evaluation["status"] == "outside"
    assert evaluation["value"]["value"] == 192
    assert evaluation["target"] == "<= 180 mm[Hg]"
    assert evaluation["effective"] == "2026-11-20T08:00:00+01:00"
    assert evaluation["since"] == "2026-11-19T20:00:00+01:00"
    services.audit_log.drain()
    (event,) = services.audit_log.search(TENANT_A, patient=patient, action=AuditAction.OBSERVATION_EVALUATE)
    assert event.organisation == HOSPITAL


def test_within_after_the_plan_is_changed(client: ApiClient) -> None:
    patient = fnr()
    goal, _ = stored_plan(client, patient)
    _publish(client, patient, 185, "2026-11-20T08:00:00+01:00")
    (before,) = _evaluations(_evaluate(client, patient).get_json())
    assert before["status"] == "outside"
    raised = {
        **goal,
        "target": [
            {**goal["target"][0], "detailQuantity": {**goal["target"][0]["detailQuantity"], "value": 190}}
        ],
    }
    assert put(client, raised, "1", party="hospital-plan").status_code == 200
    (after,) = _evaluations(_evaluate(client, patient).get_json())
    assert after["status"] == "within"
    assert after["target"] == "<= 190 mm[Hg]"


def test_no_data_and_no_plan(client: ApiClient) -> None:
    patient = fnr()
    stored_plan(client, patient)
    (evaluation,) = _evaluations(_evaluate(client, patient).get_json())
    assert evaluation["status"] == "no-data"
    assert _evaluate(client, fnr()).get_json() == {"resourceType": "Parameters"}


def test_needs_both_scopes_and_both_decisions(client: ApiClient, services: Services) -> None:
    patient = fnr()
    stored_plan(client, patient)
    _publish(client, patient, 185, "2026-11-20T08:00:00+01:00")
    client.add_party(Party("reader-only", HOSPITAL, frozenset({READ}), point_of_care=HOSPITAL))
    assert _evaluate(client, patient, party="reader-only").status_code == 403
    client.add_party(Party("plan-only", HOSPITAL, frozenset({PLAN_READ}), point_of_care=HOSPITAL))
    assert _evaluate(client, patient, party="plan-only").status_code == 403
    resource = directive_to_fhir(Block("b", PatientId(FNR, patient), HPR))
    resource.pop("id", None)
    services.policy.create_directive(TENANT_A, resource)
    blocked = _evaluate(client, patient)
    assert blocked.status_code == 200
    assert blocked.get_json() == {"resourceType": "Parameters"}
    other = {"patient.identifier": f"{FNR}|{fnr()}"}
    wrong = call(
        client, "POST", f"{BASE}/Observation/$evaluate", party="gp-plan", patient=patient, data=other
    )
    assert wrong.status_code == 403


def test_the_patient_goes_in_a_form_body_only(client: ApiClient) -> None:
    patient = fnr()
    as_json = call(
        client,
        "POST",
        f"{BASE}/Observation/$evaluate",
        party="hospital-plan",
        patient=patient,
        json={"patient.identifier": f"{FNR}|{patient}"},
    )
    assert as_json.status_code == 415
    in_url = call(
        client,
        "POST",
        f"{BASE}/Observation/$evaluate?patient.identifier={FNR}|{patient}",
        party="hospital-plan",
        patient=patient,
    )
    assert in_url.status_code == 400
    extra = call(
        client,
        "POST",
        f"{BASE}/Observation/$evaluate",
        party="hospital-plan",
        patient=patient,
        data={"patient.identifier": f"{FNR}|{patient}", "code": "x"},
    )
    assert extra.status_code == 400
    assert extra.get_json()["issue"][0]["expression"] == ["code"]
