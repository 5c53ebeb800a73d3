"""Trust of a separately configured external issuer (HelseID-shaped), its JWKS served on loopback.

Issue #3, "Done when": a token from it with HelseID's claim names is accepted; the same token for
another audience, or signed by a key the issuer does not publish, is not.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from auth.client import attestation
from sharing_api.app import create_app
from sharing_api.fhir.identifiers import FNR
from sharing_api.settings import Settings, TrustedIssuerSetting
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, HPR, ApiClient
from tests.auth.factories import make_helseid_token
from tests.auth.test_external import IssuerServer
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate, search_form

AUDIENCE = "nhn:dho-share"
BASE = f"/{TENANT_A}/fhir"


@pytest.fixture
def issuer() -> Iterator[tuple[IssuerServer, RSAKey]]:
    server = IssuerServer()
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, private=True, auto_kid=True)
    server.jwks = {"keys": [key.as_dict(private=False)]}
    yield server, key
    server.stop()


@pytest.fixture
def trusting(
    settings: Settings, issuer: tuple[IssuerServer, RSAKey], client: ApiClient
) -> Iterator[ApiClient]:
    """The same database, served by an app that also trusts the loopback issuer."""
    server, _ = issuer
    app = create_app(
        settings.model_copy(
            update={"trusted_issuers": (TrustedIssuerSetting(issuer=server.url, audience=AUDIENCE),)}
        )
    )
    api = copy.copy(client)  # same parties and keys, another app in front of the same database
    api.flask, api.services = app.test_client(), app.extensions["dho"]
    yield api
    api.services.engine.dispose()


def helseid_token(server: IssuerServer, key: RSAKey, api: ApiClient, patient: str, **overrides: Any) -> str:
    details = attestation(
        legal_entity=HOSPITAL, point_of_care=HOSPITAL_UNIT, patient=(FNR, patient), hpr_number=HPR
    )
    claims: dict[str, Any] = {
        "helseid://claims/client/claims/orgnr_parent": HOSPITAL,
        "helseid://claims/client/claims/orgnr_child": HOSPITAL_UNIT,
        "authorization_details": [details],
        **overrides.pop("claims", {}),
    }
    return make_helseid_token(
        overrides.pop("signing_key", key),
        kid=key.kid,
        jkt=api.dpop_key.thumbprint(),
        issuer=server.url,
        audience=overrides.pop("audience", AUDIENCE),
        now=time.time(),
        **claims,
    )


def search(api: ApiClient, patient: str, token: str) -> Any:
    path = f"{BASE}/Observation/_search"
    return api.open(
        "POST", path, auth=False, data=search_form(patient), headers=api.auth_headers("POST", path, token)
    )


def test_a_helseid_token_with_its_claim_names_reads_data(
    client: ApiClient, trusting: ApiClient, issuer: tuple[IssuerServer, RSAKey]
) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient, value=66))
    server, key = issuer
    response = search(trusting, patient, helseid_token(server, key, trusting, patient))
    assert response.status_code == 200, response.get_json()
    assert [e["resource"]["valueQuantity"]["value"] for e in response.get_json()["entry"]] == [66]


def test_the_same_token_for_another_audience_is_refused(
    trusting: ApiClient, issuer: tuple[IssuerServer, RSAKey]
) -> None:
    server, key = issuer
    patient = fnr()
    response = search(
        trusting, patient, helseid_token(server, key, trusting, patient, audience="another-api")
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("DPoP")


def test_a_token_signed_by_a_key_the_issuer_does_not_publish_is_refused(
    trusting: ApiClient, issuer: tuple[IssuerServer, RSAKey]
) -> None:
    server, key = issuer
    patient = fnr()
    rogue = RSAKey.generate_key(2048, private=True)
    response = search(trusting, patient, helseid_token(server, key, trusting, patient, signing_key=rogue))
    assert response.status_code == 401
