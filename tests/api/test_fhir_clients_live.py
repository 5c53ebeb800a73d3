"""Standard FHIR clients against gunicorn over HTTP: fhirpy and fhirclient search, page and read.

Both search with ``GET``, and a national identity number never goes in a URL, so each first asks
``POST Patient/$match`` (the identifier in a ``Parameters`` body) for an opaque Patient id and then
uses ``GET Observation?subject=Patient/<id>``. Neither library speaks DPoP; both send their HTTP through
``requests``, so the DPoP-bound token of requests-oauth2client (a ``requests`` auth handler that adds
``Authorization: DPoP`` and a fresh proof per request) is plugged in: ``requests_config={"auth": ...}``
for fhirpy, ``server.session.auth`` for fhirclient.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhirclient import client as fhirclient
from fhirclient.models.observation import Observation
from fhirpy import SyncFHIRClient
from jwskate import Jwk
from requests_oauth2client import DPoPToken

from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, READ, ApiClient
from tests.conftest import TENANT_A
from tests.factories import LOINC, batch, fnr, heart_rate, spo2
from tests.live_server import live_server
from tests.security.helpers import server_env
from tests.security.test_third_party_client import CLIENT_ID, oauth_client

pytestmark = pytest.mark.slow
HEART_RATE = f"{LOINC}|8867-4"


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with live_server(server_env(settings), workers=2, log=tmp_path / "server.log") as base:
        yield base


@pytest.fixture
def key(services: Services) -> Jwk:
    jwk = Jwk.generate(alg="ES256", kid=f"std-{uuid.uuid4().hex[:8]}")
    services.clients.add(
        CLIENT_ID,
        orgnr=HOSPITAL,
        jwks={"keys": [jwk.public_jwk().to_dict()]},
        scopes=frozenset({READ}),
        point_of_care=HOSPITAL_UNIT,
    )
    return jwk


def seeded(client: ApiClient) -> str:
    patient = fnr()
    resources = [
        heart_rate(patient, value=60 + d, when=f"2026-11-{d:02d}T08:00:00+01:00") for d in range(1, 6)
    ]
    resources.append(spo2(patient, value=96))
    assert client.post(f"/{TENANT_A}/fhir", json=batch(*resources)).status_code == 200
    return patient


def token(server: str, key: Jwk, patient: str) -> DPoPToken:
    issued = oauth_client(server, key, patient).client_credentials(scope=READ)
    assert isinstance(issued, DPoPToken)
    return issued


def match_parameters(patient: str) -> dict[str, Any]:
    resource = {"resourceType": "Patient", "identifier": [{"system": FNR, "value": patient}]}
    return {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": resource}]}


def test_fhirpy_matches_searches_pages_and_reads(client: ApiClient, server: str, key: Jwk) -> None:
    patient = seeded(client)
    fhir = SyncFHIRClient(
        f"{server}/{TENANT_A}/fhir", requests_config={"auth": token(server, key, patient), "timeout": 10}
    )
    bundle = fhir.execute("Patient/$match", method="post", data=match_parameters(patient))
    [entry] = bundle["entry"]
    patient_id = entry["resource"]["id"]
    assert patient not in patient_id
    search = fhir.resources("Observation").search(subject=f"Patient/{patient_id}", code=HEART_RATE)
    found = search.limit(2).fetch_all()  # three pages, following the opaque next links
    assert len(found) == 5
    assert {o["code"]["coding"][0]["code"] for o in found} == {"8867-4"}
    assert len(fhir.resources("Observation").search(patient=patient_id).fetch_all()) == 6
    read = fhir.reference("Observation", found[0]["id"]).to_resource()
    assert read["valueQuantity"] == found[0]["valueQuantity"]
    assert fhir.reference("Patient", patient_id).to_resource()["identifier"][0]["value"] == patient


def test_fhirclient_matches_searches_pages_and_reads(client: ApiClient, server: str, key: Jwk) -> None:
    patient = seeded(client)
    smart = fhirclient.FHIRClient(
        settings={"app_id": "dho-share-test", "api_base": f"{server}/{TENANT_A}/fhir"}
    )
    smart.server.session.auth = token(server, key, patient)
    response = smart.server.post_json("Patient/$match", match_parameters(patient))
    patient_id = response.json()["entry"][0]["resource"]["id"]
    search = Observation.where(struct={"subject": f"Patient/{patient_id}", "code": HEART_RATE, "_count": "2"})
    pages = list(search.perform_iter(smart.server))
    assert len(pages) == 3
    found = [e.resource for page in pages for e in page.entry or []]
    assert len(found) == 5
    assert {o.code.coding[0].code for o in found} == {"8867-4"}
    read = Observation.read(found[0].id, smart.server)
    assert read.valueQuantity.value == found[0].valueQuantity.value
