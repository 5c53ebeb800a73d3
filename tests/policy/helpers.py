"""Small helpers for the sharing-policy tests: parties, directives, reads, and response shapes.

Everything goes over HTTP through :class:`tests.api_client.ApiClient` (token endpoint + DPoP), as a
real client system would call the API. Directives are recorded through the FHIR ``Consent`` API by the
tenant's own consent-managing client; agreements through the store (set-up) or the admin API (tests of
that API).
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from werkzeug.test import TestResponse

from auth.tokens import issue_access_token
from consent.fhir_consent import directive_to_fhir
from consent.model import (
    ALWAYS,
    Block,
    Consent,
    PatientDirective,
    PatientId,
    Period,
    PurposeOfUse,
    Reservation,
)
from sharing_api.fhir.identifiers import FNR
from tests.api_client import HPR, READ, ApiClient, Party
from tests.conftest import TENANT_A
from tests.factories import CATEGORY, batch, search_form

BASE = f"/{TENANT_A}/fhir"
PUBLIC = "https://dho.example.test"
CONSENT_READ = "dho-share/consent.read"
CONSENT_WRITE = "dho-share/consent.write"
SNOMED = "http://snomed.info/sct"

THIRD_HOSPITAL = "952601814"
"""A hospital with no agreement unless a test makes one (org C of security-tests.md)."""
THIRD_HOSPITAL_UNIT = "959083010"
STRANGER = "966131861"
"""An organisation that never reads: reservations naming it must not stop anyone else."""
OTHER_HPR = "7654321"
"""A health worker who is not the one behind the ApiClient's parties (they all carry HPR 1234567)."""


# -- observations -------------------------------------------------------------------------------


def news2(patient: str, *, value: int = 3, when: str = "2026-11-20T09:00:00+01:00") -> dict[str, Any]:
    """A NEWS2 score: category ``survey`` (domain.md, "Measurements")."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "survey"}]}],
        "code": {"coding": [{"system": SNOMED, "code": "1104051000000101", "display": "NEWS2 score"}]},
        "subject": {"identifier": {"system": FNR, "value": patient}},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value},
    }


def publish(client: ApiClient, *resources: dict[str, Any], tenant: str = TENANT_A) -> list[str]:
    """Publish ``resources`` as the tenant's own system (one batch); their new ids, in order."""
    response = client.post(f"/{tenant}/fhir", json=batch(*resources))
    assert response.status_code == 200, response.get_json()
    entries = response.get_json()["entry"]
    assert all(e["response"]["status"].startswith("201") for e in entries), entries
    return [e["response"]["location"].split("/Observation/")[1].split("/")[0] for e in entries]


def missing_id() -> str:
    """An observation id that exists nowhere (the same shape as real ones)."""
    return str(uuid.uuid4())


# -- parties ------------------------------------------------------------------------------------


def controller(client: ApiClient, tenant: str = TENANT_A) -> str:
    """The tenant's own consent-managing system (no health worker behind it); its client id."""
    client_id = f"controller-{tenant}"
    if client_id not in client.parties:
        client.add_party(Party(client_id, tenant, frozenset({CONSENT_READ, CONSENT_WRITE}), hpr=None))
    return client_id


def reader(
    client: ApiClient,
    client_id: str,
    orgnr: str,
    *,
    point_of_care: str | None = None,
    hpr: str | None = HPR,
    scopes: frozenset[str] = frozenset({READ}),
) -> str:
    """A reading system of ``orgnr`` (registered once); its client id for ``party=``."""
    if client_id not in client.parties:
        client.add_party(Party(client_id, orgnr, scopes, point_of_care=point_of_care, hpr=hpr))
    return client_id


def third_hospital(client: ApiClient) -> str:
    return reader(client, "third-hospital", THIRD_HOSPITAL, point_of_care=THIRD_HOSPITAL_UNIT)


def as_system(client: ApiClient, party: str, method: str, path: str, **kwargs: Any) -> TestResponse:
    """A request by ``party`` with a token that carries no patient attestation (e.g. the controller)."""
    token = client.token(client.parties[party])
    return as_token(client, token, method, path, **kwargs)


def as_token(client: ApiClient, token: str, method: str, path: str, **kwargs: Any) -> TestResponse:
    """A request with ``token`` (bound to the ApiClient's DPoP key) and a fresh proof."""
    headers = {**client.auth_headers(method, path, token), **kwargs.pop("headers", {})}
    return client.open(method, path, auth=False, headers=headers, **kwargs)


def patient_token(
    client: ApiClient,
    pid: str,
    *,
    security_level: str = "4",
    scopes: tuple[str, ...] = (CONSENT_READ, CONSENT_WRITE),
) -> str:
    """A patient's own access token from our issuer: their ``pid`` at ``security_level``, no HPR, no
    attestation, bound to the ApiClient's DPoP key."""
    return issue_access_token(
        client.services.token_service.keyset,
        issuer=client.services.settings.issuer_url,
        client_id="helsenorge-innbygger",
        scopes=list(scopes),
        jkt=client.dpop_key.thumbprint(),
        now=time.time(),
        pid=pid,
        security_level=security_level,
        subject=f"person-{pid[-4:]}",
    ).token


# -- directives ---------------------------------------------------------------------------------


def patient_id(patient: str) -> PatientId:
    return PatientId(FNR, patient)


def reservation(patient: str, organisation: str | None = None, period: Period = ALWAYS) -> Reservation:
    return Reservation("new", patient_id(patient), organisation, period)


def block(patient: str, hpr: str = HPR, period: Period = ALWAYS) -> Block:
    return Block("new", patient_id(patient), hpr, period)


def consent(
    patient: str,
    *,
    consumer: str | None = None,
    categories: frozenset[str] | None = None,
    purposes: frozenset[PurposeOfUse] = frozenset(),
    data_period: Period | None = None,
) -> Consent:
    return Consent("new", patient_id(patient), consumer, categories, purposes, data_period=data_period)


def record(client: ApiClient, directive: PatientDirective, tenant: str = TENANT_A) -> str:
    """Record ``directive`` as the tenant's controller; the id the server gave it."""
    response = as_system(
        client,
        controller(client, tenant),
        "POST",
        f"/{tenant}/fhir/Consent",
        json=directive_to_fhir(directive),
    )
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def revoke(client: ApiClient, directive_id: str, tenant: str = TENANT_A) -> None:
    response = as_system(
        client, controller(client, tenant), "DELETE", f"/{tenant}/fhir/Consent/{directive_id}"
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "inactive"


# -- reads --------------------------------------------------------------------------------------


def read(client: ApiClient, obs_id: str, patient: str, **kwargs: Any) -> TestResponse:
    return client.get(f"{BASE}/Observation/{obs_id}", patient=patient, **kwargs)


def search(client: ApiClient, patient: str, *, tenant: str = TENANT_A, **kwargs: Any) -> TestResponse:
    extra = kwargs.pop("form", {})
    return client.post(
        f"/{tenant}/fhir/Observation/_search", data=search_form(patient, **extra), patient=patient, **kwargs
    )


def lastn(client: ApiClient, patient: str, **kwargs: Any) -> TestResponse:
    return client.post(f"{BASE}/Observation/$lastn", data=search_form(patient), patient=patient, **kwargs)


def ids_in(response: TestResponse) -> set[str]:
    """The Observation ids a read answer carries (a Bundle's entries, or one resource)."""
    body = response.get_json()
    if response.status_code != 200:
        return set()
    if body["resourceType"] == "Bundle":
        return {e["resource"]["id"] for e in body.get("entry", [])}
    return {body["id"]}


def codes_in(response: TestResponse) -> list[str]:
    body = response.get_json()
    return [e["resource"]["code"]["coding"][0]["code"] for e in body.get("entry", [])]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((li["url"] for li in bundle["link"] if li["relation"] == relation), None)


def diagnostics(response: TestResponse) -> str:
    return " ".join(i.get("diagnostics", "") for i in response.get_json().get("issue", []))


# -- comparing answers --------------------------------------------------------------------------

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CURSOR = re.compile(rb"_cursor=[A-Za-z0-9_-]+")
_VOLATILE_HEADERS = frozenset({"date", "x-request-id", "traceparent"})


def shape(response: TestResponse) -> tuple[int, list[tuple[str, str]], bytes]:
    """What a client can observe of an answer, with the volatile parts (resource ids, paging cursors)
    replaced by placeholders: status, headers (all but ``Date`` and the per-request ``X-Request-ID``
    and W3C ``traceparent``) and the body bytes."""
    body = _CURSOR.sub(b"_cursor=<cursor>", _UUID.sub(b"<id>", response.data))
    headers = sorted((k, v) for k, v in response.headers.items() if k.lower() not in _VOLATILE_HEADERS)
    return response.status_code, headers, body


def utc(text: str) -> datetime:
    """``2026-11-20T08:00:00`` in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
