"""Limits on body size, Bundle entries and JSON depth (RES-01, RES-02): refused, nothing stored."""

from __future__ import annotations

import orjson

from sharing_api.services import Services
from tests.api.test_examples import count_rows
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import FHIR_JSON, batch, fnr, heart_rate, search_form

BASE = f"/{TENANT_A}/fhir"


def test_body_over_the_limit_is_413(client: ApiClient, services: Services) -> None:
    obs = heart_rate(fnr())
    obs["note"] = [{"text": "x" * (services.settings.max_body_bytes + 10)}]
    response = client.post(f"{BASE}/Observation", data=orjson.dumps(obs), headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 413
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert count_rows(services) == 0


def test_too_many_bundle_entries_is_400(client: ApiClient, services: Services) -> None:
    patient = fnr()
    limit = services.settings.max_bundle_entries
    bundle = batch(*[heart_rate(patient, identifier=f"many-{i}") for i in range(limit + 1)])
    response = client.post(BASE, json=bundle)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["Bundle.entry"]
    assert count_rows(services) == 0


def test_deep_json_is_400_not_a_crash(client: ApiClient, services: Services) -> None:
    for depth in (100, 10_000):
        body = b'{"resourceType":"Observation","extension":' + b"[" * depth + b"]" * depth + b"}"
        response = client.post(f"{BASE}/Observation", data=body, headers={"Content-Type": FHIR_JSON})
        assert response.status_code == 400, depth
        assert response.get_json()["resourceType"] == "OperationOutcome"
    assert count_rows(services) == 0


def test_count_is_capped(client: ApiClient, services: Services) -> None:
    response = client.post(f"{BASE}/Observation/_search", data=search_form(fnr(), _count="1000000"))
    assert response.status_code == 200
    self_link = response.get_json()["link"][0]
    assert self_link["relation"] == "self"
