"""A correction sent as a create is refused, never lost (issue 8); an ongoing period is found (issue 8).

A ``POST`` whose business identifier is stored with the same content is idempotent (200, the stored
resource). With different content the answer is 409 (412 under ``If-None-Exist``) with an
OperationOutcome that says to ``PUT`` the correction, and nothing changes; the same rule holds for
each entry of a batch and for a transaction as a whole.
"""

from __future__ import annotations

from typing import Any

from sharing_api.services import Services
from tests.api.test_examples import count_rows
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import FHIR_JSON, batch, fnr, heart_rate, search_form

BASE = f"/{TENANT_A}/fhir"


def _create(client: ApiClient, resource: dict[str, Any], **headers: str) -> Any:
    return client.post(f"{BASE}/Observation", json=resource, headers={"Content-Type": FHIR_JSON, **headers})


def _value(client: ApiClient, obs_id: str) -> Any:
    body = client.get(f"{BASE}/Observation/{obs_id}").get_json()
    return body["valueQuantity"]["value"], body["meta"]["versionId"]


def _says_put(outcome: dict[str, Any], expression: str) -> None:
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert "PUT" in issue["diagnostics"]
    assert issue["expression"] == [expression]


def test_same_identifier_same_content_is_idempotent(client: ApiClient, services: Services) -> None:
    obs = heart_rate(fnr(), value=70, identifier="corr-same")
    first, again = _create(client, obs), _create(client, obs)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json() == first.get_json()
    assert count_rows(services) == 1


def test_same_identifier_different_content_is_409_and_changes_nothing(
    client: ApiClient, services: Services
) -> None:
    patient = fnr()
    first = _create(client, heart_rate(patient, value=70, identifier="corr-1")).get_json()
    changed = _create(client, heart_rate(patient, value=75, identifier="corr-1"))
    assert changed.status_code == 409
    _says_put(changed.get_json(), "Observation.identifier")
    assert first["id"] in changed.get_json()["issue"][0]["diagnostics"]
    assert _value(client, first["id"]) == (70, "1")
    assert count_rows(services) == 1


def test_with_if_none_exist_a_changed_create_is_412(client: ApiClient, services: Services) -> None:
    patient = fnr()
    first = _create(client, heart_rate(patient, value=70, identifier="corr-2")).get_json()
    changed = _create(
        client,
        heart_rate(patient, value=80, identifier="corr-2"),
        **{"If-None-Exist": "identifier=urn:test:ids|corr-2"},
    )
    assert changed.status_code == 412
    _says_put(changed.get_json(), "Observation.identifier")
    assert _value(client, first["id"]) == (70, "1")


def test_in_a_batch_the_changed_entry_fails_alone(client: ApiClient, services: Services) -> None:
    patient = fnr()
    first = _create(client, heart_rate(patient, value=70, identifier="corr-b1")).get_json()
    bundle = batch(
        heart_rate(patient, value=70, identifier="corr-b1"),  # same: 200
        heart_rate(patient, value=99, identifier="corr-b1", when="2026-11-20T08:00:00+01:00"),  # changed
        heart_rate(patient, value=71, identifier="corr-b2"),  # new: 201
    )
    body = client.post(BASE, json=bundle).get_json()
    statuses = [e["response"]["status"][:3] for e in body["entry"]]
    assert statuses == ["200", "409", "201"]
    _says_put(body["entry"][1]["response"]["outcome"], "Bundle.entry[1].resource.identifier")
    assert _value(client, first["id"]) == (70, "1")
    assert count_rows(services) == 2


def test_two_entries_of_one_batch_with_one_identifier_and_different_content(
    client: ApiClient, services: Services
) -> None:
    patient = fnr()
    bundle = batch(
        heart_rate(patient, value=60, identifier="corr-dup"),
        heart_rate(patient, value=61, identifier="corr-dup"),
        heart_rate(patient, value=60, identifier="corr-dup"),
    )
    body = client.post(BASE, json=bundle).get_json()
    assert [e["response"]["status"][:3] for e in body["entry"]] == ["201", "409", "200"]
    assert count_rows(services) == 1


def test_in_a_transaction_a_changed_entry_refuses_the_whole(client: ApiClient, services: Services) -> None:
    patient = fnr()
    first = _create(client, heart_rate(patient, value=70, identifier="corr-t1")).get_json()
    bundle = batch(
        heart_rate(patient, value=71, identifier="corr-t2"),
        heart_rate(patient, value=90, identifier="corr-t1"),
        kind="transaction",
    )
    refused = client.post(BASE, json=bundle)
    assert refused.status_code == 409
    _says_put(refused.get_json(), "Bundle.entry[1].resource.identifier")
    assert _value(client, first["id"]) == (70, "1")
    assert count_rows(services) == 1  # corr-t2 was not stored either


def test_an_ongoing_period_is_found_by_date_gt(client: ApiClient) -> None:
    """An ``effectivePeriod`` without ``end`` is ongoing (FHIR R4 Period), so it ends after any date."""
    patient = fnr()
    obs = heart_rate(patient)
    del obs["effectiveDateTime"]
    obs["effectivePeriod"] = {"start": "2026-11-01T08:00:00+01:00"}
    assert _create(client, obs).status_code == 201
    for prefix, expected in (
        ("gt2026-11-10", 1),
        ("ge2026-11-10", 1),
        ("lt2026-10-30", 0),
        ("gt2099-01-01", 1),
    ):
        form = search_form(patient, code="http://loinc.org|8867-4", date=prefix)
        body = client.post(f"{BASE}/Observation/_search", data=form).get_json()
        assert body["total"] == expected, prefix
