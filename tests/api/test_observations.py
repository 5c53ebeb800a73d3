"""Publishing and reading one Observation: create, read, correct (versions), history, conditional create."""

from __future__ import annotations

from typing import Any

from sharing_api.services import Services
from tests.api.test_examples import count_rows, expressions
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import FHIR_JSON, fnr, heart_rate

BASE = f"/{TENANT_A}/fhir"
PUBLIC = "https://dho.example.test"


def create(client: ApiClient, resource: dict[str, Any], **headers: str) -> Any:
    return client.post(f"{BASE}/Observation", json=resource, headers=headers)


def test_create_assigns_id_and_version_and_ignores_a_client_id(client: ApiClient) -> None:
    obs = heart_rate(fnr(), identifier="hr-1")
    obs["id"] = "chosen-by-client"
    response = create(client, obs)
    assert response.status_code == 201
    body = response.get_json()
    assert body["id"] != "chosen-by-client"
    assert body["meta"]["versionId"] == "1"
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"] == f"{PUBLIC}{BASE}/Observation/{body['id']}/_history/1"
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert response.headers["Cache-Control"] == "no-store"


def test_read_serves_the_stored_resource(client: ApiClient) -> None:
    created = create(client, heart_rate(fnr(), value=81)).get_json()
    response = client.get(f"{BASE}/Observation/{created['id']}")
    assert response.status_code == 200
    assert response.get_json() == created


def test_unknown_id_is_404_operation_outcome(client: ApiClient) -> None:
    response = client.get(f"{BASE}/Observation/does-not-exist", patient=fnr())
    assert response.status_code == 404
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_correction_makes_a_new_version_and_keeps_the_old(client: ApiClient) -> None:
    patient = fnr()
    created = create(client, heart_rate(patient, value=80, identifier="hr-2")).get_json()
    corrected = heart_rate(patient, value=82, identifier="hr-2")
    corrected["status"] = "corrected"
    response = client.put(f"{BASE}/Observation/{created['id']}", json=corrected)
    assert response.status_code == 200
    assert response.get_json()["meta"]["versionId"] == "2"
    assert response.headers["ETag"] == 'W/"2"'
    assert client.get(f"{BASE}/Observation/{created['id']}").get_json()["valueQuantity"]["value"] == 82
    v1 = client.get(f"{BASE}/Observation/{created['id']}/_history/1")
    assert v1.get_json()["valueQuantity"]["value"] == 80
    history = client.get(f"{BASE}/Observation/{created['id']}/_history").get_json()
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_resending_the_same_correction_is_not_a_new_version(client: ApiClient) -> None:
    obs = heart_rate(fnr(), identifier="hr-3")
    created = create(client, obs).get_json()
    for _ in range(2):
        again = client.put(f"{BASE}/Observation/{created['id']}", json=obs)
        assert again.status_code == 200
        assert again.get_json()["meta"]["versionId"] == "1"


def test_if_match_guards_against_lost_updates(client: ApiClient) -> None:
    patient = fnr()
    created = create(client, heart_rate(patient, value=70)).get_json()
    path = f"{BASE}/Observation/{created['id']}"
    ok = client.put(path, json=heart_rate(patient, value=71), headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = client.put(path, json=heart_rate(patient, value=72), headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert client.get(path).get_json()["valueQuantity"]["value"] == 71


def test_update_of_unknown_id_does_not_create(client: ApiClient, services: Services) -> None:
    response = client.put(f"{BASE}/Observation/new-id", json=heart_rate(fnr()))
    assert response.status_code == 404
    assert count_rows(services) == 0


def test_a_correction_cannot_move_a_measurement_to_another_patient(client: ApiClient) -> None:
    created = create(client, heart_rate(fnr())).get_json()
    response = client.put(f"{BASE}/Observation/{created['id']}", json=heart_rate(fnr()))
    assert response.status_code == 422
    assert "Observation.subject.identifier" in expressions(response)


def test_same_business_identifier_is_stored_once(client: ApiClient, services: Services) -> None:
    obs = heart_rate(fnr(), identifier="dup-1")
    first = create(client, obs)
    second = create(client, obs)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.get_json()["id"] == second.get_json()["id"]
    assert count_rows(services) == 1


def test_if_none_exist_returns_the_existing_match(client: ApiClient, services: Services) -> None:
    patient = fnr()
    first = create(client, heart_rate(patient, identifier="ine-1")).get_json()
    again = create(
        client, heart_rate(patient, identifier="ine-1"), **{"If-None-Exist": "identifier=urn:test:ids|ine-1"}
    )
    assert again.status_code == 200
    assert again.get_json()["id"] == first["id"]
    # A match with different content is a correction sent as a create: 412, nothing stored (issue 8).
    changed = create(
        client, heart_rate(patient, identifier="ine-2"), **{"If-None-Exist": "identifier=urn:test:ids|ine-1"}
    )
    assert changed.status_code == 412
    assert count_rows(services) == 1
    fresh = create(
        client, heart_rate(patient, identifier="ine-3"), **{"If-None-Exist": "identifier=urn:test:ids|nope"}
    )
    assert fresh.status_code == 201


def test_wrong_content_type_is_415(client: ApiClient, services: Services) -> None:
    response = client.post(
        f"{BASE}/Observation", data="<Observation/>", headers={"Content-Type": "application/xml"}
    )
    assert response.status_code == 415
    assert count_rows(services) == 0


def test_malformed_json_is_400(client: ApiClient) -> None:
    response = client.post(
        f"{BASE}/Observation", data=b'{"resourceType": ', headers={"Content-Type": FHIR_JSON}
    )
    assert response.status_code == 400
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_unknown_tenant_is_404(client: ApiClient) -> None:
    response = client.post(
        "/974760673/fhir/Observation", json=heart_rate(fnr()), party=f"publisher-{TENANT_A}"
    )
    assert response.status_code == 404
    assert response.get_json()["resourceType"] == "OperationOutcome"
