"""RFC 9449 proof verification, as unit tests of ``verify_proof`` (DPOP-02..DPOP-19 without HTTP)."""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from auth.dpop import (
    DPOP_ALGS,
    DPoPProof,
    IatWindow,
    access_token_hash,
    normalise_htu,
    single_proof,
    verify_proof,
)
from auth.errors import AuthError, InvalidDPoPProof, InvalidToken, StateUnavailable, UseDPoPNonce
from auth.replay import InMemoryReplayCache, NonceSource, RedisReplayCache, ReplayCache
from tests.auth.factories import (
    API_URL,
    BASE_URL,
    NOW,
    TOKEN_ENDPOINT,
    b64url,
    ec_key,
    hs256_jws,
    make_proof,
    okp_key,
    proof_claims,
    public_jwk,
    raw_jws,
    rsa_key,
    sign,
)

ACCESS_TOKEN = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ4In0.c2ln"


def verify(proof: str, replay: ReplayCache | None = None, **kwargs: Any) -> DPoPProof:
    """verify_proof with the resource-server defaults of these tests."""
    options: dict[str, Any] = {"method": "GET", "url": API_URL, "now": NOW, "access_token": ACCESS_TOKEN}
    options.update(kwargs)
    return verify_proof(proof, replay=InMemoryReplayCache() if replay is None else replay, **options)


def rs_proof(key: Key, **kwargs: Any) -> str:
    kwargs.setdefault("access_token", ACCESS_TOKEN)
    return make_proof(key, **kwargs)


# --- the happy path --------------------------------------------------------------------------------


def test_valid_proof_is_accepted_and_described(proof_key: ECKey) -> None:
    proof = rs_proof(proof_key, jti="jti-1")
    result = verify(proof, expected_jkt=proof_key.thumbprint())
    assert result.jkt == proof_key.thumbprint()
    assert (result.jti, result.htm, result.htu, result.iat, result.alg) == (
        "jti-1",
        "GET",
        API_URL,
        NOW,
        "ES256",
    )
    assert "d" not in result.public_jwk


@pytest.mark.parametrize(
    "key", [ec_key("P-256"), ec_key("P-384"), okp_key()], ids=["ES256", "ES384", "EdDSA"]
)
def test_each_advertised_key_type_verifies(key: Key) -> None:
    assert verify(rs_proof(key)).jkt == key.thumbprint()


def test_ed25519_fully_specified_alg_is_accepted() -> None:
    key = okp_key()
    assert verify(rs_proof(key, header={"alg": "Ed25519"})).alg == "Ed25519"


def test_token_endpoint_proof_without_ath() -> None:
    key = ec_key()
    proof = make_proof(key, method="POST", url=TOKEN_ENDPOINT)
    assert verify(proof, method="POST", url=TOKEN_ENDPOINT, access_token=None).htm == "POST"


def test_reference_jwk_thumbprint_and_ath_match_helseid_examples(shared_dir: Path) -> None:
    """The reference pack's cnf.jkt is the RFC 7638 thumbprint of its EC jwk; its ath hashes the
    placeholder token."""
    ref = shared_dir / "reference" / "helseid"
    header = json.loads((ref / "dpop-proof.header.ec.json").read_text())
    token = json.loads((ref / "access-token.payload.client-credentials.json").read_text())
    assert ECKey.import_key(header["jwk"]).thumbprint() == token["cnf"]["jkt"]
    payload = json.loads((ref / "dpop-proof.payload.api.json").read_text())
    placeholder = "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9.EXAMPLE-ACCESS-TOKEN-PAYLOAD.EXAMPLE-SIGNATURE"
    assert access_token_hash(placeholder) == payload["ath"]


# --- DPOP-02: not exactly one JWT -------------------------------------------------------------------


def test_missing_or_repeated_dpop_header() -> None:
    with pytest.raises(InvalidDPoPProof):
        single_proof([])
    with pytest.raises(InvalidDPoPProof):
        single_proof(["a.b.c", "a.b.c"])
    assert single_proof(["a.b.c"]) == "a.b.c"


@pytest.mark.parametrize(
    "proof",
    [
        "",
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        '{"protected":"x","payload":"y","signature":"z"}',
        "a.b.c, a.b.c",
        "a.b.c a.b.c",
        "x" * 100_000,
    ],
)
def test_proof_that_is_not_one_compact_jwt(proof: str) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify(proof)


def test_two_proofs_joined_by_a_comma(proof_key: ECKey) -> None:
    """A proxy folding two DPoP headers into one line must not let the first one through."""
    one, two = rs_proof(proof_key), rs_proof(proof_key)
    with pytest.raises(InvalidDPoPProof):
        verify(f"{one}, {two}")


# --- DPOP-03: each required member missing ------------------------------------------------------------


@pytest.mark.parametrize("member", ["typ", "alg", "jwk"])
def test_missing_header_member(proof_key: ECKey, member: str) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, drop_header=[member]))


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat", "ath"])
def test_missing_claim(proof_key: ECKey, claim: str) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, drop_claims=[claim]))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("jti", 123),
        ("jti", ""),
        ("htm", ["GET"]),
        ("htu", None),
        ("iat", "1767225600"),
        ("iat", True),
        ("iat", None),
        ("ath", 1),
    ],
)
def test_claim_of_the_wrong_type(proof_key: ECKey, claim: str, value: Any) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, claims={claim: value}))


def test_non_finite_iat_cannot_slip_through_the_window(proof_key: ECKey) -> None:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(proof_key)}
    claims = json.dumps(proof_claims(access_token=ACCESS_TOKEN)).replace(str(NOW), "NaN")
    with pytest.raises(InvalidDPoPProof):
        verify(sign(header, claims.encode(), proof_key))
    huge = json.dumps(proof_claims(access_token=ACCESS_TOKEN)).replace(str(NOW), "1e400")
    with pytest.raises(InvalidDPoPProof):
        verify(sign(header, huge.encode(), proof_key))


# --- DPOP-04: typ ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ", ["JWT", "at+jwt", "client-authentication+jwt", "DPOP+JWT", "", 1, ["dpop+jwt"]]
)
def test_wrong_or_non_string_typ(proof_key: ECKey, typ: Any) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, header={"typ": typ}))


# --- DPOP-05: alg ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "nOnE", "NONE"])
def test_alg_none_is_refused(proof_key: ECKey, alg: str) -> None:
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(proof_key)}
    claims = proof_claims(access_token=ACCESS_TOKEN)
    with pytest.raises(InvalidDPoPProof):
        verify(raw_jws(header, claims))  # empty signature
    with pytest.raises(InvalidDPoPProof):
        verify(raw_jws(header, claims, b"x" * 64))


def test_hs256_keyed_with_the_jwk_is_refused(proof_key: ECKey) -> None:
    jwk = public_jwk(proof_key)
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}
    forged = hs256_jws(header, proof_claims(access_token=ACCESS_TOKEN), json.dumps(jwk).encode())
    with pytest.raises(InvalidDPoPProof):
        verify(forged)


RSA_ALGS = [a for a in DPOP_ALGS if a.startswith(("RS", "PS"))]


def test_rsa_algorithms_are_advertised_and_nothing_symmetric() -> None:
    """DPOP-19: HelseID clients sign proofs with RSA (RS/PS 256/384/512)."""
    assert set(RSA_ALGS) == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert not any(alg.startswith("HS") or alg.lower() == "none" for alg in DPOP_ALGS)


@pytest.mark.parametrize("alg", RSA_ALGS)
def test_rsa_2048_proof_is_accepted_with_an_rfc7638_thumbprint(alg: str) -> None:
    key = rsa_key(2048)
    proof = rs_proof(key, header={"alg": alg})
    assert len(proof.split(".")[0]) > 512  # beyond joserfc's default header limit (DPOP-19)
    jwk = key.as_dict(private=False)
    # RFC 7638 §3.2: the required members e, kty, n in lexicographic order, no whitespace.
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    thumbprint = b64url(hashlib.sha256(canonical.encode()).digest())
    result = verify(proof, expected_jkt=thumbprint)
    assert (result.alg, result.jkt) == (alg, thumbprint)


def test_rsa_4096_proof_fits_the_header_limit() -> None:
    key = rsa_key(4096)
    assert verify(rs_proof(key, header={"alg": "PS512"})).alg == "PS512"


def test_helseid_rsa_proof_header_as_in_the_reference(shared_dir: Path) -> None:
    """The reference header's shape (RS512, ``jwk`` with ``kty``/``n``/``e``/``alg``), with our own key."""
    reference = json.loads((shared_dir / "reference" / "helseid" / "dpop-proof.header.rsa.json").read_text())
    key = rsa_key(2048)
    jwk = {name: key.as_dict(private=False)[name] for name in ("kty", "n", "e")}
    header = {**reference, "jwk": {**jwk, "alg": reference["jwk"]["alg"]}}
    assert set(header["jwk"]) == set(reference["jwk"])
    result = verify(rs_proof(key, header=header))
    assert result.alg == "RS512"
    assert result.jkt == key.thumbprint()  # jwk.alg is not part of the RFC 7638 thumbprint


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_rsa_1024_proof_is_refused(alg: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        weak = RSAKey.generate_key(1024, private=True)
    with pytest.raises(InvalidDPoPProof, match="2048"):
        verify(rs_proof(weak, header={"alg": alg}))


def test_rsa_jwk_whose_alg_differs_from_the_proof_is_refused() -> None:
    key = rsa_key(2048)
    with pytest.raises(InvalidDPoPProof, match="jwk alg"):
        verify(rs_proof(key, header={"alg": "RS256", "jwk": public_jwk(key, alg="RS512")}))


def test_rsa_key_under_an_ec_alg_is_refused() -> None:
    key = rsa_key(2048)
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(key)}
    with pytest.raises(InvalidDPoPProof, match="key type"):
        verify(raw_jws(header, proof_claims(), b"s" * 64))


@pytest.mark.parametrize("algs", [("HS256",), ("none",), ("HS512", "ES256"), ()])
def test_allowlist_cannot_be_widened_to_symmetric_or_none(proof_key: ECKey, algs: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"may not be allowed|must not be empty"):
        verify(rs_proof(proof_key), allowed_algs=algs)


def test_rsa_outside_a_narrower_allowlist_is_refused() -> None:
    """DPOP-05: RS256 refused where the allowlist does not name it."""
    key = rsa_key(2048)
    with pytest.raises(InvalidDPoPProof, match="alg"):
        verify(rs_proof(key, header={"alg": "RS256"}), allowed_algs=("ES256", "PS256"))


def test_alg_outside_a_narrower_allowlist(proof_key: ECKey) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key), allowed_algs=("ES384",))


# --- DPOP-06: signature and jwk ------------------------------------------------------------------------


def test_bad_signature(proof_key: ECKey) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, signing_key=ec_key()))


def test_jwk_with_private_member(proof_key: ECKey) -> None:
    private = proof_key.as_dict(private=True)
    with pytest.raises(InvalidDPoPProof, match="public"):
        verify(rs_proof(proof_key, header={"jwk": private}))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: j.pop("y"),
        lambda j: j.update(x="not base64!"),
        lambda j: j.update(x=b64url(b"\x01" * 31)),
        lambda j: j.update(y=b64url(b"\x01" * 32)),  # not on the curve
        lambda j: j.update(crv="P-384"),
        lambda j: j.update(kty="oct", k=b64url(b"secret")),
        lambda j: j.update(kty="RSA"),
        lambda j: j.clear(),
    ],
    ids=["no-y", "bad-x", "short-x", "off-curve", "crv-mismatch", "symmetric", "kty-rsa", "empty"],
)
def test_malformed_or_unsupported_jwk(proof_key: ECKey, mutate: Any) -> None:
    jwk = public_jwk(proof_key)
    mutate(jwk)
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, header={"jwk": jwk}))


def test_jwk_not_an_object(proof_key: ECKey) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, header={"jwk": "a-string"}))


def test_eddsa_with_ed448_is_refused() -> None:
    key = OKPKey.generate_key("Ed448", private=True)
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(key))


@pytest.mark.parametrize("param", ["jku", "x5u", "x5c", "crit", "b64"])
def test_key_pointing_or_extension_headers_are_refused(proof_key: ECKey, param: str) -> None:
    value: Any = {"jku": "https://evil.example/jwks", "x5u": "https://evil.example/c", "x5c": ["MII"]}.get(
        param, ["exp"] if param == "crit" else False
    )
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, header={param: value}))


# --- DPOP-07: cnf.jkt --------------------------------------------------------------------------------------


def test_proof_key_other_than_token_binding(proof_key: ECKey) -> None:
    other = ec_key()
    with pytest.raises(InvalidToken) as caught:
        verify(rs_proof(proof_key), expected_jkt=other.thumbprint())
    assert caught.value.resource.error == "invalid_token"


# --- DPOP-08: ath ------------------------------------------------------------------------------------------


def test_ath_for_another_token(proof_key: ECKey) -> None:
    with pytest.raises(InvalidDPoPProof, match="ath"):
        verify(rs_proof(proof_key, access_token="another.token.value"))


def test_ath_garbage(proof_key: ECKey) -> None:
    with pytest.raises(InvalidDPoPProof, match="ath"):
        verify(rs_proof(proof_key, claims={"ath": "\ud800not-a-hash"}))


# --- DPOP-09 / DPOP-17: htm and htu -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "POST", "get", "HEAD"])
def test_htm_other_method(proof_key: ECKey, method: str) -> None:
    with pytest.raises(InvalidDPoPProof, match="htm"):
        verify(rs_proof(proof_key, method=method))


@pytest.mark.parametrize(
    "htu",
    [
        f"{BASE_URL}/fhir/Consent",
        f"{BASE_URL}/fhir/Observation/123",
        f"{BASE_URL}/fhir/observation",
        "https://evil.example/fhir/Observation",
        "http://dho.example.test/fhir/Observation",
        "https://dho.example.test:8443/fhir/Observation",
        "https://user:pw@dho.example.test/fhir/Observation",
        "/fhir/Observation",
        "https://dho.example.test:99999/fhir/Observation",
        "ftp://dho.example.test/fhir/Observation",
    ],
)
def test_htu_for_another_resource_host_or_scheme(proof_key: ECKey, htu: str) -> None:
    with pytest.raises(InvalidDPoPProof, match="htu"):
        verify(rs_proof(proof_key, url=htu))


def test_spoofed_forwarded_host_does_not_help(proof_key: ECKey) -> None:
    """DPOP-17: the caller passes the configured URL; a proof made for the attacker's host fails."""
    proof = rs_proof(proof_key, url="https://attacker.example/fhir/Observation")
    with pytest.raises(InvalidDPoPProof):
        verify(proof, url=f"{BASE_URL}/fhir/Observation")


# --- DPOP-10: normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("htu", "request_url"),
    [
        (f"{API_URL}?patient=x#frag", API_URL),
        (API_URL, f"{API_URL}?patient=x"),
        (f"{API_URL}?a=1", f"{API_URL}?b=2"),
        ("HTTPS://DHO.EXAMPLE.TEST/fhir/Observation", API_URL),
        ("https://dho.example.test:443/fhir/Observation", API_URL),
        ("https://dho.example.test/fhir/%4Fbservation", API_URL),
        ("https://dho.example.test/fhir/./x/../Observation", API_URL),
        (
            "https://dho.example.test/fhir/Observation/a%2fb",
            "https://dho.example.test/fhir/Observation/a%2Fb",
        ),
        ("https://dho.example.test/fhir/Observation/a%20b", "https://dho.example.test/fhir/Observation/a b"),
    ],
)
def test_htu_normalisation_accepts_equivalent_urls(proof_key: ECKey, htu: str, request_url: str) -> None:
    assert verify(rs_proof(proof_key, url=htu), url=request_url).htu == htu


def test_normalise_htu_examples() -> None:
    assert normalise_htu("HTTP://Host:80") == "http://host/"
    assert normalise_htu("https://[::1]:443/p?q") == "https://[::1]/p"
    assert normalise_htu("https://h:8443/%7e") == "https://h:8443/~"
    with pytest.raises(ValueError, match="absolute"):
        normalise_htu("mailto:x@example.test")


def test_caller_url_must_be_absolute(proof_key: ECKey) -> None:
    with pytest.raises(ValueError, match="absolute"):
        verify(rs_proof(proof_key), url="/fhir/Observation")


# --- DPOP-11: iat window ---------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-3600, 3600, 61, -61, 11])
def test_iat_outside_window(proof_key: ECKey, offset: int) -> None:
    with pytest.raises(InvalidDPoPProof, match="iat"):
        verify(rs_proof(proof_key, iat=NOW + offset))


@pytest.mark.parametrize("offset", [-60, -10, 0, 10, 9.5])
def test_iat_inside_window(proof_key: ECKey, offset: float) -> None:
    verify(rs_proof(proof_key, iat=NOW + offset))


def test_window_is_configurable(proof_key: ECKey) -> None:
    window = IatWindow(max_age=5, max_skew=0)
    verify(rs_proof(proof_key, iat=NOW - 5), iat_window=window)
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, iat=NOW - 6), iat_window=window)
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, iat=NOW + 1), iat_window=window)
    with pytest.raises(ValueError, match="max_age"):
        IatWindow(max_age=0)


# --- DPOP-12 / DPOP-13: replay ---------------------------------------------------------------------------


def test_same_proof_twice(proof_key: ECKey, replay_cache: ReplayCache) -> None:
    proof = rs_proof(proof_key)
    verify(proof, replay_cache)
    with pytest.raises(InvalidDPoPProof, match="replayed"):
        verify(proof, replay_cache)


def test_same_jti_in_a_new_proof_is_a_replay(proof_key: ECKey, replay_cache: ReplayCache) -> None:
    verify(rs_proof(proof_key, jti="fixed"), replay_cache)
    with pytest.raises(InvalidDPoPProof, match="replayed"):
        verify(rs_proof(proof_key, jti="fixed", iat=NOW + 1), replay_cache)


def test_same_jti_from_another_key_is_not_blocked(proof_key: ECKey, replay_cache: ReplayCache) -> None:
    verify(rs_proof(proof_key, jti="shared"), replay_cache)
    verify(rs_proof(ec_key(), jti="shared"), replay_cache)


def test_invalid_proof_does_not_burn_its_jti(proof_key: ECKey, replay_cache: ReplayCache) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, jti="j", method="PUT"), replay_cache)
    verify(rs_proof(proof_key, jti="j"), replay_cache)


def test_fifty_concurrent_uses_of_one_proof_against_redis(
    proof_key: ECKey, redis_client: redis.Redis, redis_prefix: str
) -> None:
    """DPOP-12: exactly one of 50 racing verifications succeeds (shared Redis, as across workers)."""
    proof = rs_proof(proof_key)
    caches = [RedisReplayCache(redis_client, prefix=redis_prefix) for _ in range(2)]  # two "workers"
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        barrier.wait()
        try:
            verify(proof, caches[index % 2])
            result = "ok"
        except InvalidDPoPProof:
            result = "replay"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1
    assert outcomes.count("replay") == 49


def test_replay_just_inside_window_plus_skew_is_caught(proof_key: ECKey) -> None:
    """DPOP-13: a proof dated at the far future edge stays acceptable for max_age + max_skew seconds;
    its jti must be remembered at least that long."""
    clock = [0.0]
    cache = InMemoryReplayCache(clock=lambda: clock[0])
    window = IatWindow()
    proof = rs_proof(proof_key, iat=NOW + window.max_skew)
    verify(proof, cache, now=NOW)
    clock[0] = window.max_age + window.max_skew  # the last moment the proof's iat is still in the window
    with pytest.raises(InvalidDPoPProof, match="replayed"):
        verify(proof, cache, now=NOW + window.max_age + window.max_skew)


def test_redis_ttl_covers_window_plus_skew(
    proof_key: ECKey, redis_client: redis.Redis, redis_prefix: str
) -> None:
    verify(rs_proof(proof_key), RedisReplayCache(redis_client, prefix=redis_prefix))
    (name,) = list(redis_client.scan_iter(match=f"{redis_prefix}*"))
    assert int(redis_client.ttl(name)) >= IatWindow().max_age + IatWindow().max_skew


class _BrokenCache:
    def claim(
        self, namespace: str, key: str, ttl_seconds: int, *, acceptable_from: float | None = None
    ) -> bool:
        raise StateUnavailable("replay cache unavailable")


def test_replay_cache_down_fails_closed(proof_key: ECKey) -> None:
    """REL-01: never accept without the check."""
    with pytest.raises(StateUnavailable):
        verify(rs_proof(proof_key), _BrokenCache())


# --- DPOP-14: jti size --------------------------------------------------------------------------------------


def test_jti_of_10_kb_is_refused_before_the_cache(
    proof_key: ECKey, redis_client: redis.Redis, redis_prefix: str
) -> None:
    cache = RedisReplayCache(redis_client, prefix=redis_prefix)
    with pytest.raises(InvalidDPoPProof):
        verify(rs_proof(proof_key, jti="j" * 10_240), cache)
    assert list(redis_client.scan_iter(match=f"{redis_prefix}*")) == []


def test_jti_length_limit(proof_key: ECKey) -> None:
    verify(rs_proof(proof_key, jti="j" * 256))
    with pytest.raises(InvalidDPoPProof, match="jti"):
        verify(rs_proof(proof_key, jti="j" * 257))


# --- DPOP-15: unknown members -------------------------------------------------------------------------------


def test_unknown_header_parameters_and_claims_are_ignored(proof_key: ECKey) -> None:
    proof = rs_proof(
        proof_key,
        header={"kid": "client-key-1", "x-vendor": {"a": [1, 2]}, "cty": "whatever"},
        claims={"exp": NOW + 5, "client_id": "x", "extra": {"nested": True}},
    )
    verify(proof)


# --- DPOP-16: nonces ----------------------------------------------------------------------------------------


def test_nonce_required_but_missing(proof_key: ECKey, rs_nonces: NonceSource) -> None:
    with pytest.raises(UseDPoPNonce) as caught:
        verify(rs_proof(proof_key), nonce=rs_nonces)
    assert rs_nonces.check(caught.value.nonce, NOW)
    assert caught.value.resource == (401, "use_dpop_nonce")


def test_correct_nonce_is_accepted(proof_key: ECKey, rs_nonces: NonceSource) -> None:
    nonce = rs_nonces.issue(NOW)
    assert verify(rs_proof(proof_key, nonce=nonce), nonce=rs_nonces).nonce == nonce


@pytest.mark.parametrize("bad", ["stale", "forged", "from-the-token-endpoint", "not-a-string"])
def test_bad_nonce_gets_a_fresh_one(
    proof_key: ECKey, rs_nonces: NonceSource, as_nonces: NonceSource, bad: str
) -> None:
    value: Any = {
        "stale": rs_nonces.issue(NOW - 900),
        "forged": "5882418." + "A" * 32,
        "from-the-token-endpoint": as_nonces.issue(NOW),
        "not-a-string": 12345,
    }[bad]
    with pytest.raises(UseDPoPNonce):
        verify(rs_proof(proof_key, claims={"nonce": value}), nonce=rs_nonces)


def test_nonce_at_the_token_endpoint(proof_key: ECKey, as_nonces: NonceSource) -> None:
    nonce = as_nonces.issue(NOW)
    proof = make_proof(proof_key, method="POST", url=TOKEN_ENDPOINT, nonce=nonce)
    verify(proof, method="POST", url=TOKEN_ENDPOINT, access_token=None, nonce=as_nonces)


def test_nonce_error_does_not_burn_the_jti(proof_key: ECKey, rs_nonces: NonceSource) -> None:
    cache = InMemoryReplayCache()
    with pytest.raises(UseDPoPNonce):
        verify(rs_proof(proof_key, jti="n1"), cache, nonce=rs_nonces)
    verify(rs_proof(proof_key, jti="n1", nonce=rs_nonces.issue(NOW)), cache, nonce=rs_nonces)


# --- CLA-08: DPoP at the token endpoint --------------------------------------------------------------------


@pytest.mark.parametrize("case", ["htu-of-resource", "wrong-htm", "reused-jti"])
def test_token_endpoint_proof_for_something_else(proof_key: ECKey, case: str) -> None:
    cache = InMemoryReplayCache()
    if case == "reused-jti":
        verify(
            make_proof(proof_key, method="POST", url=TOKEN_ENDPOINT, jti="t"),
            cache,
            method="POST",
            url=TOKEN_ENDPOINT,
            access_token=None,
        )
    proof = {
        "htu-of-resource": make_proof(proof_key, method="POST", url=API_URL),
        "wrong-htm": make_proof(proof_key, method="GET", url=TOKEN_ENDPOINT),
        "reused-jti": make_proof(proof_key, method="POST", url=TOKEN_ENDPOINT, jti="t"),
    }[case]
    with pytest.raises(InvalidDPoPProof) as caught:
        verify(proof, cache, method="POST", url=TOKEN_ENDPOINT, access_token=None)
    assert caught.value.token_endpoint == (400, "invalid_dpop_proof")


# --- property: no single-character change survives ----------------------------------------------------------


_PROOF_KEY = ec_key()
_PROOF = make_proof(_PROOF_KEY, access_token=ACCESS_TOKEN, jti="property")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(index=st.integers(min_value=0, max_value=len(_PROOF) - 1), char=st.sampled_from(_ALPHABET))
def test_any_one_character_change_is_refused(index: int, char: str) -> None:
    if _PROOF[index] == char:
        return
    mutated = _PROOF[:index] + char + _PROOF[index + 1 :]
    with pytest.raises(AuthError):
        verify(mutated, expected_jkt=_PROOF_KEY.thumbprint())
