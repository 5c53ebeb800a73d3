"""The audit store over HTTP: every AuditEvent a search returns has an id and a fullUrl that resolve, for
the tenant's auditors only (issue 8); the log keeps its name when the service moves to another URL
(issue 13); an edited search column is caught, not served (issue 13)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from flask import Flask
from pydantic import AnyHttpUrl
from sqlalchemy import update

from sharing_api.app import create_app
from sharing_api.audit.checkpoints import load_public_key
from sharing_api.audit.verify import verify
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store.schema import audit_entries
from tests.api.test_audit_http import AUDIT, BASE
from tests.api_client import ApiClient, Party
from tests.audit.factories import tampering
from tests.conftest import TENANT_A, TENANT_B
from tests.factories import fnr, heart_rate, search_form


@pytest.fixture
def auditors(client: ApiClient) -> None:
    client.add_party(Party("auditor-a", TENANT_A, frozenset({AUDIT}), hpr=None))
    client.add_party(Party("auditor-b", TENANT_B, frozenset({AUDIT}), hpr=None))


def search(client: ApiClient, services: Services, **form: str) -> dict[str, Any]:
    services.audit_log.drain(TENANT_A)
    response = client.post(f"{BASE}/AuditEvent/_search", data={"_count": "200", **form}, party="auditor-a")
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def test_every_searched_audit_event_reads_back_by_its_id(
    client: ApiClient, services: Services, auditors: None
) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient))
    client.post(f"{BASE}/Observation/_search", data=search_form(patient))
    entries = search(client, services)["entry"]
    assert len(entries) >= 2  # the create and the search
    for entry in entries:
        resource = entry["resource"]
        assert resource["id"], "a searched AuditEvent carries its id"
        assert entry["fullUrl"].endswith(f"/AuditEvent/{resource['id']}")
        path = entry["fullUrl"].split("://", 1)[-1].split("/", 1)[1]
        read = client.get(f"/{path}", party="auditor-a")
        assert read.status_code == 200, (entry["fullUrl"], read.get_json())
        assert read.get_json() == resource  # the same event, id included
    first = entries[0]["resource"]["id"]
    other = client.get(f"{BASE}/AuditEvent/{first}", party="auditor-b")  # tenant B's auditor, A's log
    assert other.status_code == 403
    clinician = client.get(f"{BASE}/AuditEvent/{first}", party="hospital")  # no audit scope
    assert clinician.status_code in (401, 403)
    assert client.get(f"{BASE}/AuditEvent/999999", party="auditor-a").status_code == 404
    assert client.get(f"{BASE}/AuditEvent/x1", party="auditor-a").status_code == 404
    # the reads are audited
    reads = [e for e in search(client, services)["entry"] if f"AuditEvent/{first}" in str(e["resource"])]
    assert reads


def test_the_log_keeps_its_name_when_the_public_url_changes(
    client: ApiClient, services: Services, settings: Settings, auditors: None
) -> None:
    client.post(f"{BASE}/Observation/_search", data=search_form(fnr()))
    first = services.audit_log
    first.drain(TENANT_A)
    signed = first.checkpoint(TENANT_A)
    assert signed is not None
    name = first.log_name(TENANT_A)
    assert "://" not in name  # C2SP: no scheme
    assert name.endswith(f"/audit/{TENANT_A}")

    moved = settings.model_copy(update={"public_url": AnyHttpUrl("https://another-host.example.test")})
    app: Flask = create_app(moved)
    log = app.extensions["dho"].audit_log
    try:
        assert log.log_name(TENANT_A) == name
        with log.engine.connect().execution_options(write=True) as conn, conn.begin():  # one more event
            log.append(conn, TENANT_A, orjson.loads(next(iter(log.entries(TENANT_A))).event))
        log.drain(TENANT_A)
        assert log.checkpoint(TENANT_A) is not None
        key = load_public_key(log.signer.public_key_pem())  # type: ignore[union-attr]
        report = verify(log.export(TENANT_A), key)
        assert report.ok, report.detail
        assert report.origin == name
        assert report.checkpoints >= 2  # signed before and after the move, one log
    finally:
        app.extensions["dho"].engine.dispose()


def test_an_edited_search_column_is_refused_not_served(
    client: ApiClient, services: Services, auditors: None
) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation/_search", data=search_form(patient))
    mine = search(client, services, patient=f"{FNR}|{patient}")["entry"]
    assert mine
    index = int(mine[0]["resource"]["id"])
    forged = "7654321"
    assert forged not in str(mine[0]["resource"])
    with tampering(services.engine) as conn:  # make the read look like another health worker's
        conn.execute(
            update(audit_entries)
            .where(audit_entries.c.tenant == TENANT_A, audit_entries.c.seq == index)
            .values(agent_hpr=forged)
        )
    response = client.post(
        f"{BASE}/AuditEvent/_search", data={"patient": f"{FNR}|{patient}"}, party="auditor-a"
    )
    assert response.status_code >= 500  # fail closed: never a result that contradicts the signed event
    assert forged not in response.get_data(as_text=True)
