"""Every access lands in the tenant's tamper-evident log (AUD-01..05), visible to the tenant's auditor
over HTTP, exportable and verifiable, and shown to the patient in plain terms."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from sharing_api.audit.checkpoints import load_public_key
from sharing_api.audit.verify import verify
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.store import schema
from tests.api.test_examples import count_rows
from tests.api_client import ApiClient, Party
from tests.conftest import TENANT_A, TENANT_B
from tests.factories import fnr, heart_rate, search_form

BASE = f"/{TENANT_A}/fhir"
AUDIT = "dho-share/audit.read"


@pytest.fixture
def auditor(client: ApiClient) -> str:
    client.add_party(Party("auditor-a", TENANT_A, frozenset({AUDIT}), hpr=None))
    client.add_party(Party("auditor-b", TENANT_B, frozenset({AUDIT}), hpr=None))
    return "auditor-a"


def events(client: ApiClient, services: Services, **form: str) -> list[dict[str, Any]]:
    services.audit_log.drain(TENANT_A)
    response = client.post(f"{BASE}/AuditEvent/_search", data={"_count": "200", **form}, party="auditor-a")
    assert response.status_code == 200, response.get_json()
    return [e["resource"] for e in response.get_json().get("entry", [])]


def patient_events(found: list[dict[str, Any]], patient: str) -> list[dict[str, Any]]:
    def about(event: dict[str, Any]) -> bool:
        return patient in str(event)

    return [e for e in found if about(e)]


def test_aud_01_a_search_records_one_event_per_patient_carrying_its_decision(
    client: ApiClient, services: Services, auditor: str
) -> None:
    """One event per request (issue 12): the search's event carries the sharing decision as an entity;
    there is no second AuthZconsent event."""
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient))
    before = events(client, services, patient=f"{FNR}|{patient}")
    client.post(f"{BASE}/Observation/_search", data=search_form(patient))
    found = events(client, services, patient=f"{FNR}|{patient}")
    assert len(found) == len(before) + 1
    rest = [e for e in found if any(s.get("code") == "search-type" for s in e.get("subtype", []))]
    assert len(rest) == 1
    assert rest[0]["outcome"] == "0"
    assert "urn:ietf:params:oauth:jti:" in str(rest[0])
    (decision,) = [x for x in rest[0]["entity"] if x.get("name") == "sharing-decision"]
    assert decision["description"] == "permit"
    assert not events(client, services, action="access.decision")


def test_aud_02_a_refusal_is_recorded_with_a_failure_outcome(
    client: ApiClient, services: Services, auditor: str
) -> None:
    response = client.post(f"{BASE}/Observation/_search", data=search_form(fnr()), auth=False)
    assert response.status_code == 401
    refused = [e for e in events(client, services, action="request.refused")]
    assert refused
    assert all(e["outcome"] != "0" for e in refused)


def test_aud_03_the_raw_query_round_trips_byte_exact(
    client: ApiClient, services: Services, auditor: str
) -> None:
    patient = fnr()
    nasty = "8867-4' OR 1=1 --<script>\u00e6\u00f8\u00e5"
    client.post(f"{BASE}/Observation/_search", data={**search_form(patient), "code": nasty})
    found = patient_events(events(client, services, patient=f"{FNR}|{patient}"), patient)
    queries = [
        base64.b64decode(entity["query"])
        for e in found
        for entity in e.get("entity", [])
        if "query" in entity
    ]
    from urllib.parse import parse_qs

    forms = [q.split(b"\n\n", 1)[1] for q in queries if b"\n\n" in q]
    assert any(parse_qs(f.decode())["code"] == [nasty] for f in forms)


def test_aud_04_no_token_or_proof_is_stored(client: ApiClient, services: Services, auditor: str) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation/_search", data=search_form(patient))
    token = client.token(client.parties["hospital"], (FNR, patient))
    services.audit_log.drain()
    with services.engine.connect() as conn:
        stored = b"".join(
            row[0] for row in conn.execute(select(schema.metadata.tables["audit_entries"].c.event))
        )
    assert stored
    assert token.encode() not in stored
    assert token.split(".")[2].encode() not in stored
    assert b"eyJ" not in stored  # no JWT of any kind


def test_aud_05_no_data_without_the_audit_record(
    client: ApiClient, services: Services, auditor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient, identifier="before"))
    client.token(client.parties["hospital"], (FNR, patient))  # tokens first: issuing one is audited too

    def broken(*_: Any, **__: Any) -> None:
        raise OperationalError("INSERT INTO audit_entries", {}, Exception("audit store down"))

    for write in ("append", "record"):  # each way an event goes into the log
        monkeypatch.setattr(services.audit_log, write, broken)
    read = client.post(f"{BASE}/Observation/_search", data=search_form(patient))
    assert read.status_code == 503
    assert "entry" not in read.get_json()
    write = client.post(f"{BASE}/Observation", json=heart_rate(patient, identifier="during"))
    assert write.status_code >= 500
    assert count_rows(services) == 1  # the write rolled back with its audit record
    monkeypatch.undo()
    assert client.post(f"{BASE}/Observation/_search", data=search_form(patient)).status_code == 200


def test_an_export_over_http_verifies_with_the_pinned_key(
    client: ApiClient, services: Services, auditor: str
) -> None:
    patient = fnr()
    for i in range(3):
        client.post(f"{BASE}/Observation", json=heart_rate(patient, identifier=f"x{i}"))
        client.post(f"{BASE}/Observation/_search", data=search_form(patient))
    services.audit_log.drain(TENANT_A)
    services.audit_log.checkpoint(TENANT_A)
    export = client.get(f"{BASE}/AuditEvent/$export", party="auditor-a")
    assert export.status_code == 200
    lines = export.get_data().splitlines(keepends=True)
    key = load_public_key(services.audit_log.signer.public_key_pem())  # type: ignore[union-attr]
    report = verify(lines, key)
    assert report.ok, report
    assert report.entries >= 6
    tampered = [
        line.replace(b'"outcome":"0"', b'"outcome":"4"', 1) if i == 3 else line
        for i, line in enumerate(lines)
    ]
    assert not verify(tampered, key).ok


def test_proofs_over_http(client: ApiClient, services: Services, auditor: str) -> None:
    patient = fnr()
    for i in range(4):
        client.post(f"{BASE}/Observation", json=heart_rate(patient, identifier=f"p{i}"))
    checkpoint = client.get(f"{BASE}/AuditEvent/$checkpoint", party="auditor-a").get_json()
    size = checkpoint["size"]
    assert size >= 4
    inclusion = client.get(f"{BASE}/AuditEvent/$inclusion-proof?index=1&size={size}", party="auditor-a")
    assert inclusion.status_code == 200
    consistency = client.get(f"{BASE}/AuditEvent/$consistency-proof?old=2&new={size}", party="auditor-a")
    assert consistency.status_code == 200
    from sharing_api.audit.merkle import verify_consistency, verify_inclusion

    root = base64.b64decode(checkpoint["root"])
    leaves = services.audit_log.leaf_hashes(TENANT_A, size)
    verify_inclusion(1, size, leaves[1], [base64.b64decode(h) for h in inclusion.get_json()["proof"]], root)
    verify_consistency(
        2,
        size,
        services.audit_log.root_at(TENANT_A, 2),
        root,
        [base64.b64decode(h) for h in consistency.get_json()["proof"]],
    )


def test_an_auditor_sees_only_their_own_tenant_and_a_consumer_nothing(
    client: ApiClient, services: Services, auditor: str
) -> None:
    assert client.get(f"{BASE}/AuditEvent?action=observation.search", party="auditor-b").status_code == 403
    assert client.get(f"{BASE}/AuditEvent?action=observation.search", party="hospital").status_code == 403
    assert client.get(f"{BASE}/AuditEvent?patient=x", party="auditor-a").status_code == 400


def test_the_patients_access_log_shows_exactly_their_accesses(
    client: ApiClient, services: Services, auditor: str
) -> None:
    import time

    from auth.tokens import issue_access_token

    patient, other = fnr(), fnr()
    for who in (patient, other):
        client.post(f"{BASE}/Observation", json=heart_rate(who))
        client.post(f"{BASE}/Observation/_search", data=search_form(who))
    client.post(f"{BASE}/Observation/$lastn", data=search_form(patient))
    token = issue_access_token(
        services.token_service.keyset,
        issuer=services.settings.issuer_url,
        client_id="helsenorge",
        scopes=[AUDIT],
        jkt=client.dpop_key.thumbprint(),
        now=time.time(),
        subject=patient,
        pid=patient,
        security_level="4",
    ).token
    path = f"{BASE}/AuditEvent/$access-log"
    response = client.open("GET", path, auth=False, headers=client.auth_headers("GET", path, token))
    assert response.status_code == 200, response.get_json()
    accesses = response.get_json()["accesses"]
    assert [a["what"] for a in accesses] == ["looked at the latest measurements", "searched the measurements"]
    assert {a["organisation"] for a in accesses} == {"974760673"}
    assert all(a["why"] == "TREAT" for a in accesses)
    assert other not in str(response.get_json())


def test_token_issuance_and_refusal_are_audited_in_the_token_services_log(
    client: ApiClient, services: Services
) -> None:
    from sharing_api.routes.token import TOKEN_LOG

    hospital = client.parties["hospital"]
    issued = client.token_response(hospital, patient=(FNR, fnr()))
    assert issued.status_code == 200
    refused = client.token_response(hospital, scope="dho-share/audit.read")
    assert refused.status_code == 400
    services.audit_log.drain(TOKEN_LOG)
    entries = services.audit_log.search(TOKEN_LOG, count=10)
    assert [e.action for e in entries] == ["token.issue", "token.refused"]
    assert entries[0].client_id == "hospital"
    jti = issued.get_json()["access_token"].split(".")[1]
    assert all(jti.encode() not in e.event for e in entries)  # claims recorded, never the token
    assert b"urn:ietf:params:oauth:jti:" in entries[0].event
