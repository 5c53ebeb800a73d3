"""private_key_jwt client assertions (RFC 7523, HelseID profile): CLA-01..CLA-06."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, RSAKey

from auth.assertions import CLIENT_ASSERTION_ALGS, ClientAssertion, verify_client_assertion
from auth.attestation import parse_attestation
from auth.errors import InvalidClient, StateUnavailable
from auth.replay import InMemoryReplayCache, RedisReplayCache, ReplayCache
from tests.auth.factories import (
    CLIENT_ID,
    ISSUER,
    NOW,
    TOKEN_ENDPOINT,
    b64url,
    ec_key,
    hs256_jws,
    jwks_of,
    make_assertion,
    okp_key,
    public_jwk,
    raw_jws,
    rsa_key,
    sign,
)


@pytest.fixture
def client_key() -> ECKey:
    return ec_key("P-384")  # HelseID's sample EC key is ES384


def registry_of(key: Key, client_id: str = CLIENT_ID, **extra: Any) -> dict[str, Mapping[str, Any]]:
    return {client_id: jwks_of(key, **extra)}


def verify(
    assertion: str,
    clients: Mapping[str, Mapping[str, Any]],
    replay: ReplayCache | None = None,
    **kwargs: Any,
) -> ClientAssertion:
    options: dict[str, Any] = {"issuer": ISSUER, "now": NOW}
    options.update(kwargs)
    return verify_client_assertion(
        assertion,
        client_jwks=clients.get,
        replay=InMemoryReplayCache() if replay is None else replay,
        **options,
    )


# --- accepted ----------------------------------------------------------------------------------------


def test_valid_es384_assertion(client_key: ECKey) -> None:
    result = verify(make_assertion(client_key), registry_of(client_key))
    assert result.client_id == CLIENT_ID
    assert result.alg == "ES384"
    assert result.expires_at == NOW + 30
    assert result.assertion_details is None


@pytest.mark.parametrize("alg", ["PS256", "PS384", "PS512", "RS256", "RS384", "RS512"])
def test_rsa_assertions(alg: str) -> None:
    """HelseID clients sign with RSA (RS512 in reference/helseid/client-assertion.header.json)."""
    key = rsa_key()
    assert verify(make_assertion(key, alg=alg), registry_of(key)).alg == alg


def test_helseid_rs512_assertion_header_as_in_the_reference(shared_dir: Path) -> None:
    header = json.loads((shared_dir / "reference" / "helseid" / "client-assertion.header.json").read_text())
    key = rsa_key()
    claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": ISSUER, "exp": NOW + 30, "jti": "j"}
    assertion = sign(header, claims, key)
    assert verify(assertion, registry_of(key)).alg == header["alg"] == "RS512"


def test_ed25519_assertion() -> None:
    key = okp_key()
    assert verify(make_assertion(key), registry_of(key)).alg == "EdDSA"


@pytest.mark.parametrize("crv", ["P-256", "P-521"])
def test_other_ec_curves(crv: str) -> None:
    key = ec_key(crv)
    verify(make_assertion(key), registry_of(key))


def test_key_selected_by_kid_among_several(client_key: ECKey) -> None:
    other = ec_key("P-384")
    clients = {CLIENT_ID: {"keys": [public_jwk(other, kid="old"), public_jwk(client_key, kid="new")]}}
    assert verify(make_assertion(client_key, kid="new"), clients).kid == "new"
    with pytest.raises(InvalidClient):
        verify(make_assertion(client_key, kid="old"), clients)


def test_a_key_replaced_under_the_same_kid_no_longer_verifies(client_key: ECKey) -> None:
    """Imported keys are remembered by their JWK (issue 12): new key material under the old ``kid`` is
    another key, so the old key's signatures are refused from the first request after the change."""
    verify(make_assertion(client_key, kid="k1"), {CLIENT_ID: jwks_of(client_key, kid="k1")})
    replacement = ec_key("P-384")
    rotated = {CLIENT_ID: jwks_of(replacement, kid="k1")}
    with pytest.raises(InvalidClient, match="registered key"):
        verify(make_assertion(client_key, kid="k1"), rotated)
    verify(make_assertion(replacement, kid="k1"), rotated)


def test_a_key_dropped_from_the_registration_no_longer_verifies(client_key: ECKey) -> None:
    verify(make_assertion(client_key), registry_of(client_key))
    with pytest.raises(InvalidClient, match="registered key"):
        verify(make_assertion(client_key), registry_of(ec_key("P-384")))


def test_without_kid_every_matching_key_is_tried(client_key: ECKey) -> None:
    """HelseID's sample JWKs have no kid."""
    clients = {CLIENT_ID: {"keys": [public_jwk(ec_key("P-384")), public_jwk(client_key)]}}
    verify(make_assertion(client_key), clients)


def test_private_members_in_the_registration_are_ignored(client_key: ECKey) -> None:
    clients = {CLIENT_ID: {"keys": [client_key.as_dict(private=True)]}}
    verify(make_assertion(client_key), clients)


def test_helseid_tillitsrammeverk_assertion_carries_its_attestation(
    client_key: ECKey, shared_dir: Path
) -> None:
    payload = json.loads(
        (shared_dir / "reference" / "helseid" / "client-assertion.payload.tillitsrammeverk.json").read_text()
    )
    payload.update(aud=ISSUER, iat=NOW, nbf=NOW, exp=NOW + 30)
    assertion = sign({"alg": "ES384", "typ": "client-authentication+jwt"}, payload, client_key)
    result = verify(assertion, {payload["iss"]: jwks_of(client_key)})
    attestation = parse_attestation(result.assertion_details, path="assertion_details")
    assert attestation.legal_entity.id == "997506499"


# --- CLA-01: algorithm and key ----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(client_key: ECKey, alg: str) -> None:
    header = {"alg": alg, "typ": "client-authentication+jwt"}
    claims = json.loads(
        json.dumps({"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": ISSUER, "exp": NOW + 30, "jti": "x"})
    )
    with pytest.raises(InvalidClient):
        verify(raw_jws(header, claims), registry_of(client_key))
    with pytest.raises(InvalidClient):
        verify(raw_jws(header, claims, b"sig"), registry_of(client_key))


def test_hs256_keyed_with_the_registered_public_key(client_key: ECKey) -> None:
    header = {"alg": "HS256", "typ": "client-authentication+jwt"}
    claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": ISSUER, "exp": NOW + 30, "jti": "x"}
    for secret in (json.dumps(public_jwk(client_key)).encode(), client_key.as_bytes(private=False)):
        with pytest.raises(InvalidClient, match="alg"):
            verify(hs256_jws(header, claims, secret), registry_of(client_key))


@pytest.mark.parametrize("alg", ["RS256", "PS512"])
def test_rsa_outside_a_narrower_allowlist_is_refused(alg: str) -> None:
    """CLA-01 (RS256 refused when the policy does not list it): a deployment may narrow the list."""
    key = rsa_key()
    with pytest.raises(InvalidClient, match="alg"):
        verify(make_assertion(key, alg=alg), registry_of(key), allowed_algs=("ES256", "ES384"))


def test_signed_by_an_unregistered_key(client_key: ECKey) -> None:
    with pytest.raises(InvalidClient, match="registered key"):
        verify(make_assertion(ec_key("P-384")), registry_of(client_key))


@pytest.mark.parametrize("alg", ["PS256", "RS256", "RS512"])
def test_registered_rsa_key_below_2048_bits_is_never_used(alg: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        weak = RSAKey.generate_key(1024, private=True)
    with pytest.raises(InvalidClient, match="registered key"):
        verify(make_assertion(weak, alg=alg), registry_of(weak))


def test_registered_key_for_encryption_is_not_used(client_key: ECKey) -> None:
    with pytest.raises(InvalidClient):
        verify(make_assertion(client_key), registry_of(client_key, use="enc"))


def test_key_of_another_curve_is_not_used(client_key: ECKey) -> None:
    p256 = ec_key("P-256")
    signed_p256_as_es384 = sign(
        {"alg": "ES384", "typ": "client-authentication+jwt"}, {"iss": CLIENT_ID}, p256, alg="ES256"
    )
    with pytest.raises(InvalidClient):
        verify(signed_p256_as_es384, registry_of(p256))


@pytest.mark.parametrize("param", ["jku", "x5u", "jwk", "x5c"])
def test_key_carrying_headers_are_refused(client_key: ECKey, param: str) -> None:
    value: Any = public_jwk(client_key) if param == "jwk" else "https://evil.example/keys"
    with pytest.raises(InvalidClient, match="forbidden"):
        verify(make_assertion(client_key, header={param: value}), registry_of(client_key))


def test_allowlist_cannot_include_symmetric_or_none(client_key: ECKey) -> None:
    for algs in (("HS256",), ("none",), ("ES384", "HS512")):
        with pytest.raises(ValueError, match="may not be allowed"):
            verify(make_assertion(client_key), registry_of(client_key), allowed_algs=algs)
    assert not any(a.startswith("HS") or a.lower() == "none" for a in CLIENT_ASSERTION_ALGS)


# --- CLA-02: iss, sub, client -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "drop"),
    [
        ({"sub": "someone-else"}, ()),
        ({"sub": 123}, ()),
        ({"sub": [CLIENT_ID]}, ()),
        ({}, ("sub",)),
        ({}, ("iss",)),
        ({"iss": 42}, ()),
    ],
)
def test_iss_and_sub_must_both_be_the_client_id(
    client_key: ECKey, claims: dict[str, Any], drop: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidClient):
        verify(make_assertion(client_key, claims=claims, drop_claims=drop), registry_of(client_key))


def test_unknown_client(client_key: ECKey) -> None:
    with pytest.raises(InvalidClient, match="unknown client"):
        verify(make_assertion(client_key, client_id="not-registered"), registry_of(client_key))


def test_client_id_parameter_must_match(client_key: ECKey) -> None:
    with pytest.raises(InvalidClient, match="client_id"):
        verify(make_assertion(client_key), registry_of(client_key), client_id="other-client")
    verify(make_assertion(client_key), registry_of(client_key), client_id=CLIENT_ID)


def test_assertion_cannot_borrow_another_clients_key(client_key: ECKey) -> None:
    """Client B signs an assertion claiming to be client A: A's registered keys do not verify it."""
    attacker = ec_key("P-384")
    clients = {CLIENT_ID: jwks_of(client_key), "attacker": jwks_of(attacker)}
    with pytest.raises(InvalidClient):
        verify(make_assertion(attacker, client_id=CLIENT_ID), clients)


# --- CLA-03: audience ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        "https://other-as.example",
        f"{ISSUER}/oauth/par",
        TOKEN_ENDPOINT,
        f"{ISSUER}/",
        [ISSUER, "https://other-as.example"],
        [],
        [TOKEN_ENDPOINT],
        None,
    ],
)
def test_audience_other_than_the_issuer(client_key: ECKey, aud: Any) -> None:
    drop = ("aud",) if aud is None else ()
    with pytest.raises(InvalidClient, match="aud"):
        verify(make_assertion(client_key, aud=aud, drop_claims=drop), registry_of(client_key))


@pytest.mark.parametrize("aud", [ISSUER, [ISSUER]])
def test_audience_is_the_issuer(client_key: ECKey, aud: Any) -> None:
    verify(make_assertion(client_key, aud=aud), registry_of(client_key))


# --- CLA-04: time -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "drop"),
    [
        ({}, ("exp",)),
        ({"exp": NOW - 300}, ()),
        ({"exp": NOW - 10}, ()),
        ({"exp": NOW + 61}, ()),
        ({"exp": NOW + 300}, ()),
        ({"exp": "soon"}, ()),
        ({"iat": NOW + 61}, ()),
        ({"nbf": NOW + 61}, ()),
        ({"iat": NOW + 11}, ()),
        ({"iat": "now"}, ()),
    ],
)
def test_time_claims_out_of_policy(client_key: ECKey, claims: dict[str, Any], drop: tuple[str, ...]) -> None:
    with pytest.raises(InvalidClient):
        verify(make_assertion(client_key, claims=claims, drop_claims=drop), registry_of(client_key))


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": NOW + 60},
        {"exp": NOW - 9},
        {"iat": NOW + 10, "nbf": NOW + 10},
        {"iat": NOW - 30, "exp": NOW + 1},
    ],
)
def test_time_claims_within_policy(client_key: ECKey, claims: dict[str, Any]) -> None:
    verify(make_assertion(client_key, claims=claims), registry_of(client_key))


def test_iat_and_nbf_are_optional(client_key: ECKey) -> None:
    result = verify(make_assertion(client_key, drop_claims=("iat", "nbf")), registry_of(client_key))
    assert result.issued_at is None


# --- CLA-05: jti --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "drop"), [({}, ("jti",)), ({"jti": ""}, ()), ({"jti": 7}, ()), ({"jti": "j" * 257}, ())]
)
def test_jti_missing_or_invalid(client_key: ECKey, claims: dict[str, Any], drop: tuple[str, ...]) -> None:
    with pytest.raises(InvalidClient, match="jti"):
        verify(make_assertion(client_key, claims=claims, drop_claims=drop), registry_of(client_key))


def test_same_assertion_twice(client_key: ECKey, replay_cache: ReplayCache) -> None:
    assertion = make_assertion(client_key)
    verify(assertion, registry_of(client_key), replay_cache)
    with pytest.raises(InvalidClient, match="replayed"):
        verify(assertion, registry_of(client_key), replay_cache)


def test_replay_entry_lives_until_the_assertion_expires(client_key: ECKey) -> None:
    clock = [0.0]
    cache = InMemoryReplayCache(clock=lambda: clock[0])
    assertion = make_assertion(client_key)  # exp = NOW + 30
    verify(assertion, registry_of(client_key), cache)
    clock[0] = 39.0
    with pytest.raises(InvalidClient, match="replayed"):
        verify(assertion, registry_of(client_key), cache, now=NOW + 39)
    with pytest.raises(InvalidClient, match="expired"):
        verify(assertion, registry_of(client_key), cache, now=NOW + 40)


def test_fifty_concurrent_uses_of_one_assertion(
    client_key: ECKey, redis_client: redis.Redis, redis_prefix: str
) -> None:
    """CLA-05: exactly one success (atomic SET NX EX)."""
    assertion = make_assertion(client_key)
    clients = registry_of(client_key)
    cache = RedisReplayCache(redis_client, prefix=redis_prefix)
    barrier = threading.Barrier(50)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            verify(assertion, clients, cache)
            ok = True
        except InvalidClient:
            ok = False
        with lock:
            outcomes.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 1


class _BrokenCache:
    def claim(
        self, namespace: str, key: str, ttl_seconds: int, *, acceptable_from: float | None = None
    ) -> bool:
        raise StateUnavailable("replay cache unavailable")


def test_replay_cache_down_fails_closed(client_key: ECKey) -> None:
    with pytest.raises(StateUnavailable):
        verify(make_assertion(client_key), registry_of(client_key), _BrokenCache())


# --- CLA-06: typ --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["dpop+jwt", "at+jwt", "JWT", "jwt", "Client-Authentication+JWT", None, 1])
def test_typ_other_than_client_authentication(client_key: ECKey, typ: Any) -> None:
    assertion = make_assertion(client_key, typ=None, header=None if typ is None else {"typ": typ})
    with pytest.raises(InvalidClient, match="typ"):
        verify(assertion, registry_of(client_key))


@pytest.mark.parametrize("value", ["", "a.b", "a.b.c.d.e", "x" * 20_000, '{"payload":"x"}'])
def test_not_a_compact_jwt(client_key: ECKey, value: str) -> None:
    with pytest.raises(InvalidClient):
        verify(value, registry_of(client_key))


def test_payload_that_is_not_json(client_key: ECKey) -> None:
    header = b64url(json.dumps({"alg": "ES384", "typ": "client-authentication+jwt"}).encode())
    with pytest.raises(InvalidClient):
        verify(f"{header}.{b64url(b'not json')}.{b64url(b'sig')}", registry_of(client_key))
