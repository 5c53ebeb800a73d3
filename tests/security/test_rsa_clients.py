"""HelseID clients with RSA keys, over HTTP: client assertions and DPoP proofs signed with RS256..RS512 and
PS256..PS512 (RSA-2048 and larger) get a token and read; 1024-bit RSA, ``alg=none`` and HS256 do not.

HelseID's samples sign both the client assertion and the DPoP proof with ``RS512``, and their proof
``jwk`` carries ``kty``, ``n``, ``e`` and ``alg`` (``../shared/reference/helseid/dpop-proof.header.rsa.json``,
``client-assertion.header.json``). What is allowed is one list, :data:`auth._jose.CLIENT_SIGNING_ALGS`,
read here from the verifiers' constants and from discovery, never written out again.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.errors import SecurityWarning
from joserfc.jwk import RSAKey

from auth.assertions import CLIENT_ASSERTION_ALGS
from auth.client import ASSERTION_TYPE, DhoClient, attestation, client_assertion, dpop_proof
from auth.dpop import DPOP_ALGS
from auth.server import TOKEN_PATH
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, READ, ApiClient, Party
from tests.auth import factories
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import live_server
from tests.prerequisites import require
from tests.security.helpers import b64url_decode, challenge_params, jwt_parts, server_env

RSA_ALGS = [alg for alg in DPOP_ALGS if alg.startswith(("RS", "PS"))]
SEARCH = f"/{TENANT_A}/fhir/Observation/_search"


def rsa_jwk_key(bits: int = 2048, alg: str = "RS512") -> RSAKey:
    """An RSA key whose JWK names its algorithm, as HelseID's configured client keys do."""
    return RSAKey.import_key({**factories.rsa_key(bits).as_dict(private=True), "alg": alg})


def weak_rsa_key() -> RSAKey:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return RSAKey.generate_key(1024, private=True)


def rfc7638_thumbprint(key: RSAKey) -> str:
    """RFC 7638 §3.2 by hand: SHA-256 over ``{"e":..,"kty":"RSA","n":..}`` (lexicographic, no spaces)."""
    jwk = key.as_dict(private=False)
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    return factories.b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@pytest.fixture
def rsa_party(client: ApiClient) -> Party:
    party = Party("helseid-rsa-epj", HOSPITAL, frozenset({READ}), point_of_care=HOSPITAL_UNIT)
    party.key = rsa_jwk_key(2048, "RS512")  # type: ignore[assignment]
    return client.add_party(party)


def token_form(client: ApiClient, party: Party, patient: str, *, alg: str | None = None) -> dict[str, str]:
    details = attestation(
        legal_entity=party.orgnr, point_of_care=HOSPITAL_UNIT, patient=(FNR, patient), hpr_number="1234567"
    )
    return {
        "grant_type": "client_credentials",
        "scope": READ,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(
            party.key, client_id=party.client_id, issuer=client.issuer, assertion_details=details, alg=alg
        ),
    }


def published(client: ApiClient, value: float) -> str:
    patient = fnr()
    response = client.post(f"/{TENANT_A}/fhir/Observation", json=heart_rate(patient, value=value))
    assert response.status_code == 201, response.get_json()
    return patient


def test_discovery_advertises_the_verifiers_allowlists_with_rsa(client: ApiClient) -> None:
    discovery = client.flask.get("/.well-known/openid-configuration").get_json()
    assert discovery["token_endpoint_auth_signing_alg_values_supported"] == list(CLIENT_ASSERTION_ALGS)
    assert discovery["dpop_signing_alg_values_supported"] == list(DPOP_ALGS)
    for advertised in (CLIENT_ASSERTION_ALGS, DPOP_ALGS):
        assert {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"} <= set(
            advertised
        )
        assert not any(alg.startswith("HS") or alg.lower() == "none" for alg in advertised)


@pytest.mark.parametrize("alg", RSA_ALGS)
def test_rsa_client_gets_a_token_bound_to_its_rsa_key_and_reads(
    client: ApiClient, rsa_party: Party, alg: str
) -> None:
    """Assertion and proofs signed with ``alg`` by RSA-2048 keys; ``cnf.jkt`` is the RFC 7638 thumbprint."""
    rsa_party.key = rsa_jwk_key(2048, alg)  # type: ignore[assignment]
    client.add_party(rsa_party)  # re-registered with a key that names alg
    patient = published(client, 71.5)
    dpop_key = rsa_jwk_key(2048, alg)
    proof = dpop_proof(dpop_key, method="POST", url=client.issuer + TOKEN_PATH)
    assert jwt_parts(proof)[0]["alg"] == alg
    response = client.flask.post(
        TOKEN_PATH, data=token_form(client, rsa_party, patient, alg=alg), headers={"DPoP": proof}
    )
    assert response.status_code == 200, response.get_json()
    token = response.get_json()["access_token"]
    assert jwt_parts(token)[1]["cnf"]["jkt"] == rfc7638_thumbprint(dpop_key)

    api_proof = dpop_proof(dpop_key, method="POST", url=client.public + SEARCH, access_token=token)
    read = client.flask.post(
        SEARCH,
        data={"patient.identifier": f"{FNR}|{patient}"},
        headers={"Authorization": f"DPoP {token}", "DPoP": api_proof},
    )
    assert read.status_code == 200, read.get_data(as_text=True)
    assert [e["resource"]["valueQuantity"]["value"] for e in read.get_json()["entry"]] == [71.5]


def test_helseid_shaped_rsa_proof_header_is_accepted(
    client: ApiClient, rsa_party: Party, shared_dir: Path
) -> None:
    """The reference RS512 proof header (``jwk`` with ``kty``, ``n``, ``e``, ``alg``), with our own key."""
    reference_file = shared_dir / "reference" / "helseid" / "dpop-proof.header.rsa.json"
    require(reference_file.is_file(), f"{reference_file} (the HelseID reference pack)")
    reference = json.loads(reference_file.read_text())
    patient = published(client, 72.25)
    dpop_key = rsa_jwk_key(2048, reference["alg"])
    public = dpop_key.as_dict(private=False)
    header = {**reference, "jwk": {name: public[name] for name in reference["jwk"]}}
    proof = factories.make_proof(
        dpop_key, method="POST", url=client.issuer + TOKEN_PATH, iat=int(time.time()), header=header
    )
    response = client.flask.post(
        TOKEN_PATH, data=token_form(client, rsa_party, patient), headers={"DPoP": proof}
    )
    assert response.status_code == 200, response.get_json()
    token = response.get_json()["access_token"]
    assert jwt_parts(token)[1]["cnf"]["jkt"] == rfc7638_thumbprint(dpop_key)
    api_proof = factories.make_proof(
        dpop_key,
        method="POST",
        url=client.public + SEARCH,
        iat=int(time.time()),
        access_token=token,
        header=header,
    )
    read = client.flask.post(
        SEARCH,
        data={"patient.identifier": f"{FNR}|{patient}"},
        headers={"Authorization": f"DPoP {token}", "DPoP": api_proof},
    )
    assert read.status_code == 200, read.get_data(as_text=True)


@pytest.fixture
def rsa_token(client: ApiClient, rsa_party: Party) -> tuple[str, str, RSAKey]:
    """A token bound to an RSA key, for the patient it names; and that key."""
    patient = published(client, 73.0)
    dpop_key = rsa_jwk_key(2048, "RS512")
    proof = dpop_proof(dpop_key, method="POST", url=client.issuer + TOKEN_PATH)
    response = client.flask.post(
        TOKEN_PATH, data=token_form(client, rsa_party, patient), headers={"DPoP": proof}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"], patient, dpop_key


def api_refuses(client: ApiClient, token: str, patient: str, proof: str) -> None:
    response = client.flask.post(
        SEARCH,
        data={"patient.identifier": f"{FNR}|{patient}"},
        headers={"Authorization": f"DPoP {token}", "DPoP": proof},
    )
    assert response.status_code == 401, response.get_data(as_text=True)
    assert challenge_params(response)["error"] in ("invalid_dpop_proof", "invalid_token")
    assert patient not in response.get_data(as_text=True)


def test_1024_bit_rsa_proof_is_refused_at_the_token_endpoint_and_the_api(
    client: ApiClient, rsa_party: Party, rsa_token: tuple[str, str, RSAKey]
) -> None:
    weak = weak_rsa_key()
    for alg in ("RS256", "PS256"):
        proof = factories.make_proof(
            weak, method="POST", url=client.issuer + TOKEN_PATH, iat=int(time.time()), header={"alg": alg}
        )
        response = client.flask.post(
            TOKEN_PATH, data=token_form(client, rsa_party, fnr()), headers={"DPoP": proof}
        )
        assert response.status_code == 400, response.get_json()
        assert response.get_json()["error"] == "invalid_dpop_proof"
        assert "access_token" not in response.get_json()
    token, patient, _ = rsa_token
    proof = factories.make_proof(
        weak, method="POST", url=client.public + SEARCH, iat=int(time.time()), access_token=token
    )
    api_refuses(client, token, patient, proof)


def test_1024_bit_rsa_assertion_is_refused(client: ApiClient, rsa_party: Party) -> None:
    """Signed by a 1024-bit key the client never registered (registration refuses such keys too)."""
    form = token_form(client, rsa_party, fnr())
    claims = jwt_parts(form["client_assertion"])[1]
    form["client_assertion"] = factories.sign(
        {"alg": "RS512", "typ": "client-authentication+jwt"}, claims, weak_rsa_key()
    )
    proof = dpop_proof(rsa_jwk_key(), method="POST", url=client.issuer + TOKEN_PATH)
    response = client.flask.post(TOKEN_PATH, data=form, headers={"DPoP": proof})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_none_and_hs256_proofs_are_still_refused_for_an_rsa_bound_token(
    client: ApiClient, rsa_token: tuple[str, str, RSAKey]
) -> None:
    token, patient, key = rsa_token
    jwk = factories.public_jwk(key)
    claims = factories.proof_claims(
        method="POST", url=client.public + SEARCH, iat=int(time.time()), access_token=token
    )
    api_refuses(
        client, token, patient, factories.raw_jws({"typ": "dpop+jwt", "alg": "none", "jwk": jwk}, claims)
    )
    for secret in (json.dumps(jwk).encode(), b64url_decode(jwk["n"]), key.as_bytes(private=False)):
        forged = factories.hs256_jws({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}, claims, secret)
        api_refuses(client, token, patient, forged)
    # The sanity step: the same token with a proper RS512 proof is still accepted.
    good = dpop_proof(key, method="POST", url=client.public + SEARCH, access_token=token)
    ok = client.flask.post(
        SEARCH,
        data={"patient.identifier": f"{FNR}|{patient}"},
        headers={"Authorization": f"DPoP {token}", "DPoP": good},
    )
    assert ok.status_code == 200


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_none_and_hs256_assertions_are_still_refused_for_an_rsa_client(
    client: ApiClient, rsa_party: Party, alg: str
) -> None:
    form = token_form(client, rsa_party, fnr())
    claims = jwt_parts(form["client_assertion"])[1]
    header = {"typ": "client-authentication+jwt", "alg": alg}
    public = rsa_party.jwks()["keys"][0]
    form["client_assertion"] = (
        factories.raw_jws(header, claims)
        if alg == "none"
        else factories.hs256_jws(header, claims, rsa_party.key.as_bytes(private=False))
    )
    assert public["kty"] == "RSA"
    proof = dpop_proof(rsa_jwk_key(), method="POST", url=client.issuer + TOKEN_PATH)
    response = client.flask.post(TOKEN_PATH, data=form, headers={"DPoP": proof})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


# --- the consumer client, against gunicorn over real HTTP ---------------------------------------------


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with live_server(server_env(settings), workers=1, log=tmp_path / "server.log") as base:
        yield base


@pytest.mark.slow
@pytest.mark.parametrize(("client_alg", "dpop_alg"), [("RS512", "RS512"), ("PS256", "PS384")])
def test_dho_client_with_rsa_keys_reads_over_http(
    client: ApiClient, services: Services, server: str, client_alg: str, dpop_alg: str
) -> None:
    patient = published(client, 74.5)
    client_id = f"rsa-dho-client-{uuid.uuid4().hex[:8]}"
    client_key = rsa_jwk_key(2048, client_alg)
    services.clients.add(
        client_id,
        orgnr=HOSPITAL,
        jwks={"keys": [client_key.as_dict(private=False)]},
        scopes=frozenset({READ}),
        point_of_care=HOSPITAL_UNIT,
    )
    dho = DhoClient(
        issuer=server,
        client_id=client_id,
        client_key=client_key,
        scope=READ,
        attestation=attestation(
            legal_entity=HOSPITAL, point_of_care=HOSPITAL_UNIT, patient=(FNR, patient), hpr_number="1234567"
        ),
        dpop_key=factories.rsa_key(2048),
        dpop_alg=dpop_alg,
    )
    response = dho.request("POST", f"{server}{SEARCH}", data={"patient.identifier": f"{FNR}|{patient}"})
    assert response.status_code == 200, response.text
    assert [e["resource"]["valueQuantity"]["value"] for e in response.json()["entry"]] == [74.5]
    claims: dict[str, Any] = jwt_parts(dho.access_token())[1]
    assert claims["cnf"]["jkt"] == rfc7638_thumbprint(factories.rsa_key(2048))
