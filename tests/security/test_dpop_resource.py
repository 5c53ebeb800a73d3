"""DPOP-01..DPOP-19: DPoP at the resource server over HTTP (RFC 9449; OIDF FAPI2 DPoP negative tests).

The token is always the real one from the token endpoint; each test breaks one thing in the proof (or
in how it is sent), checks the refusal, and then runs the sanity step (same token, fresh valid proof ->
200). DPOP-12's 50-way race across gunicorn workers is in ``test_replay_across_workers.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from joserfc.errors import SecurityWarning
from joserfc.jwk import RSAKey

from auth.client import ASSERTION_TYPE, attestation, client_assertion
from auth.dpop import DPOP_ALGS
from auth.server import TOKEN_PATH
from sharing_api.app import create_app
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.auth import factories
from tests.security.helpers import Probe, Scene, b64url_decode, challenge_params

REPLAY_KEY_PREFIX = "{dho}:replay:dpop:"  # RedisState key prefix (auth/replaystate.py) + the namespace


def proof_refused(probe: Probe, proof: str, *, error: str = "invalid_dpop_proof") -> None:
    """The real token with ``proof`` is refused with ``error``; then the sanity step."""
    before = probe.snapshot()
    probe.assert_refused(probe.send(probe.headers(proof=proof)), status=401, error=error, before=before)
    probe.assert_still_works()


def accepted(probe: Probe, proof: str, **kwargs: Any) -> None:
    response = probe.send(probe.headers(proof=proof), **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)


# --- DPOP-01 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
@pytest.mark.parametrize("with_proof", [True, False], ids=["with-proof", "without-proof"])
def test_dpop_01_bound_token_sent_as_bearer_is_refused(probe: Probe, scheme: str, with_proof: bool) -> None:
    headers = {"Authorization": f"{scheme} {probe.token}"}
    if with_proof:
        headers["DPoP"] = probe.proof()
    before = probe.snapshot()
    probe.assert_refused(probe.send(headers), status=401, error="invalid_token", before=before)
    probe.assert_still_works()


# --- DPOP-02 ---------------------------------------------------------------------------------------


def test_dpop_02_dpop_scheme_without_a_proof_is_refused(probe: Probe) -> None:
    before = probe.snapshot()
    response = probe.send({"Authorization": f"DPoP {probe.token}"})
    probe.assert_refused(response, error="invalid_dpop_proof", before=before)
    probe.assert_still_works()


@pytest.mark.parametrize("same", [True, False], ids=["same-proof-twice", "two-valid-proofs"])
def test_dpop_02_two_dpop_headers_are_refused(probe: Probe, same: bool) -> None:
    first = probe.proof()
    second = first if same else probe.proof()
    headers = [("Authorization", f"DPoP {probe.token}"), ("DPoP", first), ("DPoP", second)]
    before = probe.snapshot()
    probe.assert_refused(probe.send(headers), error="invalid_dpop_proof", before=before)
    probe.assert_still_works()


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-jwt",
        "a.b.c",
        "e30.e30.e30",
        '{"typ":"dpop+jwt"}',
        "eyJ0eXAiOiJkcG9wK2p3dCJ9..",
        "a.b.c.d.e",
    ],
    ids=["empty", "word", "abc", "empty-objects", "json", "no-payload", "five-segments"],
)
def test_dpop_02_proof_that_is_not_a_jwt_is_refused(probe: Probe, value: str) -> None:
    proof_refused(probe, value)


# --- DPOP-03 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["typ", "alg", "jwk"])
def test_dpop_03_proof_missing_a_header_member_is_refused(probe: Probe, member: str) -> None:
    proof_refused(probe, probe.proof(drop_header=[member]))


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat", "ath"])
def test_dpop_03_proof_missing_a_claim_is_refused(probe: Probe, claim: str) -> None:
    proof_refused(probe, probe.proof(drop_claims=[claim]))


# --- DPOP-04 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ",
    ["JWT", "at+jwt", "client-authentication+jwt", "dpop", "application/dpop+jwt+x", 1, None, ["dpop+jwt"]],
    ids=["JWT", "at+jwt", "client-assertion", "dpop", "suffixed", "number", "null", "array"],
)
def test_dpop_04_proof_with_the_wrong_typ_is_refused(probe: Probe, typ: Any) -> None:
    proof_refused(probe, probe.proof(header={"typ": typ}))


# --- DPOP-05 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None"])
def test_dpop_05_unsigned_proof_is_refused(probe: Probe, alg: str) -> None:
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": factories.public_jwk(probe.key)}
    claims = factories.proof_claims(
        method=probe.method, url=probe.url, iat=int(time.time()), access_token=probe.token
    )
    proof_refused(probe, factories.raw_jws(header, claims))


def test_dpop_05_hs256_proof_keyed_with_its_own_public_jwk_is_refused(probe: Probe) -> None:
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": factories.public_jwk(probe.key)}
    claims = factories.proof_claims(
        method=probe.method, url=probe.url, iat=int(time.time()), access_token=probe.token
    )
    secret = json.dumps(factories.public_jwk(probe.key)).encode()
    proof_refused(probe, factories.hs256_jws(header, claims, secret))


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_dpop_05_rsa_1024_proof_is_refused(probe: Probe, alg: str) -> None:
    """RSA is allowed (HelseID clients), but never with a key under 2048 bits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        weak = RSAKey.generate_key(1024, private=True)
    proof_refused(probe, probe.proof(key=weak, header={"alg": alg}))


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_dpop_07_rsa_proof_by_a_key_the_token_is_not_bound_to_is_refused(probe: Probe, alg: str) -> None:
    """A valid RSA-2048 proof, but the token is bound to the client's EC key."""
    proof_refused(probe, probe.proof(key=factories.rsa_key(2048), header={"alg": alg}), error="invalid_token")


# --- DPOP-06 ---------------------------------------------------------------------------------------


def test_dpop_06_proof_with_a_bad_signature_is_refused(probe: Probe) -> None:
    """The header carries the bound key, the signature is another key's."""
    proof_refused(probe, probe.proof(signing_key=factories.ec_key()))


def test_dpop_06_proof_with_a_flipped_signature_bit_is_refused(probe: Probe) -> None:
    header, payload, signature = probe.proof().split(".")
    raw = bytearray(b64url_decode(signature))
    raw[5] ^= 1
    proof_refused(probe, f"{header}.{payload}.{factories.b64url(bytes(raw))}")


def test_dpop_06_jwk_with_the_private_key_is_refused(probe: Probe) -> None:
    proof_refused(probe, probe.proof(header={"jwk": probe.key.as_dict(private=True)}))


@pytest.mark.parametrize(
    "change",
    [
        {"x": "not-base64!"},
        {"x": "AAAA"},
        {"y": factories.b64url(b"\x01" * 32)},  # not on the curve
        {"crv": "P-384"},
        {"crv": "secp256k1"},
        {"kty": "RSA"},
        {"kty": None},
    ],
    ids=["x-not-base64", "x-short", "point-off-curve", "crv-mismatch", "crv-unknown", "kty-rsa", "kty-null"],
)
def test_dpop_06_malformed_jwk_is_refused(probe: Probe, change: dict[str, Any]) -> None:
    proof_refused(probe, probe.proof(header={"jwk": {**factories.public_jwk(probe.key), **change}}))


def test_dpop_06_jwk_without_y_is_refused(probe: Probe) -> None:
    jwk = {k: v for k, v in factories.public_jwk(probe.key).items() if k != "y"}
    proof_refused(probe, probe.proof(header={"jwk": jwk}))


@pytest.mark.parametrize("alg", ["HS256", "ES256"])
def test_dpop_06_symmetric_jwk_is_refused(probe: Probe, alg: str) -> None:
    secret = b"s" * 32
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": {"kty": "oct", "k": factories.b64url(secret)}}
    claims = factories.proof_claims(
        method=probe.method, url=probe.url, iat=int(time.time()), access_token=probe.token
    )
    proof = (
        factories.hs256_jws(header, claims, secret)
        if alg == "HS256"
        else factories.sign(header, claims, probe.key)
    )
    proof_refused(probe, proof)


# --- DPOP-07 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["P-256", "P-384", "Ed25519"])
def test_dpop_07_valid_proof_from_another_key_is_invalid_token(probe: Probe, key: str) -> None:
    other = factories.okp_key() if key == "Ed25519" else factories.ec_key(key)
    proof_refused(probe, probe.proof(key=other), error="invalid_token")


# --- DPOP-08 ---------------------------------------------------------------------------------------


def test_dpop_08_wrong_ath_is_refused(probe: Probe) -> None:
    proof_refused(probe, probe.proof(claims={"ath": factories.b64url(b"\x00" * 32)}))


def test_dpop_08_ath_of_another_token_is_refused(scene: Scene) -> None:
    for probe, other in ((scene.read, scene.write.token), (scene.write, scene.read.token)):
        proof_refused(probe, probe.proof(claims={"ath": factories.proof_claims(access_token=other)["ath"]}))


@pytest.mark.parametrize("ath", ["", 1, None], ids=["empty", "number", "null"])
def test_dpop_08_ath_that_is_not_a_hash_string_is_refused(probe: Probe, ath: Any) -> None:
    proof_refused(probe, probe.proof(claims={"ath": ath}))


# --- DPOP-09 ---------------------------------------------------------------------------------------


def test_dpop_09_wrong_htm_is_refused(probe: Probe) -> None:
    for htm in ("PUT", "DELETE", "HEAD", probe.method.lower(), "GET" if probe.method == "POST" else "POST"):
        proof_refused(probe, probe.proof(method=htm))


@pytest.mark.parametrize(
    "htu",
    [
        "https://dho.example.test/{other_tenant}/fhir/Observation",
        "https://dho.example.test/",
        "https://dho.example.test{path}/x",
        "https://evil.example.test{path}",
        "https://dho.example.test.evil.example{path}",
        "http://dho.example.test{path}",
        "https://dho.example.test:8443{path}",
        "https://user@dho.example.test{path}",
        "/relative{path}",
        "{path}",
        "urn:example:{path}",
    ],
    ids=[
        "other-tenant",
        "root",
        "longer-path",
        "other-host",
        "suffix-host",
        "http-vs-https",
        "other-port",
        "userinfo",
        "relative",
        "path-only",
        "urn",
    ],
)
def test_dpop_09_htu_for_another_resource_is_refused(probe: Probe, htu: str) -> None:
    url = htu.format(path=probe.path, other_tenant="923456783")
    proof_refused(probe, probe.proof(url=url))


# --- DPOP-10 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("htu", "query"),
    [
        ("{url}?a=1#frag", ""),
        ("{url}", "?_pretty=true"),
        ("{url}?_pretty=true", "?_pretty=true"),
        ("{url}?other=2", "?_pretty=true"),
        ("HTTPS://DHO.EXAMPLE.TEST{path}", ""),
        ("https://Dho.Example.Test{path}", ""),
        ("https://dho.example.test:443{path}", ""),
        ("HTTPS://DHO.EXAMPLE.TEST:443{path}?x=y#z", "?x=y"),
    ],
    ids=[
        "htu-query-fragment",
        "request-query",
        "both-query",
        "different-queries",
        "upper-case",
        "mixed-case-host",
        "explicit-443",
        "all-at-once",
    ],
)
def test_dpop_10_htu_is_compared_after_normalisation(reader: Probe, htu: str, query: str) -> None:
    url = htu.format(url=reader.url, path=reader.path)
    accepted(reader, reader.proof(url=url), path=reader.path + query)
    reader.assert_still_works()


def test_dpop_10_normalised_htu_on_a_write(scene: Scene) -> None:
    write = scene.write
    response = write.send(
        write.headers(proof=write.proof(url="HTTPS://DHO.EXAMPLE.TEST:443" + write.path + "?q#f"))
    )
    assert response.status_code == 201


# --- DPOP-11 ---------------------------------------------------------------------------------------


def _seconds_from_now(offset: int, *, outward: bool) -> int:
    """A whole-second ``iat`` ``offset`` seconds from now, rounded away from now (``outward``) or towards it.

    ``int(time.time()) + 11`` can be as little as 10.01 s ahead, and the server reads its clock a moment
    later still: inside a 10 s skew. Rounding the right way keeps each case on its side of the window.
    """
    now = time.time()
    away_from_now = math.ceil if offset > 0 else math.floor
    towards_now = math.floor if offset > 0 else math.ceil
    return int((away_from_now if outward else towards_now)(now)) + offset


@pytest.mark.parametrize("offset", [-3600, -61, 61, 3600, 11])
def test_dpop_11_iat_outside_the_window_is_refused(probe: Probe, offset: int) -> None:
    proof_refused(probe, probe.proof(iat=_seconds_from_now(offset, outward=True)))


@pytest.mark.parametrize("iat", ["now", None, True, "NaN"], ids=["string", "null", "bool", "nan-string"])
def test_dpop_11_non_numeric_iat_is_refused(probe: Probe, iat: Any) -> None:
    proof_refused(probe, probe.proof(claims={"iat": iat}))


@pytest.mark.parametrize("offset", [-10, 0, 10])
def test_dpop_11_iat_within_ten_seconds_is_accepted(probe: Probe, offset: int) -> None:
    response = probe.send(probe.headers(proof=probe.proof(iat=_seconds_from_now(offset, outward=False))))
    assert response.status_code == (201 if probe.kind == "write" else 200)


# --- DPOP-12 (sequential; the concurrent case runs against gunicorn) --------------------------------


def test_dpop_12_same_proof_twice_is_accepted_once(probe: Probe) -> None:
    headers = probe.headers()
    first = probe.send(headers)
    assert first.status_code == (201 if probe.kind == "write" else 200)
    before = probe.snapshot()
    second = probe.send(headers)
    probe.assert_refused(second, error="invalid_dpop_proof", before=before)
    assert "replay" in challenge_params(second)["error_description"]
    probe.assert_still_works()


def test_dpop_12_a_refused_request_does_not_burn_the_proof(probe: Probe) -> None:
    """The jti is claimed last: a request refused for its token leaves its proof usable."""
    proof = probe.proof()
    refused = probe.send({"Authorization": f"DPoP {probe.mint(aud='other')}", "DPoP": proof})
    assert refused.status_code == 401
    assert probe.send(probe.headers(proof=proof)).status_code == (201 if probe.kind == "write" else 200)


# --- DPOP-13 ---------------------------------------------------------------------------------------


@pytest.fixture
def clock(app: Flask, services: Services) -> Iterator[list[float]]:
    """The resource server's clock, settable: ``clock[0] = t``. (The token service keeps real time.)"""
    now = [time.time()]
    app.extensions["dho"] = dataclasses.replace(
        services, guard=dataclasses.replace(services.guard, clock=lambda: now[0])
    )
    yield now
    app.extensions["dho"] = services


def _replay_keys(settings: Settings) -> dict[bytes, int]:
    r = redis.Redis.from_url(settings.redis_url or "")
    return {key: int(r.ttl(key)) for key in r.scan_iter(match=f"{REPLAY_KEY_PREFIX}*")}


def test_dpop_13_replay_just_inside_window_plus_skew_is_refused(
    reader: Probe, clock: list[float], settings: Settings
) -> None:
    """Duende's case: a proof whose ``iat`` is at the edge of the future skew is first used at once, then
    replayed just before it ages out. Its jti must still be remembered at that moment."""
    iat = int(time.time())
    proof = reader.proof(iat=iat)
    before = _replay_keys(settings)
    clock[0] = iat - 10  # the proof is 10 s "ahead": just inside the skew
    accepted(reader, proof)
    new = {k: ttl for k, ttl in _replay_keys(settings).items() if k not in before}
    assert len(new) == 1
    # The jti lives at least as long as the proof is acceptable: from iat - 10 until iat + 60.
    assert next(iter(new.values())) >= 70
    clock[0] = iat + 60  # just inside max age
    accepted(reader, reader.proof(iat=iat))  # control: a fresh proof with that iat is acceptable now
    response = reader.send(reader.headers(proof=proof))
    reader.assert_refused(response, error="invalid_dpop_proof")
    assert "replay" in challenge_params(response)["error_description"]


# --- DPOP-14 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [257, 4096, 10 * 1024], ids=["257", "4KB", "10KB"])
def test_dpop_14_huge_jti_is_refused_without_redis_growth(
    probe: Probe, length: int, settings: Settings
) -> None:
    r = redis.Redis.from_url(settings.redis_url or "")
    keys = r.dbsize()
    before = probe.snapshot()
    response = probe.send(probe.headers(proof=probe.proof(jti="j" * length)))
    probe.assert_refused(response, status=(400, 401), before=before)
    assert r.dbsize() == keys
    probe.assert_still_works()


# --- DPOP-15 ---------------------------------------------------------------------------------------


def test_dpop_15_unknown_header_parameters_and_claims_are_ignored(probe: Probe) -> None:
    proof = probe.proof(
        header={"x-vendor": "acme", "ext": {"a": [1, 2]}, "cty": "none-of-your-business"},
        claims={"foo": "bar", "nested": {"deep": [1, {"x": None}]}, "exp": int(time.time()) + 60, "sub": "x"},
    )
    response = probe.send(probe.headers(proof=proof))
    assert response.status_code == (201 if probe.kind == "write" else 200)


# --- DPOP-16 ---------------------------------------------------------------------------------------


@pytest.fixture
def nonce_app(settings: Settings, app: Flask) -> Iterator[Flask]:
    """A second app on the same database and Redis, with server-provided nonces required."""
    second = create_app(settings.model_copy(update={"dpop_nonce": True}))
    yield second
    second.extensions["dho"].engine.dispose()


def _nonce_token(app: Flask, scene: Scene) -> tuple[str, str]:
    """A hospital token from the nonce-mode token endpoint: first ``use_dpop_nonce``, then success.

    Returns the token and the token endpoint's nonce."""
    client = scene.client
    party = client.parties["hospital"]
    details = attestation(
        legal_entity=party.orgnr,
        point_of_care=party.point_of_care or party.orgnr,
        patient=(FNR, scene.patient),
        hpr_number=party.hpr,
    )

    def post(nonce: str | None) -> Any:
        form = {
            "grant_type": "client_credentials",
            "scope": "dho-share/observation.read",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(
                party.key, client_id=party.client_id, issuer=client.issuer, assertion_details=details
            ),
        }
        proof = factories.make_proof(
            client.dpop_key, method="POST", url=client.issuer + TOKEN_PATH, iat=int(time.time()), nonce=nonce
        )
        return app.test_client().post(TOKEN_PATH, data=form, headers={"DPoP": proof})

    first = post(None)
    assert first.status_code == 400
    assert first.get_json()["error"] == "use_dpop_nonce"
    as_nonce = first.headers["DPoP-Nonce"]
    second = post(as_nonce)
    assert second.status_code == 200, second.get_json()
    return second.get_json()["access_token"], as_nonce


def test_dpop_16_nonce_mode(nonce_app: Flask, scene: Scene) -> None:
    reader = scene.read
    token, as_nonce = _nonce_token(nonce_app, scene)
    http = nonce_app.test_client()

    def get(nonce: str | None) -> Any:
        proof = reader.proof(token, nonce=nonce)
        return http.get(reader.path, headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    # No nonce: 401 use_dpop_nonce with a fresh DPoP-Nonce.
    missing = get(None)
    reader.assert_refused(missing, error="use_dpop_nonce")
    rs_nonce = missing.headers["DPoP-Nonce"]
    assert rs_nonce
    # Stale (two windows old), forged, and the token endpoint's nonce: all refused with a new nonce.
    stale = nonce_app.extensions["dho"].guard.nonce.issue(time.time() - 900)
    forged = rs_nonce.split(".")[0] + "." + "A" * 32
    for bad in (stale, forged, as_nonce, "", "1.2"):
        response = get(bad)
        reader.assert_refused(response, error="use_dpop_nonce")
        assert response.headers["DPoP-Nonce"]
    # The right nonce: 200 (and again with another fresh proof).
    assert get(rs_nonce).status_code == 200
    assert get(rs_nonce).status_code == 200


def test_dpop_16_rs_nonce_is_refused_at_the_token_endpoint(nonce_app: Flask, scene: Scene) -> None:
    token, _ = _nonce_token(nonce_app, scene)
    reader = scene.read
    http = nonce_app.test_client()
    rs_nonce = http.get(
        reader.path, headers={"Authorization": f"DPoP {token}", "DPoP": reader.proof(token)}
    ).headers["DPoP-Nonce"]
    party = scene.client.parties["hospital"]
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(
            party.key, client_id=party.client_id, issuer=scene.client.issuer
        ),
    }
    proof = factories.make_proof(
        scene.client.dpop_key,
        method="POST",
        url=scene.client.issuer + TOKEN_PATH,
        iat=int(time.time()),
        nonce=rs_nonce,
    )
    response = http.post(TOKEN_PATH, data=form, headers={"DPoP": proof})
    assert response.status_code == 400
    assert response.get_json()["error"] == "use_dpop_nonce"


# --- DPOP-17 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "htu_base"),
    [
        (
            {"X-Forwarded-Host": "evil.example.test", "X-Forwarded-Proto": "https"},
            "https://evil.example.test",
        ),
        ({"X-Forwarded-Host": "dho.example.test", "X-Forwarded-Proto": "http"}, "http://dho.example.test"),
        ({"Host": "evil.example.test", "X-Forwarded-Proto": "http"}, "http://evil.example.test"),
        (
            {"Forwarded": "host=evil.example.test;proto=http", "X-Forwarded-Port": "8080"},
            "http://evil.example.test:8080",
        ),
    ],
    ids=["xf-host", "xf-proto", "host", "forwarded"],
)
def test_dpop_17_spoofed_forwarding_headers_do_not_change_the_expected_htu(
    probe: Probe, headers: dict[str, str], htu_base: str
) -> None:
    attacker_htu = htu_base + probe.path
    before = probe.snapshot()
    response = probe.send({**probe.headers(proof=probe.proof(url=attacker_htu)), **headers})
    probe.assert_refused(response, error="invalid_dpop_proof", before=before)
    # The configured external URL is what counts, whatever the forwarding headers say.
    response = probe.send({**probe.headers(), **headers})
    assert response.status_code == (201 if probe.kind == "write" else 200)


# --- DPOP-18 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["dpop", "DPOP", "Dpop"])
def test_dpop_18_dpop_header_name_is_case_insensitive(probe: Probe, header: str) -> None:
    response = probe.send({"Authorization": f"DPoP {probe.token}", header: probe.proof()})
    assert response.status_code == (201 if probe.kind == "write" else 200)


@pytest.mark.parametrize("scheme", ["dpop", "DPOP", "dPoP"])
def test_dpop_18_authorization_scheme_is_case_insensitive(probe: Probe, scheme: str) -> None:
    response = probe.send({"Authorization": f"{scheme} {probe.token}", "DPoP": probe.proof()})
    assert response.status_code == (201 if probe.kind == "write" else 200)


# --- DPOP-19 ---------------------------------------------------------------------------------------


def test_dpop_19_rsa_is_advertised_where_the_verifier_reads_its_allowlist(reader: Probe) -> None:
    """DPOP-19, the "PS256 advertised" branch: RS/PS 256/384/512 are advertised (discovery and the
    ``algs`` of the challenge) from the verifier's own allowlist; an RSA-2048 proof of a token bound to
    that key is accepted over HTTP in tests/security/test_rsa_clients.py."""
    discovery = reader.client.flask.get("/.well-known/openid-configuration").get_json()
    advertised = discovery["dpop_signing_alg_values_supported"]
    assert advertised == list(DPOP_ALGS)
    assert {"PS256", "PS384", "PS512", "RS256", "RS384", "RS512"} <= set(advertised)
    response = reader.send({"Authorization": f"DPoP {reader.token}"})
    assert challenge_params(response)["algs"].split() == list(DPOP_ALGS)


def test_dpop_19_token_endpoint_refuses_a_1024_bit_rsa_proof(scene: Scene) -> None:
    client = scene.client
    party = client.parties["hospital"]
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(party.key, client_id=party.client_id, issuer=client.issuer),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        weak = RSAKey.generate_key(1024, private=True)
    proof = factories.make_proof(
        weak, method="POST", url=client.issuer + TOKEN_PATH, iat=int(time.time()), header={"alg": "RS256"}
    )
    response = client.flask.post(TOKEN_PATH, data=form, headers={"DPoP": proof})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_dpop_proof"
    assert "access_token" not in response.get_json()
