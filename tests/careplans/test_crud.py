"""CarePlan and Goal over HTTP: create, read, versions with their authors, If-Match (428, 412), search."""

from __future__ import annotations

import pytest

from sharing_api.careplans.validation import VERSION_AUTHOR
from sharing_api.fhir.identifiers import FNR, HPR, ORGNR
from sharing_api.services import Services
from tests.api_client import HOSPITAL, ApiClient
from tests.careplans.helpers import (
    BASE,
    CATEGORY,
    NURSE_HPR,
    call,
    careplan,
    create,
    plan_parties,
    put,
    stored_plan,
)
from tests.conftest import TENANT_A
from tests.factories import fnr


@pytest.fixture(autouse=True)
def _parties(client: ApiClient, services: Services) -> None:
    plan_parties(client, services)


def _author(resource: dict) -> dict[str, str]:
    (ext,) = [e for e in resource["meta"]["extension"] if e["url"] == VERSION_AUTHOR]
    return {
        e["url"]: e["valueIdentifier"]["value"] if "valueIdentifier" in e else e["valueString"]
        for e in ext["extension"]
    }


def test_create_read_update_history_and_vread(client: ApiClient, services: Services) -> None:
    patient = fnr()
    goal, plan = stored_plan(client, patient)
    assert plan["meta"]["versionId"] == "1"
    assert _author(plan) == {"organization": TENANT_A, "practitioner": NURSE_HPR, "client": "kommune-epj"}
    read = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}", party="hospital-plan", patient=patient)
    assert read.status_code == 200
    assert read.get_json() == plan
    assert read.headers["ETag"] == 'W/"1"'

    changed = {**plan, "title": "Endret av sykehuset"}
    updated = put(client, changed, "1", party="hospital-plan")
    assert updated.status_code == 200, updated.get_json()
    assert updated.get_json()["meta"]["versionId"] == "2"
    assert _author(updated.get_json())["organization"] == HOSPITAL

    history = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}/_history", party="gp-plan", patient=patient)
    body = history.get_json()
    assert history.status_code == 200
    assert [e["resource"]["meta"]["versionId"] for e in body["entry"]] == ["2", "1"]
    assert [e["resource"]["title"] for e in body["entry"]] == ["Endret av sykehuset", plan["title"]]
    assert [e["request"]["method"] for e in body["entry"]] == ["PUT", "POST"]
    first = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}/_history/1", party="gp-plan", patient=patient)
    assert first.get_json() == plan
    gone = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}/_history/9", party="gp-plan", patient=patient)
    assert gone.status_code == 404
    goal_read = call(client, "GET", f"{BASE}/Goal/{goal['id']}", party="gp-plan", patient=patient)
    assert goal_read.get_json() == goal


def test_update_without_if_match_is_428_and_changes_nothing(client: ApiClient) -> None:
    patient = fnr()
    _, plan = stored_plan(client, patient)
    refused = put(client, {**plan, "title": "x"}, None)
    assert refused.status_code == 428
    issue = refused.get_json()["issue"][0]
    assert issue["expression"] == ["If-Match"]
    read = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}", party="kommune-epj", patient=patient)
    assert read.get_json() == plan


def test_a_stale_version_is_412_naming_the_current_one(client: ApiClient) -> None:
    patient = fnr()
    _, plan = stored_plan(client, patient)
    assert put(client, {**plan, "title": "first"}, "1").status_code == 200
    stale = put(client, {**plan, "title": "second"}, "1", party="hospital-plan")
    assert stale.status_code == 412
    assert stale.headers["ETag"] == 'W/"2"'
    issue = stale.get_json()["issue"][0]
    assert "current version is 2" in issue["diagnostics"]
    assert issue["expression"] == ["If-Match"]
    read = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}", party="kommune-epj", patient=patient)
    assert read.get_json()["title"] == "first"


def test_an_update_keeps_the_patient_and_the_url_id(client: ApiClient) -> None:
    patient = fnr()
    _, plan = stored_plan(client, patient)
    wrong_id = put(client, {**plan, "id": "other"}, "1")
    assert wrong_id.status_code == 404  # the URL names a plan that does not exist
    path = f"{BASE}/CarePlan/{plan['id']}"
    no_id = call(
        client,
        "PUT",
        path,
        party="kommune-epj",
        patient=patient,
        json={k: v for k, v in plan.items() if k != "id"},
        headers={"If-Match": 'W/"1"'},
    )
    assert no_id.status_code == 400
    assert no_id.get_json()["issue"][0]["expression"] == ["CarePlan.id"]


def test_search_by_patient_status_category_and_date(client: ApiClient) -> None:
    patient = fnr()
    _, active = stored_plan(client, patient, start="2026-11-01")
    revoked = create(
        client, careplan(patient, status="revoked", start="2025-01-01", end="2025-12-31")
    ).get_json()
    stored_plan(client, fnr())  # another patient's plan is never found

    def search(**form: str) -> list[str]:
        data = {"patient.identifier": f"{FNR}|{patient}", **form}
        response = call(
            client, "POST", f"{BASE}/CarePlan/_search", party="hospital-plan", patient=patient, data=data
        )
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["total"] == len(body.get("entry", []))
        return sorted(e["resource"]["id"] for e in body.get("entry", []))

    assert search() == sorted([active["id"], revoked["id"]])
    assert search(status="active") == [active["id"]]
    assert search(status="active,revoked") == sorted([active["id"], revoked["id"]])
    assert search(category=f"{CATEGORY}|self-treatment", status="revoked") == [revoked["id"]]
    assert search(category=f"{CATEGORY}|other") == []
    assert search(date="ge2026-06-01") == [active["id"]]
    assert search(date="lt2025-06-01") == [revoked["id"]]
    assert search(date="eq2025") == [revoked["id"]]  # FHIR eq: the year holds the whole period

    unknown = call(
        client,
        "POST",
        f"{BASE}/CarePlan/_search",
        party="hospital-plan",
        patient=patient,
        data={"patient.identifier": f"{FNR}|{patient}", "intent": "plan"},
    )
    assert unknown.status_code == 400
    assert unknown.get_json()["issue"][0]["expression"] == ["intent"]


def test_a_national_id_in_the_url_is_refused(client: ApiClient) -> None:
    patient = fnr()
    response = call(
        client,
        "POST",
        f"{BASE}/CarePlan/_search?patient.identifier={FNR}|{patient}",
        party="hospital-plan",
        patient=patient,
    )
    assert response.status_code == 400


def test_an_hpr_author_is_accepted(client: ApiClient) -> None:
    patient = fnr()
    plan = careplan(patient)
    plan["author"] = {"identifier": {"system": HPR, "value": NURSE_HPR}}
    assert create(client, plan).status_code == 201
    plan["author"] = {"identifier": {"system": ORGNR, "value": TENANT_A}}
    assert create(client, plan).status_code == 201
