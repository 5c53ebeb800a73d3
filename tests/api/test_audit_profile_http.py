"""What a read and a write leave in the audit log, over HTTP: one event per request (issue 12) shaped to
IHE BALP and HL7 Norway's trust-framework IG (docs/audit-profile.md).

A hospital doctor's token carries an attestation with the practitioner's authorisation (Volven 9060), a
decision reference with its description and a time of attestation (``toa``); the search it makes must
come back, from the auditor's AuditEvent search, as exactly one event carrying all of that, the token's
``jti`` in the user agent's ``policy``, and the sharing decision with FHIR references to what it rests
on. A publishing system (no health worker) gets no PractitionerRole.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select

from auth.client import ASSERTION_TYPE, attestation, client_assertion, dpop_proof
from auth.server import TOKEN_PATH
from sharing_api.audit.events import (
    AGREEMENT_RESOURCE,
    AUTHORIZATION_SYSTEM,
    EXT_CARE_RELATION,
    JTI_PREFIX,
    ORGNR_SYSTEM,
)
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.store.schema import audit_entries
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, HPR, READ, ApiClient, Party
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate, search_form
from tests.security.helpers import jwt_parts

BASE = f"/{TENANT_A}/fhir"
AUDIT = "dho-share/audit.read"
OAUTH_AGENT = ("https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes", "UserOauthAgent")


def entry_count(services: Services) -> int:
    with services.engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(audit_entries).where(audit_entries.c.tenant == TENANT_A)
        ).scalar()
    return int(count or 0)


def audit_search(client: ApiClient, services: Services, **form: str) -> list[dict[str, Any]]:
    services.audit_log.drain(TENANT_A)
    response = client.post(f"{BASE}/AuditEvent/_search", data={"_count": "200", **form}, party="auditor-a")
    assert response.status_code == 200, response.get_json()
    return [e["resource"] for e in response.get_json().get("entry", [])]


def contained(event: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    (found,) = [r for r in event["contained"] if "#" + r["id"] == ref["reference"]]
    return dict(found)


def codings(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept.get("coding", [])}


@pytest.fixture
def auditor(client: ApiClient) -> None:
    client.add_party(Party("auditor-a", TENANT_A, frozenset({AUDIT}), hpr=None))


def attested_token(client: ApiClient, patient: str, toa: int) -> str:
    party = client.parties["hospital"]
    details = attestation(
        legal_entity=HOSPITAL,
        point_of_care=HOSPITAL_UNIT,
        patient=(FNR, patient),
        hpr_number=HPR,
        authorization="LE",
        decision_ref="care-42",
        decision_ref_description="Innlagt pasient",
        toa=toa,
    )
    form = {
        "grant_type": "client_credentials",
        "scope": READ,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(
            party.key, client_id=party.client_id, issuer=client.issuer, assertion_details=details
        ),
    }
    proof = dpop_proof(client.dpop_key, method="POST", url=client.issuer + TOKEN_PATH)
    response = client.flask.post(TOKEN_PATH, data=form, headers={"DPoP": proof})
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["access_token"])


def test_a_read_is_one_event_to_the_profiles(client: ApiClient, services: Services, auditor: None) -> None:
    patient = fnr()
    assert client.post(f"{BASE}/Observation", json=heart_rate(patient)).status_code == 201
    toa = int(time.time()) - 5
    token = attested_token(client, patient, toa)
    jti = jwt_parts(token)[1]["jti"]
    path = f"{BASE}/Observation/_search"
    before = entry_count(services)
    read = client.flask.post(
        path, data=search_form(patient), headers=client.auth_headers("POST", path, token)
    )
    assert read.status_code == 200, read.get_json()
    assert entry_count(services) == before + 1  # one event, one append, one commit

    found = [
        e
        for e in audit_search(client, services, patient=f"{FNR}|{patient}")
        if any(s.get("code") == "search-type" for s in e["subtype"])
    ]
    (event,) = found
    # care relation: decision reference with its description, and the time of attestation
    (care,) = [x for x in event["extension"] if x["url"] == EXT_CARE_RELATION]
    parts = {x["url"]: x for x in care["extension"]}
    assert parts["decision-ref-id"]["valueString"] == "care-42"
    assert parts["decision-ref-description"]["valueString"] == "Innlagt pasient"
    assert parts["toa"]["valueUnsignedInt"] == toa
    # the health worker: PractitionerRole -> Practitioner with HPR and authorisation (9060)
    (user,) = [a for a in event["agent"] if OAUTH_AGENT in codings(a["type"])]
    assert user["requestor"] is True
    assert user["policy"] == [JTI_PREFIX + jti]
    role = contained(event, user["who"])
    practitioner = contained(event, role["practitioner"])
    assert practitioner["qualification"][0]["code"]["coding"][0]["system"] == AUTHORIZATION_SYSTEM
    assert practitioner["qualification"][0]["code"]["coding"][0]["code"] == "LE"
    # point of care: a Location managed by the point of care's Organization (org.nr on the Organization)
    (location_ref,) = role["location"]
    location = contained(event, location_ref)
    assert location["resourceType"] == "Location"
    assert "identifier" not in location
    managing = contained(event, location["managingOrganization"])
    assert managing["identifier"] == [{"system": ORGNR_SYSTEM, "value": HOSPITAL_UNIT}]
    assert contained(event, role["organization"])["identifier"] == [
        {"system": ORGNR_SYSTEM, "value": HOSPITAL}
    ]
    # the jti is the agent's policy only, never an entity
    assert jti not in str(event["entity"])
    # the decision: permit, and FHIR references to what it rests on (the agreement as a Contract)
    (decision,) = [x for x in event["entity"] if x.get("name") == "sharing-decision"]
    assert decision["description"] == "permit"
    refs = [x["what"]["reference"] for x in event["entity"] if "reference" in x.get("what", {})]
    assert any(r.startswith(f"{AGREEMENT_RESOURCE}/") for r in refs)
    assert "SharingAgreement" not in str(event)
    assert not audit_search(client, services, action="access.decision")


def test_a_system_clients_event_has_no_practitioner_role(
    client: ApiClient, services: Services, auditor: None
) -> None:
    patient = fnr()
    assert client.post(f"{BASE}/Observation", json=heart_rate(patient)).status_code == 201
    (event,) = [
        e for e in audit_search(client, services, patient=f"{FNR}|{patient}", action="observation.create")
    ]
    kinds = {r["resourceType"] for r in event.get("contained", [])}
    assert "PractitionerRole" not in kinds
    assert "Practitioner" not in kinds
    (org,) = [a for a in event["agent"] if OAUTH_AGENT in codings(a["type"])]
    assert org["requestor"] is True
    assert org["who"]["identifier"] == {"system": ORGNR_SYSTEM, "value": TENANT_A}
    assert org["policy"][0].startswith(JTI_PREFIX)
    # the organisation search still finds it (the indexed column comes from the organisation agent)
    assert audit_search(client, services, organisation=TENANT_A, action="observation.create")
