"""Write semantics a strict FHIR client relies on (issue 8): updates carry their id, ETags are ASCII
digits, and security labels are the server's alone (refused, named and audited)."""

from __future__ import annotations

from typing import Any

import pytest

from sharing_api.audit.actions import AuditAction
from sharing_api.fhir.validation import SERVER_TAG_SYSTEMS
from sharing_api.services import Services
from tests.api.test_examples import count_rows
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate

BASE = f"/{TENANT_A}/fhir"


def _created(client: ApiClient) -> tuple[dict[str, Any], str]:
    patient = fnr()
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient, value=70)).get_json()
    return created, patient


def _expressions(response: Any) -> list[str]:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return [x for issue in body["issue"] for x in issue.get("expression", [])]


def test_put_without_id_is_400_and_changes_nothing(client: ApiClient) -> None:
    created, patient = _created(client)
    response = client.put(f"{BASE}/Observation/{created['id']}", json=heart_rate(patient, value=99))
    assert response.status_code == 400
    assert _expressions(response) == ["Observation.id"]
    current = client.get(f"{BASE}/Observation/{created['id']}").get_json()
    assert current["meta"]["versionId"] == "1"
    assert current["valueQuantity"]["value"] == 70


def test_put_with_another_id_is_400(client: ApiClient) -> None:
    created, patient = _created(client)
    body = {**heart_rate(patient, value=99), "id": "someone-else"}
    response = client.put(f"{BASE}/Observation/{created['id']}", json=body)
    assert response.status_code == 400
    assert _expressions(response) == ["Observation.id"]
    assert client.get(f"{BASE}/Observation/{created['id']}").get_json()["meta"]["versionId"] == "1"


@pytest.mark.parametrize("etag", ['W/"²"', 'W/"١"', 'W/"1x"', "W/", 'W/"99999999999999999999999"'])
def test_if_match_that_is_not_an_ascii_version_is_400_never_500(client: ApiClient, etag: str) -> None:
    created, patient = _created(client)
    body = {**heart_rate(patient, value=71), "id": created["id"]}
    response = client.put(f"{BASE}/Observation/{created['id']}", json=body, headers={"If-Match": etag})
    assert response.status_code == 400
    assert _expressions(response) == ["If-Match"]


def _refusals(services: Services) -> list[str]:
    services.audit_log.drain(TENANT_A)
    found = services.audit_log.search(TENANT_A, action=AuditAction.REQUEST_REFUSED, count=100)
    return [str(e.resource().get("outcomeDesc", "")) for e in found]


LABELS: list[tuple[dict[str, Any], str]] = [
    (
        {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]},
        "meta.security",
    ),
    ({"tag": [{"system": SERVER_TAG_SYSTEMS[0], "code": "SUBSETTED"}]}, "meta.tag[0]"),
]


@pytest.mark.parametrize(("meta", "element"), LABELS)
def test_client_security_labels_are_refused_named_and_audited(
    client: ApiClient, services: Services, meta: dict[str, Any], element: str
) -> None:
    before = len(_refusals(services))
    response = client.post(f"{BASE}/Observation", json={**heart_rate(fnr()), "meta": meta})
    assert response.status_code == 400
    assert _expressions(response) == [f"Observation.{element}"]
    assert count_rows(services) == 0
    refusals = _refusals(services)
    assert len(refusals) == before + 1
    assert element.split("[")[0] in refusals[-1]


def test_security_labels_inside_a_bundle_are_refused_too(client: ApiClient, services: Services) -> None:
    resource = {**heart_rate(fnr()), "meta": LABELS[0][0]}
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": "urn:uuid:5a8a4ee6-1c43-4d29-9a33-7e3c9b4f7d10",
                "resource": resource,
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    response = client.post(BASE, json=bundle)
    assert response.status_code == 400
    assert _expressions(response) == ["Bundle.entry[0].resource.meta.security"]
    assert count_rows(services) == 0
    assert _refusals(services)


def test_a_client_tag_of_its_own_system_is_kept(client: ApiClient) -> None:
    tag = {"system": "https://vendor.example/tags", "code": "home"}
    response = client.post(f"{BASE}/Observation", json={**heart_rate(fnr()), "meta": {"tag": [tag]}})
    assert response.status_code == 201
    assert response.get_json()["meta"]["tag"] == [tag]
