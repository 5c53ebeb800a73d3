"""CLA-01..CLA-08 and AS-01..AS-05: our token service over HTTP (RFC 7523, RFC 9449 §5, RFC 9068,
RFC 7662, RFC 7009, RFC 8414).

Client assertions are built with :mod:`tests.auth.factories` so that each differs from a valid one in
one thing. Every refusal is checked for its status and OAuth ``error``, for carrying no token, and is
followed by the sanity step: the same client with a valid assertion and proof gets a token.

The audience policy is the token service's documented one (auth/assertions.py, "Audience policy"):
``aud`` must be the issuer identifier, as a string or a one-element array; the token endpoint URL and
multi-valued arrays are refused.
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, KeySet, RSAKey
from sqlalchemy import update

from auth.client import attestation
from auth.keys import SigningKeySet, save_keyset
from auth.server import ASSERTION_TYPE, INTROSPECTION_PATH, JWKS_PATH, REVOCATION_PATH, TOKEN_PATH
from sharing_api.app import create_app
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store.clients import CLIENT_RECORD_MAX_AGE, ClientRegistry
from sharing_api.store.schema import clients
from tests.api_client import HOSPITAL, READ, ApiClient, Party
from tests.auth import factories
from tests.security.helpers import Scene, b64url_decode, jwt_parts

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class TokenEndpoint:
    """Requests to /connect/token, /connect/introspect and /connect/revocation, built by hand."""

    def __init__(self, client: ApiClient):
        self.client = client
        self.issuer = client.issuer
        self.dpop_key = ECKey.generate_key("P-256", private=True)

    def assertion(self, party: Party | str, *, key: Key | None = None, **changes: Any) -> str:
        """A valid client assertion for ``party`` with ``changes`` for
        :func:`tests.auth.factories.make_assertion`."""
        who = self.client.parties[party] if isinstance(party, str) else party
        args: dict[str, Any] = {"client_id": who.client_id, "aud": self.issuer, "now": time.time()}
        args.update(changes)
        return factories.make_assertion(key or who.key, **args)

    def proof(self, **changes: Any) -> str:
        args: dict[str, Any] = {"method": "POST", "url": self.issuer + TOKEN_PATH, "iat": int(time.time())}
        args.update(changes)
        return factories.make_proof(self.dpop_key, **args)

    def post(
        self, form: Mapping[str, str], *, proof: str | None = None, path: str = TOKEN_PATH, dpop: bool = True
    ) -> Any:
        headers = {"DPoP": proof if proof is not None else self.proof()} if dpop else {}
        return self.client.flask.post(path, data=dict(form), headers=headers)

    def token_form(self, assertion: str, **extra: str) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            **extra,
        }

    def request_token(self, assertion: str, *, proof: str | None = None, **extra: str) -> Any:
        return self.post(self.token_form(assertion, **extra), proof=proof)

    def auth_form(self, party: str, **extra: str) -> dict[str, str]:
        """Client authentication for introspection and revocation."""
        return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": self.assertion(party), **extra}

    def assert_refused(self, response: Any, status: int, error: str) -> None:
        assert response.status_code == status, response.get_json()
        body = response.get_json()
        assert body["error"] == error, body
        assert "access_token" not in body
        assert response.headers["Cache-Control"] == "no-store"

    def assert_still_works(self, party: str = "hospital") -> dict[str, Any]:
        response = self.request_token(self.assertion(party))
        assert response.status_code == 200, response.get_json()
        body: dict[str, Any] = response.get_json()
        return body


@pytest.fixture
def te(client: ApiClient) -> TokenEndpoint:
    return TokenEndpoint(client)


def refused_client(te: TokenEndpoint, assertion: str, *, party: str = "hospital", **extra: str) -> None:
    te.assert_refused(te.request_token(assertion, **extra), 401, "invalid_client")
    te.assert_still_works(party)


@pytest.fixture
def rsa_party(client: ApiClient) -> Party:
    """A client registered with an RSA-2048 key, as HelseID clients are."""
    party = Party("rsa-client", HOSPITAL, frozenset({READ}), point_of_care=HOSPITAL)
    party.key = factories.rsa_key(2048)  # type: ignore[assignment]
    return client.add_party(party)


# --- CLA-01 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("signature", [b"", b"\x00" * 64], ids=["empty-signature", "junk-signature"])
@pytest.mark.parametrize("alg", ["none", "None"])
def test_cla_01_unsigned_assertion_is_invalid_client(te: TokenEndpoint, alg: str, signature: bytes) -> None:
    header = {"typ": "client-authentication+jwt", "alg": alg}
    claims = factories.assertion_claims(client_id="hospital", aud=te.issuer, now=time.time())
    refused_client(te, factories.raw_jws(header, claims, signature))


@pytest.mark.parametrize("secret", ["jwk-json", "x-coordinate", "client-id"])
def test_cla_01_hs256_assertion_is_invalid_client(te: TokenEndpoint, secret: str) -> None:
    public = te.client.parties["hospital"].jwks()["keys"][0]
    key_bytes = {
        "jwk-json": json.dumps(public).encode(),
        "x-coordinate": b64url_decode(public["x"]),
        "client-id": b"hospital",
    }[secret]
    header = {"typ": "client-authentication+jwt", "alg": "HS256"}
    claims = factories.assertion_claims(client_id="hospital", aud=te.issuer, now=time.time())
    refused_client(te, factories.hs256_jws(header, claims, key_bytes))


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "PS512"])
def test_cla_01_rsa_assertion_with_the_registered_key_is_accepted(
    te: TokenEndpoint, rsa_party: Party, alg: str
) -> None:
    """HelseID clients sign with RSA (RS512 in their samples); RS* and PS* are both accepted."""
    assert te.request_token(te.assertion(rsa_party, alg=alg)).status_code == 200


def test_cla_01_rsa_assertion_signed_by_a_1024_bit_registered_key_is_invalid_client(
    te: TokenEndpoint, client: ApiClient
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        weak = RSAKey.generate_key(1024, private=True)
    party = Party("weak-rsa-client", HOSPITAL, frozenset({READ}), point_of_care=HOSPITAL)
    party.key = factories.rsa_key(2048)  # type: ignore[assignment]
    client.add_party(party)
    # Registration refuses short keys; a row from before that rule (written here straight into the
    # table) must still never authenticate anyone: the verifier checks the size itself.
    party.key = weak  # type: ignore[assignment]
    with client.services.clients.engine.begin() as conn:
        legacy = json.dumps(party.jwks())
        conn.execute(update(clients).where(clients.c.client_id == party.client_id).values(jwks=legacy))
    assert client.services.clients.get(party.client_id).jwks == party.jwks()  # type: ignore[union-attr]
    refused_client(te, te.assertion(party, alg="RS256"))
    refused_client(te, te.assertion(party, alg="PS256"))


@pytest.mark.parametrize("kid", [None, "not-registered"])
def test_cla_01_assertion_signed_by_an_unregistered_key_is_invalid_client(
    te: TokenEndpoint, kid: str | None
) -> None:
    refused_client(te, te.assertion("hospital", key=factories.ec_key(), kid=kid))


def test_cla_01_assertion_signed_by_another_clients_key_is_invalid_client(te: TokenEndpoint) -> None:
    refused_client(te, te.assertion("hospital", key=te.client.parties["other-hospital"].key))


# --- CLA-02 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "other-hospital"},
        {"iss": "other-hospital"},
        {"sub": 123},
        {"sub": ["hospital"]},
        {"sub": None},
    ],
    ids=["sub-other-client", "iss-other-client", "sub-number", "sub-array", "sub-null"],
)
def test_cla_02_iss_and_sub_must_both_be_the_client(te: TokenEndpoint, claims: dict[str, Any]) -> None:
    refused_client(te, te.assertion("hospital", claims=claims))


@pytest.mark.parametrize("claim", ["sub", "iss"])
def test_cla_02_missing_iss_or_sub_is_invalid_client(te: TokenEndpoint, claim: str) -> None:
    refused_client(te, te.assertion("hospital", drop_claims=[claim]))


@pytest.mark.parametrize("client_id", ["nobody", "", "hospital ", "HOSPITAL"])
def test_cla_02_unknown_client_is_invalid_client(te: TokenEndpoint, client_id: str) -> None:
    party = te.client.parties["hospital"]
    refused_client(te, te.assertion(party, client_id=client_id))


def test_cla_02_client_id_parameter_other_than_iss_is_invalid_client(te: TokenEndpoint) -> None:
    refused_client(te, te.assertion("hospital"), client_id="other-hospital")


def test_cla_02_disabled_client_is_invalid_client(te: TokenEndpoint, services: Services) -> None:
    services.clients.set_enabled("other-hospital", False)
    te.assert_refused(te.request_token(te.assertion("other-hospital")), 401, "invalid_client")
    te.assert_still_works("hospital")


def _one_max_age_later(services: Services) -> None:
    """The token worker's clock, moved on by the time its client records may be reused."""
    started = services.clients.clock()
    services.clients.clock = lambda: started + CLIENT_RECORD_MAX_AGE


def test_cla_02_client_disabled_elsewhere_is_refused_within_the_records_max_age(
    te: TokenEndpoint, services: Services
) -> None:
    """``dho-share clients disable`` runs in another process: the worker, which has just issued this
    client a token, refuses it once its record is CLIENT_RECORD_MAX_AGE old (issue 12)."""
    te.assert_still_works("other-hospital")
    assert ClientRegistry(services.engine).set_enabled("other-hospital", False)
    _one_max_age_later(services)
    te.assert_refused(te.request_token(te.assertion("other-hospital")), 401, "invalid_client")
    te.assert_still_works("hospital")


def test_cla_01_rotated_client_key_is_refused_at_once(te: TokenEndpoint, client: ApiClient) -> None:
    """A client re-registered with a new key through this process: the old key is refused from the
    next request (the cached record and the imported key are both dropped or keyed by the key)."""
    party = client.parties["hospital"]
    old_key = party.key
    te.assert_still_works("hospital")
    party.key = ECKey.generate_key("P-256", private=True)
    client.add_party(party)
    refused_client(te, te.assertion("hospital", key=old_key))


def test_cla_01_client_key_rotated_elsewhere_is_refused_within_the_records_max_age(
    te: TokenEndpoint, client: ApiClient, services: Services
) -> None:
    party = client.parties["hospital"]
    old_key = party.key
    te.assert_still_works("hospital")
    party.key = ECKey.generate_key("P-256", private=True)
    ClientRegistry(services.engine).add(
        party.client_id, orgnr=party.orgnr, jwks=party.jwks(), scopes=party.scopes
    )
    _one_max_age_later(services)
    refused_client(te, te.assertion("hospital", key=old_key))


# --- CLA-03 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        "https://other-as.example.test",
        "https://dho.example.test/connect/par",
        "https://dho.example.test/connect/token",
        "https://dho.example.test/",
        "http://dho.example.test",
        ["https://dho.example.test", "https://other-as.example.test"],
        [],
        "",
        123,
    ],
    ids=[
        "other-as",
        "par-endpoint",
        "token-endpoint-url",
        "trailing-slash",
        "http",
        "array-with-another",
        "empty-array",
        "empty",
        "number",
    ],
)
def test_cla_03_assertion_for_another_audience_is_invalid_client(te: TokenEndpoint, aud: Any) -> None:
    refused_client(te, te.assertion("hospital", aud=aud))


def test_cla_03_assertion_without_aud_is_invalid_client(te: TokenEndpoint) -> None:
    refused_client(te, te.assertion("hospital", drop_claims=["aud"]))


@pytest.mark.parametrize("as_array", [False, True], ids=["string", "one-element-array"])
def test_cla_03_issuer_as_audience_is_accepted(te: TokenEndpoint, as_array: bool) -> None:
    aud = [te.issuer] if as_array else te.issuer
    assert te.request_token(te.assertion("hospital", aud=aud)).status_code == 200


# --- CLA-04 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offsets",
    [
        {"exp": -300},
        {"exp": -11},
        {"exp": 61},
        {"exp": 300},
        {"iat": 61},
        {"nbf": 61},
        {"iat": 3600, "exp": 30},
    ],
    ids=[
        "exp-5min-past",
        "exp-just-past-skew",
        "exp-61s-ahead",
        "exp-5min-ahead",
        "iat-61s",
        "nbf-61s",
        "iat-1h",
    ],
)
def test_cla_04_assertion_outside_its_time_policy_is_invalid_client(
    te: TokenEndpoint, offsets: dict[str, int]
) -> None:
    now = int(time.time())
    refused_client(te, te.assertion("hospital", claims={k: now + v for k, v in offsets.items()}))


def test_cla_04_assertion_without_exp_is_invalid_client(te: TokenEndpoint) -> None:
    refused_client(te, te.assertion("hospital", drop_claims=["exp"]))


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_cla_04_non_numeric_time_claim_is_invalid_client(te: TokenEndpoint, claim: str) -> None:
    refused_client(te, te.assertion("hospital", claims={claim: str(int(time.time()))}))


def test_cla_04_control_exp_at_the_policy_maximum_is_accepted(te: TokenEndpoint) -> None:
    assert (
        te.request_token(te.assertion("hospital", claims={"exp": int(time.time()) + 60})).status_code == 200
    )


# --- CLA-05 (sequential; 50 concurrent copies run against gunicorn) ---------------------------------


@pytest.mark.parametrize("jti", [None, "", 123, "j" * 257], ids=["missing", "empty", "number", "too-long"])
def test_cla_05_assertion_without_a_usable_jti_is_invalid_client(te: TokenEndpoint, jti: Any) -> None:
    assertion = (
        te.assertion("hospital", drop_claims=["jti"])
        if jti is None
        else te.assertion("hospital", claims={"jti": jti})
    )
    refused_client(te, assertion)


def test_cla_05_same_assertion_twice_succeeds_once(te: TokenEndpoint) -> None:
    assertion = te.assertion("hospital")
    assert te.request_token(assertion).status_code == 200
    replay = te.request_token(assertion)  # a fresh DPoP proof: only the assertion is replayed
    te.assert_refused(replay, 401, "invalid_client")
    assert "replay" in replay.get_json()["error_description"]
    te.assert_still_works()


def test_cla_05_assertion_replayed_at_introspection_is_refused(te: TokenEndpoint) -> None:
    token = te.assert_still_works()["access_token"]
    assertion = te.assertion("hospital")
    assert te.request_token(assertion).status_code == 200
    form = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion, "token": token}
    response = te.post(form, path=INTROSPECTION_PATH, dpop=False)
    assert response.status_code == 401
    assert "active" not in response.get_json()


# --- CLA-06 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ", ["dpop+jwt", "at+jwt", "JWT", None], ids=["dpop+jwt", "at+jwt", "JWT", "absent"]
)
def test_cla_06_assertion_with_another_typ_is_invalid_client(te: TokenEndpoint, typ: str | None) -> None:
    refused_client(te, te.assertion("hospital", typ=typ))


def test_cla_06_a_dpop_proof_is_not_a_client_assertion(te: TokenEndpoint) -> None:
    party = te.client.parties["hospital"]
    proof = factories.make_proof(
        party.key,
        method="POST",
        url=te.issuer + TOKEN_PATH,
        iat=int(time.time()),
        claims={"iss": "hospital", "sub": "hospital", "aud": te.issuer, "exp": int(time.time()) + 30},
    )
    refused_client(te, proof)


# --- CLA-07 ----------------------------------------------------------------------------------------


def test_cla_07_token_request_without_dpop_is_invalid_dpop_proof(te: TokenEndpoint) -> None:
    response = te.post(te.token_form(te.assertion("hospital")), dpop=False)
    te.assert_refused(response, 400, "invalid_dpop_proof")
    te.assert_still_works()


def test_cla_07_two_dpop_headers_at_the_token_endpoint_are_refused(te: TokenEndpoint) -> None:
    headers = [("DPoP", te.proof()), ("DPoP", te.proof())]
    response = te.client.flask.post(TOKEN_PATH, data=te.token_form(te.assertion("hospital")), headers=headers)
    te.assert_refused(response, 400, "invalid_dpop_proof")
    te.assert_still_works()


# --- CLA-08 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"url": "https://dho.example.test/921234562/fhir/Observation"},
        {"url": "https://dho.example.test/connect/introspect"},
        {"url": "https://other-as.example.test/connect/token"},
        {"method": "GET"},
        {"method": "post"},
        {"iat": -3600},
        {"drop_claims": ["jti"]},
    ],
    ids=[
        "htu-of-rs",
        "htu-of-introspection",
        "htu-other-as",
        "htm-GET",
        "htm-lowercase",
        "iat-1h-old",
        "no-jti",
    ],
)
def test_cla_08_bad_dpop_proof_at_the_token_endpoint_is_invalid_dpop_proof(
    te: TokenEndpoint, changes: dict[str, Any]
) -> None:
    if "iat" in changes:
        changes = {"iat": int(time.time()) + changes["iat"]}
    response = te.request_token(te.assertion("hospital"), proof=te.proof(**changes))
    te.assert_refused(response, 400, "invalid_dpop_proof")
    te.assert_still_works()


def test_cla_08_reused_proof_jti_at_the_token_endpoint_is_invalid_dpop_proof(te: TokenEndpoint) -> None:
    proof = te.proof()
    assert te.request_token(te.assertion("hospital"), proof=proof).status_code == 200
    te.assert_refused(te.request_token(te.assertion("hospital"), proof=proof), 400, "invalid_dpop_proof")
    te.assert_still_works()


# --- CLA-05 and CLA-08 together: both jti claimed in one round trip (issue 12) ------------------------


def test_a_replayed_assertion_does_not_spend_the_fresh_proof_sent_with_it(te: TokenEndpoint) -> None:
    assertion = te.assertion("hospital")
    assert te.request_token(assertion).status_code == 200
    proof = te.proof()
    te.assert_refused(te.request_token(assertion, proof=proof), 401, "invalid_client")
    assert te.request_token(te.assertion("hospital"), proof=proof).status_code == 200


def test_a_replayed_proof_spends_the_fresh_assertion_sent_with_it(te: TokenEndpoint) -> None:
    """As when the two were claimed in turn: the assertion is claimed first, then the proof."""
    proof = te.proof()
    assert te.request_token(te.assertion("hospital"), proof=proof).status_code == 200
    assertion = te.assertion("hospital")
    te.assert_refused(te.request_token(assertion, proof=proof), 400, "invalid_dpop_proof")
    again = te.request_token(assertion)  # with a fresh proof
    te.assert_refused(again, 401, "invalid_client")
    assert "replay" in again.get_json()["error_description"]
    te.assert_still_works()


@pytest.mark.parametrize("refusal", ["proof-for-another-url", "no-proof", "scope-not-registered"])
def test_an_assertion_verified_in_a_refused_request_is_spent(te: TokenEndpoint, refusal: str) -> None:
    """A request refused after its assertion was verified spends the assertion all the same."""
    assertion = te.assertion("hospital")
    if refusal == "proof-for-another-url":
        proof = te.proof(url=te.issuer + INTROSPECTION_PATH)
        te.assert_refused(te.request_token(assertion, proof=proof), 400, "invalid_dpop_proof")
    elif refusal == "no-proof":
        te.assert_refused(te.post(te.token_form(assertion), dpop=False), 400, "invalid_dpop_proof")
    else:
        refused = te.request_token(assertion, scope="dho-share/audit.read")
        te.assert_refused(refused, 400, "invalid_scope")
    again = te.request_token(assertion)
    te.assert_refused(again, 401, "invalid_client")
    assert "replay" in again.get_json()["error_description"]
    te.assert_still_works()


def test_a_proof_sent_with_a_refused_assertion_is_not_spent(te: TokenEndpoint) -> None:
    proof = te.proof()
    refused_assertion = te.assertion("hospital", aud="https://other-as.example.test")
    te.assert_refused(te.request_token(refused_assertion, proof=proof), 401, "invalid_client")
    assert te.request_token(te.assertion("hospital"), proof=proof).status_code == 200


# --- AS-01 -----------------------------------------------------------------------------------------


def test_as_01_issued_access_token_has_the_required_shape(te: TokenEndpoint, settings: Settings) -> None:
    response = te.request_token(te.assertion("hospital"))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "DPoP"
    token = body["access_token"]
    header, _ = jwt_parts(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    jwks = te.client.flask.get(JWKS_PATH).get_json()
    claims = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"]).claims
    assert claims["iss"] == te.issuer
    assert claims["aud"] == settings.audience == "dho-share"
    assert claims["cnf"] == {"jkt": te.dpop_key.thumbprint()}
    assert claims["client_id"] == claims["sub"] == "hospital"
    lifetime = claims["exp"] - claims["iat"]
    assert 0 < lifetime <= settings.token_lifetime <= 3600
    assert body["expires_in"] == lifetime
    assert len(b64url_decode(claims["jti"])) * 8 >= 128


def test_as_01_token_jtis_are_unique(te: TokenEndpoint) -> None:
    jtis = {jwt_parts(te.assert_still_works()["access_token"])[1]["jti"] for _ in range(20)}
    assert len(jtis) == 20


def test_as_01_token_carries_the_attestation_from_the_assertion(te: TokenEndpoint) -> None:
    party = te.client.parties["hospital"]
    details = attestation(
        legal_entity=party.orgnr, point_of_care=HOSPITAL, patient=(FNR, "13097248022"), hpr_number="1234567"
    )
    assertion = te.assertion("hospital", claims={"assertion_details": details})
    token = te.request_token(assertion).get_json()["access_token"]
    claims = jwt_parts(token)[1]
    assert claims["authorization_details"][0]["patients"] == details["patients"]


def test_as_01_attestation_for_another_legal_entity_is_refused(te: TokenEndpoint) -> None:
    details = attestation(legal_entity="911222337", point_of_care="911222337", patient=(FNR, "13097248022"))
    response = te.request_token(te.assertion("hospital", claims={"assertion_details": details}))
    te.assert_refused(response, 400, "invalid_authorization_details")


# --- AS-02 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant_type", "extra"),
    [
        ("password", {"username": "alice", "password": "secret"}),
        ("implicit", {}),
        ("authorization_code", {"code": "abc", "redirect_uri": "https://client.example.test/cb"}),
        ("refresh_token", {"refresh_token": "abc"}),
        ("urn:ietf:params:oauth:grant-type:jwt-bearer", {"assertion": "a.b.c"}),
        ("urn:ietf:params:oauth:grant-type:device_code", {"device_code": "abc"}),
        ("urn:ietf:params:oauth:grant-type:token-exchange", {"subject_token": "abc"}),
        ("client_credentials ", {}),
        ("CLIENT_CREDENTIALS", {}),
        ("made-up", {}),
    ],
    ids=[
        "ropc",
        "implicit",
        "authorization_code",
        "refresh_token",
        "jwt-bearer",
        "device_code",
        "token-exchange",
        "trailing-space",
        "upper-case",
        "unregistered",
    ],
)
def test_as_02_other_grant_types_are_unsupported(
    te: TokenEndpoint, grant_type: str, extra: dict[str, str]
) -> None:
    form = {**te.token_form(te.assertion("hospital")), "grant_type": grant_type, **extra}
    te.assert_refused(te.post(form), 400, "unsupported_grant_type")
    te.assert_still_works()


def test_as_02_no_front_channel_endpoints_are_advertised_or_served(te: TokenEndpoint) -> None:
    discovery = te.client.flask.get("/.well-known/openid-configuration").get_json()
    assert discovery["grant_types_supported"] == ["client_credentials"]
    assert discovery["response_types_supported"] == []
    assert "authorization_endpoint" not in discovery
    for path in ("/connect/authorize", "/authorize", "/oauth/authorize"):
        assert te.client.flask.get(f"{path}?response_type=token&client_id=hospital").status_code == 404


# --- AS-03 -----------------------------------------------------------------------------------------


def test_as_03_introspection_requires_client_authentication(te: TokenEndpoint) -> None:
    token = te.assert_still_works()["access_token"]
    for form in (
        {"token": token},
        {"token": token, "client_id": "hospital"},
        {"token": token, "client_assertion_type": ASSERTION_TYPE, "client_assertion": "x.y.z"},
        {
            "token": token,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": te.assertion("hospital", key=factories.ec_key()),
        },
    ):
        response = te.post(form, path=INTROSPECTION_PATH, dpop=False)
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_client"
        assert "active" not in response.get_json()


def test_as_03_introspection_of_unknown_expired_revoked_or_foreign_tokens_is_only_inactive(
    te: TokenEndpoint, scene: Scene
) -> None:
    now = int(time.time())
    live = te.assert_still_works()["access_token"]
    expired = scene.read.mint(exp=now - 600, iat=now - 900, nbf=now - 900)
    foreign = te.assert_still_works("other-hospital")["access_token"]
    revoked = te.assert_still_works()["access_token"]
    assert (
        te.post(te.auth_form("hospital", token=revoked), path=REVOCATION_PATH, dpop=False).status_code == 200
    )
    for token in ("not-a-token", "a.b.c", expired, foreign, revoked, scene.read.mint(key=factories.ec_key())):
        response = te.post(te.auth_form("hospital", token=token), path=INTROSPECTION_PATH, dpop=False)
        assert response.status_code == 200
        assert response.get_json() == {"active": False}
    active = te.post(te.auth_form("hospital", token=live), path=INTROSPECTION_PATH, dpop=False).get_json()
    assert active["active"] is True
    assert active["client_id"] == "hospital"


# --- AS-04 -----------------------------------------------------------------------------------------


def test_as_04_revocation_by_another_client_is_refused_and_the_token_stays_active(scene: Scene) -> None:
    te = TokenEndpoint(scene.client)
    reader = scene.read
    response = te.post(te.auth_form("other-hospital", token=reader.token), path=REVOCATION_PATH, dpop=False)
    assert response.status_code in (400, 401, 403)
    assert response.get_json()["error"] in ("unauthorized_client", "invalid_client", "invalid_request")
    introspected = te.post(te.auth_form("hospital", token=reader.token), path=INTROSPECTION_PATH, dpop=False)
    assert introspected.get_json()["active"] is True
    reader.assert_still_works()


def test_as_04_revocation_requires_client_authentication(scene: Scene) -> None:
    te = TokenEndpoint(scene.client)
    response = te.post({"token": scene.read.token}, path=REVOCATION_PATH, dpop=False)
    assert response.status_code == 401
    scene.read.assert_still_works()


@pytest.mark.parametrize("token", ["not-a-token", "a.b.c", "forged"])
def test_as_04_revoking_an_invalid_token_answers_200(scene: Scene, token: str) -> None:
    te = TokenEndpoint(scene.client)
    value = scene.read.mint(key=factories.ec_key()) if token == "forged" else token
    response = te.post(te.auth_form("hospital", token=value), path=REVOCATION_PATH, dpop=False)
    assert response.status_code == 200
    scene.read.assert_still_works()


# --- AS-05 -----------------------------------------------------------------------------------------


def _check_jwks(jwks: dict[str, Any]) -> None:
    keys = jwks["keys"]
    assert keys
    kids = [k["kid"] for k in keys]
    assert len(kids) == len(set(kids)), "duplicate kid"
    for key in keys:
        assert not PRIVATE_MEMBERS & key.keys(), f"private member in {key['kid']}"
        assert key["kty"] in ("EC", "OKP", "RSA")
        assert key.get("use", "sig") == "sig"
        if key["kty"] == "RSA":
            n = base64.urlsafe_b64decode(key["n"] + "=" * (-len(key["n"]) % 4)).lstrip(b"\0")
            assert len(n) * 8 >= 2048


def test_as_05_jwks_has_public_keys_only_and_unique_kids(te: TokenEndpoint) -> None:
    response = te.client.flask.get(JWKS_PATH)
    assert response.status_code == 200
    _check_jwks(response.get_json())
    discovery = te.client.flask.get("/.well-known/openid-configuration").get_json()
    assert discovery["jwks_uri"] == te.issuer + JWKS_PATH


@pytest.fixture
def rotated_app(settings: Settings, app: Flask, tmp_path: Path) -> Any:
    """An app whose key file holds an active key and a retired one still published."""
    path = tmp_path / "rotated-keys.json"
    save_keyset(SigningKeySet.generate().rotate(now=time.time(), keep_published_for=3600), path)
    rotated = create_app(settings.model_copy(update={"signing_keys_path": path}))
    yield rotated
    rotated.extensions["dho"].engine.dispose()


def test_as_05_jwks_after_rotation_has_no_private_members_or_duplicates(rotated_app: Flask) -> None:
    jwks = rotated_app.test_client().get(JWKS_PATH).get_json()
    assert len(jwks["keys"]) == 2
    _check_jwks(jwks)


def test_as_05_other_well_known_documents_leak_no_key_material(te: TokenEndpoint) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        text = te.client.flask.get(path).get_data(as_text=True)
        for member in ('"d"', '"p"', '"q"', '"k"'):
            assert member not in text
