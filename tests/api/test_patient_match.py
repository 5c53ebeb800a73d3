"""``Patient/$match`` and ``Patient/_search``: an opaque patient id that standard clients put in GET URLs,
bound to the requester, the attestation and the tenant, and expiring like a paging cursor."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sharing_api.audit.actions import AuditAction
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.sessions import RedisSessions
from tests.api_client import ApiClient
from tests.conftest import TENANT_A, TENANT_B
from tests.factories import LOINC, batch, fnr, heart_rate, spo2

BASE = f"/{TENANT_A}/fhir"
HEART_RATE = f"{LOINC}|8867-4"


def parameters(patient: str, system: str = FNR) -> dict[str, Any]:
    resource = {"resourceType": "Patient", "identifier": [{"system": system, "value": patient}]}
    return {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": resource}]}


def match(client: ApiClient, patient: str, base: str = BASE, **kwargs: Any) -> Any:
    return client.post(
        f"{base}/Patient/$match",
        data=orjson.dumps(parameters(patient)),
        headers={"Content-Type": "application/fhir+json"},
        patient=kwargs.pop("attested", patient),
        **kwargs,
    )


def matched_id(response: Any) -> str:
    assert response.status_code == 200, response.get_json()
    bundle = response.get_json()
    assert bundle["type"] == "searchset"
    [entry] = bundle["entry"]
    assert entry["resource"]["resourceType"] == "Patient"
    assert entry["search"]["mode"] == "match"
    return str(entry["resource"]["id"])


def _seed(client: ApiClient, patient: str) -> None:
    resources = [
        heart_rate(patient, value=60 + d, when=f"2026-11-{d:02d}T08:00:00+01:00") for d in range(1, 6)
    ]
    resources += [spo2(patient, value=95, when="2026-11-01T09:00:00+01:00")]
    assert client.post(BASE, json=batch(*resources)).status_code == 200


def observations(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_json()
    return [e["resource"] for e in response.get_json().get("entry", [])]


def test_match_then_get_by_subject_and_by_patient(client: ApiClient, services: Services) -> None:
    patient = fnr()
    _seed(client, patient)
    patient_id = matched_id(match(client, patient))
    assert patient not in patient_id
    url = f"{BASE}/Observation?subject=Patient/{patient_id}&code={HEART_RATE}"
    by_subject = observations(client.get(url, patient=patient))
    assert len(by_subject) == 5
    assert {o["subject"]["identifier"]["value"] for o in by_subject} == {patient}
    assert len(observations(client.get(f"{BASE}/Observation?patient={patient_id}", patient=patient))) == 6
    # Paging works with the opaque id, through cursors.
    first = client.get(f"{url}&_count=2", patient=patient).get_json()
    seen = [e["resource"]["id"] for e in first["entry"]]
    nxt = next(li["url"] for li in first["link"] if li["relation"] == "next")
    while nxt:
        page = client.get(nxt.removeprefix(client.public), patient=patient).get_json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        nxt = next((li["url"] for li in page["link"] if li["relation"] == "next"), None)
    assert sorted(seen) == sorted(o["id"] for o in by_subject)
    # The audit records the real patient for the match and for the GET search.
    services.audit_log.drain(TENANT_A)
    for action in (AuditAction.PATIENT_MATCH, AuditAction.OBSERVATION_SEARCH):
        found = services.audit_log.search(TENANT_A, patient=(FNR, patient), action=[action], count=10)
        assert found, action


def test_patient_search_by_identifier_in_a_form(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    response = client.post(
        f"{BASE}/Patient/_search", data={"identifier": f"{FNR}|{patient}"}, patient=patient
    )
    patient_id = matched_id(response)
    found = observations(client.get(f"{BASE}/Observation?subject=Patient/{patient_id}", patient=patient))
    assert len(found) == 6
    get = client.get(f"{BASE}/Patient?identifier={FNR}|{patient}", patient=patient)
    assert get.status_code in (400, 404, 405)  # never by GET: identity numbers stay out of URLs


def test_an_id_is_nobody_for_another_client_tenant_attestation_or_after_expiry(
    client: ApiClient, services: Services
) -> None:
    patient, other = fnr(), fnr()
    _seed(client, patient)
    client.post(f"/{TENANT_B}/fhir", json=batch(heart_rate(patient)))
    patient_id = matched_id(match(client, patient))
    url = f"{BASE}/Observation?subject=Patient/{patient_id}"
    assert len(observations(client.get(url, patient=patient))) == 6
    # Another client system with an attestation for the same patient: no such patient.
    assert observations(client.get(url, party="other-hospital", patient=patient)) == []
    # Another tenant, same client and patient: no such patient there either.
    elsewhere = f"/{TENANT_B}/fhir/Observation?subject=Patient/{patient_id}"
    assert observations(client.get(elsewhere, patient=patient)) == []
    # The same client under an attestation for another patient.
    assert observations(client.get(url, patient=other)) == []
    # Read as a Patient: for the same binding only; elsewhere as if it never existed.
    read = client.get(f"{BASE}/Patient/{patient_id}", patient=patient)
    assert read.status_code == 200
    assert read.get_json()["identifier"] == [{"system": FNR, "value": patient}]
    never = client.get(f"{BASE}/Patient/made-up", patient=patient)
    other_client = client.get(f"{BASE}/Patient/{patient_id}", party="other-hospital", patient=patient)
    assert never.status_code == other_client.status_code == 404

    def shape(response: Any) -> list[tuple[str, list[str]]]:
        return [(i["code"], i["expression"]) for i in response.get_json()["issue"]]

    assert shape(never) == shape(other_client) == [("not-found", ["Patient.id"])]
    # A made-up id, a paging cursor used as an id.
    assert observations(client.get(f"{BASE}/Observation?patient=nonsense", patient=patient)) == []
    # Expired: the session store forgets it as it forgets a cursor (TTL).
    assert isinstance(services.sessions, RedisSessions)
    services.sessions.client.delete(services.sessions.prefix + patient_id)
    assert observations(client.get(url, patient=patient)) == []


def test_match_needs_the_attested_patient_and_refuses_bad_input(client: ApiClient) -> None:
    patient = fnr()
    wrong = match(client, patient, attested=fnr())
    assert wrong.status_code == 403
    assert wrong.get_json()["resourceType"] == "OperationOutcome"
    bad = client.post(
        f"{BASE}/Patient/$match",
        data=b'{"resourceType": "Patient"}',
        headers={"Content-Type": "application/fhir+json"},
        patient=patient,
    )
    assert bad.status_code == 400
    form = client.post(
        f"{BASE}/Patient/_search", data={"identifier:not": f"{FNR}|{patient}"}, patient=patient
    )
    assert form.status_code == 400
    assert form.get_json()["issue"][0]["expression"] == ["identifier:not"]


@pytest.mark.parametrize("name", ["subject", "patient"])
def test_a_reference_needs_a_single_id(client: ApiClient, name: str) -> None:
    patient = fnr()
    response = client.get(f"{BASE}/Observation?{name}=Patient/a,Patient/b", patient=patient)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == [name]
