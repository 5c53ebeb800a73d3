"""Tenants are logically separated: from tenant B's base URL, nothing of tenant A shows (issue #2)."""

from __future__ import annotations

from tests.api_client import ApiClient
from tests.conftest import TENANT_A, TENANT_B
from tests.factories import batch, fnr, heart_rate, search_form

A, B = f"/{TENANT_A}/fhir", f"/{TENANT_B}/fhir"
PUBLIC = "https://dho.example.test"


def test_every_endpoint_from_tenant_b_shows_nothing_of_tenant_a(client: ApiClient) -> None:
    patient = fnr()
    created = client.post(f"{A}/Observation", json=heart_rate(patient, identifier="shared-id")).get_json()
    obs_id = created["id"]
    client.post(A, json=batch(*[heart_rate(patient, identifier=f"a-{i}") for i in range(3)]))
    first_page = client.post(f"{A}/Observation/_search", data=search_form(patient, _count="1")).get_json()
    next_url = next(li["url"] for li in first_page["link"] if li["relation"] == "next").removeprefix(PUBLIC)

    assert client.get(f"{B}/Observation/{obs_id}").status_code == 404
    assert client.get(f"{B}/Observation/{obs_id}/_history").status_code == 404
    assert client.get(f"{B}/Observation/{obs_id}/_history/1").status_code == 404
    search = client.post(f"{B}/Observation/_search", data=search_form(patient)).get_json()
    assert search["total"] == 0
    assert "entry" not in search
    assert (
        client.post(f"{B}/Observation/_search", data=search_form(patient, _summary="count")).get_json()[
            "total"
        ]
        == 0
    )
    lastn = client.post(f"{B}/Observation/$lastn", data=search_form(patient)).get_json()
    assert "entry" not in lastn
    # A's cursor presented at B's base URL is an unknown cursor there.
    cursor = next_url.split("_cursor=", 1)[1]
    assert client.get(f"{B}/Observation?_cursor={cursor}").status_code == 410
    # Writes through B cannot reach A's rows.
    elsewhere = {**heart_rate(patient), "id": obs_id}
    assert client.put(f"{B}/Observation/{obs_id}", json=elsewhere).status_code == 404
    bundle = batch(heart_rate(patient), method="PUT")
    bundle["entry"][0]["request"]["url"] = f"Observation/{obs_id}"
    entry = client.post(B, json=bundle).get_json()["entry"][0]
    assert entry["response"]["status"].startswith("404")
    # The same business identifier is a separate record per tenant, not a pointer to A's row.
    b_created = client.post(f"{B}/Observation", json=heart_rate(patient, identifier="shared-id"))
    assert b_created.status_code == 201
    assert b_created.get_json()["id"] != obs_id
    ine = client.post(
        f"{B}/Observation",
        json=heart_rate(patient, identifier="x"),
        headers={"If-None-Exist": "identifier=urn:test:ids|a-0"},
    )
    assert ine.status_code == 201
    assert client.get(f"{A}/Observation/{obs_id}").get_json() == created


def test_tenant_b_cannot_publish_as_tenant_a(client: ApiClient) -> None:
    response = client.post(f"{B}/Observation", json=heart_rate(fnr(), tenant=TENANT_A))
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["Observation.performer[0].identifier.value"]
