"""Interoperability: an independent OAuth client library gets a token from our token service and reads.

The client is ``requests-oauth2client`` (``OAuth2Client`` from the discovery document, ``PrivateKeyJwt``
client authentication, DPoP-bound tokens, ``DPoPToken`` as the ``requests`` auth handler), talking to
gunicorn over real HTTP. It reads one patient's measurement with ``POST .../Observation/_search`` and a
form body, as a hospital system would.

What the library does not do by itself, and this test therefore adds (see the report):

* ``PrivateKeyJwt`` signs a fixed claim set (``iss``, ``sub``, ``aud``, ``iat``, ``exp``, ``jti``) under
  ``typ: JWT``. It has no parameter for extra claims or for the header ``typ``, so the HelseID shape
  (``typ: client-authentication+jwt``, ``nbf``, the attestation in ``assertion_details``) needs a
  subclass overriding ``client_assertion()`` (:class:`HelseIdPrivateKeyJwt`).
* ``aud`` defaults to the token endpoint URL; our policy requires the issuer, so ``aud=`` is passed.
* Plain-``http`` loopback endpoints need ``testing=True`` (the library insists on https otherwise).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from attrs import field, frozen
from jwskate import Jwk, Jwt
from requests_oauth2client import DPoPKey, DPoPToken, InvalidClient, OAuth2Client, PrivateKeyJwt
from requests_oauth2client.dpop import MissingDPoPNonce

from auth.client import attestation
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, READ, ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import live_server
from tests.security.helpers import server_env

pytestmark = pytest.mark.slow

CLIENT_ID = "third-party-epj"


@frozen(init=False)
class HelseIdPrivateKeyJwt(PrivateKeyJwt):  # type: ignore[misc]
    """``private_key_jwt`` with HelseID's assertion: ``typ: client-authentication+jwt``, ``nbf``, and the
    clinician's attestation in ``assertion_details``."""

    assertion_details: dict[str, Any] | None = field(default=None)

    def __init__(
        self,
        client_id: str,
        private_jwk: Jwk,
        *,
        aud: str,
        assertion_details: dict[str, Any] | None,
        lifetime: int = 30,
    ) -> None:
        super().__init__(client_id, private_jwk, aud=aud, lifetime=lifetime)
        object.__setattr__(self, "assertion_details", assertion_details)  # attrs-frozen

    def client_assertion(self, audience: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": str(self.jti_gen()),
        }
        if self.assertion_details is not None:
            claims["assertion_details"] = self.assertion_details
        return str(Jwt.sign(claims, key=self.private_jwk, alg=self.alg, typ="client-authentication+jwt"))


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with live_server(server_env(settings), workers=2, log=tmp_path / "server.log") as base:
        yield base


@pytest.fixture
def nonce_server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    env = {**server_env(settings), "DHO_DPOP_NONCE": "true"}
    with live_server(env, workers=2, log=tmp_path / "server.log") as base:
        yield base


@pytest.fixture
def client_key(services: Services) -> Jwk:
    """The third party's signing key; only its public JWKS is registered with us."""
    key = Jwk.generate(alg="ES256", kid=f"tp-{uuid.uuid4().hex[:8]}")
    services.clients.add(
        CLIENT_ID,
        orgnr=HOSPITAL,
        jwks={"keys": [key.public_jwk().to_dict()]},
        scopes=frozenset({READ}),
        point_of_care=HOSPITAL_UNIT,
    )
    return key


def oauth_client(server: str, key: Jwk, patient: str | None) -> OAuth2Client:
    details = (
        attestation(
            legal_entity=HOSPITAL, point_of_care=HOSPITAL_UNIT, patient=(FNR, patient), hpr_number="1234567"
        )
        if patient
        else None
    )
    return OAuth2Client.from_discovery_endpoint(
        issuer=server,
        auth=HelseIdPrivateKeyJwt(CLIENT_ID, key, aud=server, assertion_details=details),
        dpop_bound_access_tokens=True,
        testing=True,  # plain-http loopback server
    )


def test_requests_oauth2client_gets_a_dpop_token_and_reads(
    client: ApiClient, server: str, client_key: Jwk
) -> None:
    patient = fnr()
    published = client.post(f"/{TENANT_A}/fhir/Observation", json=heart_rate(patient, value=66.25))
    assert published.status_code == 201

    oauth = oauth_client(server, client_key, patient)
    assert oauth.token_endpoint == f"{server}/connect/token"
    token = oauth.client_credentials(scope=READ)
    assert isinstance(token, DPoPToken)
    assert token.token_type == "DPoP"

    response = requests.post(
        f"{server}/{TENANT_A}/fhir/Observation/_search",
        data={"patient.identifier": f"{FNR}|{patient}"},
        auth=token,  # adds Authorization: DPoP <token> and a fresh proof (htm, htu, ath)
        timeout=10,
    )
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    values = [e["resource"]["valueQuantity"]["value"] for e in bundle["entry"]]
    assert values == [66.25]
    # A second request with the same token gets a new proof from the library and is accepted too.
    again = requests.post(
        f"{server}/{TENANT_A}/fhir/Observation/_search",
        data={"patient.identifier": f"{FNR}|{patient}"},
        auth=token,
        timeout=10,
    )
    assert again.status_code == 200


def test_requests_oauth2client_follows_server_nonces_at_both_ends(
    client: ApiClient, nonce_server: str, client_key: Jwk
) -> None:
    """DPOP-16 with a third-party client: the token endpoint and the API each demand a nonce; the
    library retries with it (a fresh client assertion each time, since ours are single-use)."""
    patient = fnr()
    assert (
        client.post(f"/{TENANT_A}/fhir/Observation", json=heart_rate(patient, value=64.5)).status_code == 201
    )
    token = oauth_client(nonce_server, client_key, patient).client_credentials(scope=READ)
    assert token.dpop_key.as_nonce
    response = requests.post(
        f"{nonce_server}/{TENANT_A}/fhir/Observation/_search",
        data={"patient.identifier": f"{FNR}|{patient}"},
        auth=token,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert token.dpop_key.rs_nonce
    assert [e["resource"]["valueQuantity"]["value"] for e in response.json()["entry"]] == [64.5]


def test_requests_oauth2client_token_is_bound_to_the_librarys_dpop_key(
    client: ApiClient, server: str, client_key: Jwk
) -> None:
    patient = fnr()
    assert client.post(f"/{TENANT_A}/fhir/Observation", json=heart_rate(patient)).status_code == 201
    token = oauth_client(server, client_key, patient).client_credentials(scope=READ)
    claims = Jwt(token.access_token).claims
    assert claims["cnf"]["jkt"] == token.dpop_key.dpop_jkt
    # The same token with another key's proofs is refused. (The library's DPoPToken turns any 401 with a
    # DPoP challenge into MissingDPoPNonce when the answer carries no DPoP-Nonce: it assumes every DPoP
    # 401 is a nonce request. The refusal itself is on the exception.)
    thief = DPoPToken(token.access_token, _dpop_key=DPoPKey.generate(alg="ES256"))
    with pytest.raises(MissingDPoPNonce) as refused:
        requests.post(
            f"{server}/{TENANT_A}/fhir/Observation/_search",
            data={"patient.identifier": f"{FNR}|{patient}"},
            auth=thief,
            timeout=10,
        )
    assert refused.value.response.status_code == 401
    assert 'error="invalid_token"' in refused.value.response.headers["WWW-Authenticate"]
    assert patient not in refused.value.response.text


def test_requests_oauth2client_plain_private_key_jwt_is_refused(server: str, client_key: Jwk) -> None:
    """The library's stock assertion (``typ: JWT``, ``aud`` = token endpoint) does not meet our policy:
    the reason the subclass above exists."""
    stock = OAuth2Client.from_discovery_endpoint(
        issuer=server, auth=PrivateKeyJwt(CLIENT_ID, client_key), dpop_bound_access_tokens=True, testing=True
    )
    with pytest.raises(InvalidClient):
        stock.client_credentials(scope=READ)
