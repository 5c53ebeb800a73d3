"""Standard interactions a FHIR client library relies on (issue 8): ``Prefer: return``, conditional read
with ``If-None-Match``, JSON only (``_format``/``Accept``: 406 otherwise), ``fhirVersion`` 4.0 only, and
``status=unknown`` (R4 allows it; no VKP profile forbids it)."""

from __future__ import annotations

import pytest

from sharing_api.fhir.formats import FHIR_VERSION_PARAM
from sharing_api.services import Services
from tests.api.test_examples import count_rows
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate, search_form

BASE = f"/{TENANT_A}/fhir"


def test_prefer_return_minimal_sends_no_body(client: ApiClient, services: Services) -> None:
    response = client.post(
        f"{BASE}/Observation", json=heart_rate(fnr()), headers={"Prefer": "return=minimal"}
    )
    assert response.status_code == 201
    assert response.get_data() == b""
    assert response.headers["ETag"] == 'W/"1"'
    assert "/Observation/" in response.headers["Location"]
    assert count_rows(services) == 1


def test_prefer_return_operation_outcome_on_update(client: ApiClient) -> None:
    patient = fnr()
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient, value=70)).get_json()
    body = {**heart_rate(patient, value=75), "id": created["id"]}
    response = client.put(
        f"{BASE}/Observation/{created['id']}", json=body, headers={"Prefer": "return=OperationOutcome"}
    )
    assert response.status_code == 200
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "information"
    assert response.headers["ETag"] == 'W/"2"'


def test_prefer_return_representation_is_the_resource(client: ApiClient) -> None:
    response = client.post(
        f"{BASE}/Observation", json=heart_rate(fnr()), headers={"Prefer": "return=representation"}
    )
    assert response.status_code == 201
    assert response.get_json()["resourceType"] == "Observation"


def test_prefer_return_of_an_unknown_kind_is_refused(client: ApiClient, services: Services) -> None:
    response = client.post(f"{BASE}/Observation", json=heart_rate(fnr()), headers={"Prefer": "return=all"})
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["Prefer"]


def test_read_with_if_none_match_of_the_current_version_is_304(client: ApiClient) -> None:
    patient = fnr()
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient)).get_json()
    path = f"{BASE}/Observation/{created['id']}"
    not_modified = client.get(path, headers={"If-None-Match": 'W/"1"'})
    assert not_modified.status_code == 304
    assert not_modified.get_data() == b""
    assert not_modified.headers["ETag"] == 'W/"1"'
    stale = client.get(path, headers={"If-None-Match": 'W/"0"'})
    assert stale.status_code == 200
    assert stale.get_json()["id"] == created["id"]


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Accept": "application/fhir+xml"}, ""),
        ({"Accept": "text/html"}, ""),
        ({"Accept": "application/json; q=0, application/xml"}, ""),
        ({}, "?_format=xml"),
        ({}, "?_format=application/fhir%2Bxml"),
        ({"Accept": "application/fhir+json; fhirVersion=3.0"}, ""),
        ({}, "?_format=application/fhir%2Bjson;fhirVersion=5.0"),
        ({}, "?_format=json,xml"),  # found by the fuzz run: a list once raised (500)
        ({}, "?_format="),
    ],
)
def test_other_formats_and_fhir_versions_get_406(
    client: ApiClient, headers: dict[str, str], query: str
) -> None:
    patient = fnr()
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient)).get_json()
    response = client.get(f"{BASE}/Observation/{created['id']}{query}", headers=headers)
    assert response.status_code == 406
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == ["_format" if query else "Accept"]


def test_a_refused_format_stays_refused_after_an_accepted_one(client: ApiClient) -> None:
    """Acceptable format combinations are remembered; a refusal never is, nor taken for its neighbour."""
    created = client.post(f"{BASE}/Observation", json=heart_rate(fnr())).get_json()
    path = f"{BASE}/Observation/{created['id']}"
    answers = [
        client.get(path, headers={"Accept": accept}).status_code
        for accept in ("text/html", "application/fhir+json", "text/html", "application/fhir+json")
    ]
    assert answers == [406, 200, 406, 200]


@pytest.mark.parametrize(
    "accept",
    [
        "application/fhir+json",
        f"application/fhir+json; fhirVersion={FHIR_VERSION_PARAM}",
        "application/json",
        "*/*",
        "application/xml;q=0.9, application/fhir+json",
    ],
)
def test_json_in_any_of_its_spellings_is_served(client: ApiClient, accept: str) -> None:
    created = client.post(f"{BASE}/Observation", json=heart_rate(fnr())).get_json()
    response = client.get(f"{BASE}/Observation/{created['id']}?_format=json", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.get_json()["id"] == created["id"]


def test_format_in_a_search_form_is_negotiated_too(client: ApiClient) -> None:
    patient = fnr()
    response = client.post(f"{BASE}/Observation/_search", data={**search_form(patient), "_format": "xml"})
    assert response.status_code == 406


def test_a_body_of_another_fhir_version_is_415(client: ApiClient, services: Services) -> None:
    response = client.post(
        f"{BASE}/Observation",
        data=heart_rate_json(),
        headers={"Content-Type": "application/fhir+json; fhirVersion=5.0"},
    )
    assert response.status_code == 415
    assert count_rows(services) == 0


def heart_rate_json() -> bytes:
    import orjson

    return orjson.dumps(heart_rate(fnr()))


def test_status_unknown_is_accepted(client: ApiClient) -> None:
    response = client.post(f"{BASE}/Observation", json={**heart_rate(fnr()), "status": "unknown"})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["status"] == "unknown"
