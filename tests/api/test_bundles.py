"""Batch (per-entry outcome) and transaction (all or nothing) Bundles."""

from __future__ import annotations

from sharing_api.services import Services
from tests.api.test_examples import count_rows, expressions
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import batch, fnr, heart_rate, search_form

BASE = f"/{TENANT_A}/fhir"


def test_batch_reports_per_entry_and_stores_the_good_ones(client: ApiClient, services: Services) -> None:
    patient = fnr()
    bad = heart_rate(patient, identifier="b-2")
    bad["valueQuantity"]["code"] = "kg"
    response = client.post(
        BASE, json=batch(heart_rate(patient, identifier="b-1"), bad, heart_rate(patient, identifier="b-3"))
    )
    assert response.status_code == 200
    entries = response.get_json()["entry"]
    assert [e["fullUrl"] for e in entries] == ["urn:uuid:entry-0", "urn:uuid:entry-1", "urn:uuid:entry-2"]
    assert [e["response"]["status"][:3] for e in entries] == ["201", "400", "201"]
    outcome = entries[1]["response"]["outcome"]
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[1].resource.valueQuantity.code"]
    assert entries[0]["response"]["location"].endswith("/_history/1")
    assert count_rows(services) == 2


def test_batch_resent_is_idempotent(client: ApiClient, services: Services) -> None:
    patient = fnr()
    bundle = batch(*[heart_rate(patient, identifier=f"r-{i}") for i in range(5)])
    first = client.post(BASE, json=bundle).get_json()
    second = client.post(BASE, json=bundle).get_json()
    assert {e["response"]["status"][:3] for e in first["entry"]} == {"201"}
    assert {e["response"]["status"][:3] for e in second["entry"]} == {"200"}
    assert [e["response"]["location"] for e in first["entry"]] == [
        e["response"]["location"] for e in second["entry"]
    ]
    assert count_rows(services) == 5


def test_duplicate_full_url_refuses_the_bundle(client: ApiClient, services: Services) -> None:
    bundle = batch(heart_rate(fnr(), identifier="d-1"), heart_rate(fnr(), identifier="d-2"))
    bundle["entry"][1]["fullUrl"] = bundle["entry"][0]["fullUrl"]
    response = client.post(BASE, json=bundle)
    assert response.status_code == 400
    assert "Bundle.entry[1].fullUrl" in expressions(response)
    assert count_rows(services) == 0


def test_missing_full_url_or_bad_method_refuses_the_bundle(client: ApiClient, services: Services) -> None:
    bundle = batch(heart_rate(fnr(), identifier="m-1"), heart_rate(fnr(), identifier="m-2"))
    del bundle["entry"][0]["fullUrl"]
    bundle["entry"][1]["request"]["method"] = "DELETE"
    response = client.post(BASE, json=bundle)
    assert response.status_code == 400
    assert {"Bundle.entry[0].fullUrl", "Bundle.entry[1].request.method"} <= set(expressions(response))
    assert count_rows(services) == 0


def test_put_in_a_batch_corrects_by_business_identifier(client: ApiClient, services: Services) -> None:
    patient = fnr()
    client.post(BASE, json=batch(heart_rate(patient, value=60, identifier="p-1")))
    response = client.post(
        BASE, json=batch(heart_rate(patient, value=65, identifier="p-1"), method="PUT")
    ).get_json()
    assert response["entry"][0]["response"]["etag"] == 'W/"2"'
    search = client.post(
        f"{BASE}/Observation/_search", data=search_form(patient, identifier="urn:test:ids|p-1")
    ).get_json()
    assert [e["resource"]["valueQuantity"]["value"] for e in search["entry"]] == [65]
    assert count_rows(services) == 1


def test_put_by_id_in_a_batch(client: ApiClient) -> None:
    patient = fnr()
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient, value=60)).get_json()
    bundle = batch(heart_rate(patient, value=61), method="PUT")
    bundle["entry"][0]["request"]["url"] = f"Observation/{created['id']}"
    entry = client.post(BASE, json=bundle).get_json()["entry"][0]
    assert entry["response"]["status"].startswith("200")
    assert client.get(f"{BASE}/Observation/{created['id']}").get_json()["valueQuantity"]["value"] == 61


def test_transaction_with_one_invalid_entry_stores_nothing(client: ApiClient, services: Services) -> None:
    patient = fnr()
    bad = heart_rate(patient, identifier="t-2")
    bad["subject"]["identifier"]["value"] = "12345678901"
    response = client.post(BASE, json=batch(heart_rate(patient, identifier="t-1"), bad, kind="transaction"))
    assert response.status_code == 400
    assert "Bundle.entry[1].resource.subject.identifier.value" in expressions(response)
    assert count_rows(services) == 0


def test_transaction_with_a_conflict_rolls_back_everything(client: ApiClient, services: Services) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient, identifier="t-own"))
    other_patient = heart_rate(
        fnr(), identifier="t-own"
    )  # same identifier, another patient: a correction refused
    bundle = batch(heart_rate(patient, identifier="t-new"), other_patient, kind="transaction", method="PUT")
    response = client.post(BASE, json=bundle)
    assert response.status_code == 422
    assert "Bundle.entry[1].resource.subject.identifier" in expressions(response)
    assert count_rows(services) == 1


def test_transaction_response(client: ApiClient, services: Services) -> None:
    patient = fnr()
    response = client.post(
        BASE,
        json=batch(
            heart_rate(patient, identifier="ok-1"), heart_rate(patient, identifier="ok-2"), kind="transaction"
        ),
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in body["entry"]] == ["201", "201"]
    assert count_rows(services) == 2
