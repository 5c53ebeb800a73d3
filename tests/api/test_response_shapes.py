"""Every response shape the FHIR API sends is R4 JSON that strict parsers accept (issue 8): checked
with FHIR.js (R4 base definitions), fhir.resources (R4B) and our own Bundle invariants
(``tests/fhir_validation.py``): no empty arrays, history entries with ``request`` and ``response``."""

from __future__ import annotations

from typing import Any

import pytest

from sharing_api.services import Services
from tests.api_client import ApiClient, Party
from tests.conftest import TENANT_A
from tests.factories import batch, fnr, heart_rate, search_form
from tests.fhir_validation import assert_valid_fhir, bundle_problems, fhir_problems, json_problems

BASE = f"/{TENANT_A}/fhir"


def _json(response: Any) -> Any:
    assert response.headers["Content-Type"].startswith("application/fhir+json"), response.headers
    return response.get_json()


def test_the_helper_catches_what_the_tools_skip() -> None:
    """The checks of our own fail on the shapes the API used to send (so a passing test means something)."""
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": [], "link": []}
    assert json_problems(empty) == ["$.entry is an empty array", "$.link is an empty array"]
    history = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"fullUrl": "https://x/Observation/1", "resource": {"resourceType": "Basic"}}],
    }
    assert [p.split(":")[0] for p in bundle_problems(history)] == ["bdl-3", "bdl-4"]
    assert any("FHIR.js" in p for p in fhir_problems({"resourceType": "Observation", "status": "bogus"}))


def test_observation_create_read_and_history_shapes(client: ApiClient) -> None:
    patient = fnr()
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient, value=70, identifier="s-1"))
    assert created.status_code == 201
    assert_valid_fhir(_json(created))
    obs_id = created.get_json()["id"]
    corrected = {**heart_rate(patient, value=71, identifier="s-1"), "id": obs_id, "status": "corrected"}
    assert client.put(f"{BASE}/Observation/{obs_id}", json=corrected).status_code == 200
    assert_valid_fhir(_json(client.get(f"{BASE}/Observation/{obs_id}")))
    assert_valid_fhir(_json(client.get(f"{BASE}/Observation/{obs_id}/_history/1")))
    history = _json(client.get(f"{BASE}/Observation/{obs_id}/_history"))
    assert_valid_fhir(history)
    assert [(e["request"]["method"], e["response"]["etag"]) for e in history["entry"]] == [
        ("PUT", 'W/"2"'),
        ("POST", 'W/"1"'),
    ]


def test_search_shapes_with_and_without_results(client: ApiClient) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient))
    found = _json(client.post(f"{BASE}/Observation/_search", data=search_form(patient)))
    assert_valid_fhir(found)
    assert found["entry"]
    nothing = _json(client.post(f"{BASE}/Observation/_search", data=search_form(fnr())))
    assert_valid_fhir(nothing)
    assert "entry" not in nothing
    counted = _json(client.post(f"{BASE}/Observation/_search", data=search_form(patient, _summary="count")))
    assert_valid_fhir(counted)
    lastn = _json(client.post(f"{BASE}/Observation/$lastn", data=search_form(patient)))
    assert_valid_fhir(lastn)


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_bundle_response_shapes(client: ApiClient, kind: str) -> None:
    patient = fnr()
    response = client.post(
        BASE, json=batch(heart_rate(patient, value=60), heart_rate(patient, value=61), kind=kind)
    )
    assert response.status_code == 200
    assert_valid_fhir(_json(response))
    empty = client.post(BASE, json={"resourceType": "Bundle", "type": kind})
    assert empty.status_code == 200
    assert_valid_fhir(_json(empty))


def test_error_and_capability_shapes(client: ApiClient) -> None:
    assert_valid_fhir(_json(client.get(f"{BASE}/metadata", auth=False)))
    missing = client.get(f"{BASE}/Observation/nope", patient=fnr())
    assert missing.status_code == 404
    assert_valid_fhir(_json(missing))
    invalid = client.post(f"{BASE}/Observation", json={"resourceType": "Observation"})
    assert invalid.status_code == 400
    assert_valid_fhir(_json(invalid))
    unauthenticated = client.get(f"{BASE}/Observation/x", auth=False)
    assert unauthenticated.status_code == 401
    assert_valid_fhir(_json(unauthenticated))
    outcome = client.post(
        f"{BASE}/Observation", json=heart_rate(fnr()), headers={"Prefer": "return=OperationOutcome"}
    )
    assert_valid_fhir(_json(outcome))


def test_audit_and_consent_search_shapes(client: ApiClient, services: Services) -> None:
    client.add_party(Party("auditor", TENANT_A, frozenset({"dho-share/audit.read"}), hpr=None))
    client.add_party(Party("controller", TENANT_A, frozenset({"dho-share/consent.read"}), hpr=None))
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient))
    services.audit_log.drain(TENANT_A)
    events = client.post(f"{BASE}/AuditEvent/_search", data={"_count": "5"}, party="auditor")
    assert events.status_code == 200
    assert_valid_fhir(_json(events))
    directives = client.post(f"{BASE}/Consent/_search", data=search_form(patient), party="controller")
    assert directives.status_code == 200
    assert_valid_fhir(_json(directives))
