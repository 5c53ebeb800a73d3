"""RFC 9068 access tokens: issuing (AS-01) and verification (AUTH-03..AUTH-12, AUTH-15)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, Key, RSAKey

from auth.errors import InvalidToken
from auth.keys import SigningKeySet
from auth.tokens import (
    CLAIM_ORGNR_PARENT,
    HELSEID_TOKEN_ALGS,
    TokenPolicy,
    VerifiedAccessToken,
    issue_access_token,
    parse_scope,
    verify_access_token,
)
from tests.auth.factories import (
    CLIENT_ID,
    ISSUER,
    NOW,
    b64json,
    b64url,
    ec_key,
    hs256_jws,
    make_token,
    raw_jws,
    rsa_key,
    sign,
    token_claims,
)

HELSEID = "https://helseid-sts.test.nhn.no"


@pytest.fixture(scope="module")
def dpop_key() -> ECKey:
    return ec_key()


@pytest.fixture(scope="module")
def jkt(dpop_key: ECKey) -> str:
    return dpop_key.thumbprint()


@pytest.fixture(scope="module")
def as_key() -> ECKey:
    """Our AS signing key as a bare ECKey with a kid, for hand-made tokens."""
    return ECKey.generate_key("P-256", private=True, auto_kid=True)


class Lookup:
    """A key lookup that records every kid it is asked for (AUTH-10: no lookups for refused headers)."""

    def __init__(self, *keys: Key) -> None:
        self.keys = {str(k.kid): k for k in keys}
        self.asked: list[str] = []

    def __call__(self, kid: str) -> Key | None:
        self.asked.append(kid)
        key = self.keys.get(kid)
        return None if key is None else key.__class__.import_key(key.as_dict(private=False))


def verify(
    token: str, lookup: Lookup, policy: TokenPolicy | None = None, now: float = NOW
) -> VerifiedAccessToken:
    return verify_access_token(token, policy=policy or TokenPolicy.own(ISSUER), keys=lookup, now=now)


# --- issuing: AS-01 ---------------------------------------------------------------------------------------


def test_issued_token_has_the_required_shape(keyset: SigningKeySet, jkt: str) -> None:
    issued = issue_access_token(
        keyset,
        issuer=ISSUER,
        client_id=CLIENT_ID,
        scopes=["dho-share/observation.read", "dho-share/observation.write"],
        jkt=jkt,
        now=NOW,
        orgnr_parent="997506499",
    )
    header = json.loads(base64.urlsafe_b64decode(issued.token.split(".")[0] + "=="))
    assert header == {"typ": "at+jwt", "alg": "ES256", "kid": keyset.kid}
    verified = verify_access_token(
        issued.token,
        policy=TokenPolicy.own(ISSUER),
        keys=lambda kid: keyset.verification_key(kid, NOW),
        now=NOW,
    )
    claims = verified.claims
    assert claims["aud"] == "dho-share"
    assert claims["cnf"] == {"jkt": jkt}
    assert claims["sub"] == CLIENT_ID == verified.client_id
    assert claims["exp"] - claims["iat"] == issued.lifetime <= 300
    assert len(base64.urlsafe_b64decode(issued.jti + "=")) >= 16  # >= 128 bits
    assert claims[CLAIM_ORGNR_PARENT] == "997506499"
    assert verified.scopes == {"dho-share/observation.read", "dho-share/observation.write"}
    assert verified.jkt == jkt
    assert verified.jti == issued.jti
    assert issued.token not in repr(issued)


def test_jti_is_unique(keyset: SigningKeySet, jkt: str) -> None:
    jtis = {
        issue_access_token(keyset, issuer=ISSUER, client_id=CLIENT_ID, scopes=[], jkt=jkt, now=NOW).jti
        for _ in range(200)
    }
    assert len(jtis) == 200


@pytest.mark.parametrize(
    "kwargs",
    [{"jkt": "short"}, {"scopes": ["has space"]}, {"scopes": [""]}, {"lifetime": 0}, {"lifetime": 86400}],
)
def test_issue_refuses_bad_arguments(keyset: SigningKeySet, jkt: str, kwargs: dict[str, Any]) -> None:
    options: dict[str, Any] = {
        "issuer": ISSUER,
        "client_id": CLIENT_ID,
        "scopes": ["a"],
        "jkt": jkt,
        "now": NOW,
    }
    options.update(kwargs)
    with pytest.raises(ValueError, match=r"jkt|scopes|lifetime"):
        issue_access_token(keyset, **options)


def test_token_of_a_retired_key_verifies_until_publication_ends(jkt: str) -> None:
    old = SigningKeySet.generate()
    token = issue_access_token(old, issuer=ISSUER, client_id=CLIENT_ID, scopes=[], jkt=jkt, now=NOW).token
    rotated = old.rotate(now=NOW, keep_published_for=600)
    policy = TokenPolicy.own(ISSUER)
    verify_access_token(
        token, policy=policy, keys=lambda kid: rotated.verification_key(kid, NOW + 10), now=NOW + 10
    )
    with pytest.raises(InvalidToken, match="unknown key"):
        verify_access_token(
            token, policy=policy, keys=lambda kid: rotated.verification_key(kid, NOW + 600), now=NOW
        )


# --- accepted ---------------------------------------------------------------------------------------------


def test_hand_made_valid_token(as_key: ECKey, jkt: str) -> None:
    verify(make_token(as_key, jkt=jkt), Lookup(as_key))


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/AT+JWT"])
def test_accepted_typ_spellings(as_key: ECKey, jkt: str, typ: str) -> None:
    verify(make_token(as_key, jkt=jkt, typ=typ), Lookup(as_key))


@pytest.mark.parametrize("alg", ["PS256", "ES256"])
def test_external_issuer_ps256_and_es256(jkt: str, alg: str) -> None:
    """AUTH-06: PS256 is accepted when the policy lists it (joserfc's default list would refuse it)."""
    key: Key = rsa_key() if alg == "PS256" else ec_key()
    key = key.__class__.import_key({**key.as_dict(private=True), "kid": f"helseid-{alg}"})
    policy = TokenPolicy(issuer=HELSEID, audience="dho-share", algorithms=HELSEID_TOKEN_ALGS)
    token = make_token(key, jkt=jkt, alg=alg, iss=HELSEID, drop_claims=["sub"])
    verify(token, Lookup(key), policy)


def test_helseid_shaped_token_verifies(shared_dir: Path, jkt: str) -> None:
    """The reference client-credentials payload (scope array, no sub) under a HelseID policy."""
    claims = json.loads(
        (shared_dir / "reference" / "helseid" / "access-token.payload.client-credentials.json").read_text()
    )
    claims.update(aud="dho-share", iat=NOW, nbf=NOW, exp=NOW + 600)
    key = RSAKey.import_key({**rsa_key().as_dict(private=True), "kid": "helseid-1"})
    token = sign({"alg": "RS256", "kid": "helseid-1", "typ": "at+jwt"}, claims, key)
    policy = TokenPolicy(issuer=HELSEID, audience="dho-share", algorithms=HELSEID_TOKEN_ALGS)
    verified = verify(token, Lookup(key), policy)
    assert verified.scopes == {"nhn:test-public-samplecode/client-credentials"}
    assert verified.jkt == claims["cnf"]["jkt"]


def test_audience_array_containing_us(as_key: ECKey, jkt: str) -> None:
    verify(make_token(as_key, jkt=jkt, aud=["other-api", "dho-share"]), Lookup(as_key))


def test_leeway_accepts_small_clock_differences(as_key: ECKey, jkt: str) -> None:
    verify(make_token(as_key, jkt=jkt, exp=NOW - 9, iat=NOW + 10, nbf=NOW + 10), Lookup(as_key))


# --- AUTH-03: alg none, empty signature ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "nOnE", "NONE"])
@pytest.mark.parametrize("signature", [b"", b"anything"])
def test_alg_none(as_key: ECKey, jkt: str, alg: str, signature: bytes) -> None:
    token = raw_jws({"alg": alg, "typ": "at+jwt", "kid": as_key.kid}, token_claims(jkt=jkt), signature)
    with pytest.raises(InvalidToken):
        verify(token, Lookup(as_key))


def test_valid_token_with_its_signature_removed(as_key: ECKey, jkt: str) -> None:
    header, payload, _ = make_token(as_key, jkt=jkt).split(".")
    with pytest.raises(InvalidToken, match="well-formed"):
        verify(f"{header}.{payload}.", Lookup(as_key))


# --- AUTH-04: HS256 keyed with the public key ---------------------------------------------------------------


def test_hs256_keyed_with_our_public_key(as_key: ECKey, jkt: str) -> None:
    header = {"alg": "HS256", "typ": "at+jwt", "kid": as_key.kid}
    secrets = [
        as_key.as_bytes(private=False),  # PEM
        json.dumps(as_key.as_dict(private=False)).encode(),
        base64.urlsafe_b64decode(str(as_key.as_dict(private=False)["x"]) + "="),
    ]
    for secret in secrets:
        with pytest.raises(InvalidToken, match="alg"):
            verify(hs256_jws(header, token_claims(jkt=jkt), secret), Lookup(as_key))


def test_hs256_keyed_with_an_rsa_issuers_public_key(jkt: str) -> None:
    key = RSAKey.import_key({**rsa_key().as_dict(private=True), "kid": "rsa-1"})
    policy = TokenPolicy(issuer=HELSEID, algorithms=HELSEID_TOKEN_ALGS)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"}
    n_bytes = base64.urlsafe_b64decode(str(key.as_dict(private=False)["n"]) + "==")
    for secret in (key.as_bytes(private=False), n_bytes):
        with pytest.raises(InvalidToken, match="alg"):
            verify(hs256_jws(header, token_claims(jkt=jkt, iss=HELSEID), secret), Lookup(key), policy)


def test_policy_refuses_symmetric_algorithms() -> None:
    for algs in (("HS256",), ("none",), ("ES256", "HS512"), ()):
        with pytest.raises(ValueError, match=r"may not be allowed|must not be empty"):
            TokenPolicy(issuer=ISSUER, algorithms=algs)


# --- AUTH-05: algorithm outside the allowlist ---------------------------------------------------------------


@pytest.mark.parametrize("algorithms", [("ES256",), ("PS256", "ES256")])
def test_rs256_token_when_policy_does_not_allow_it(jkt: str, algorithms: tuple[str, ...]) -> None:
    key = RSAKey.import_key({**rsa_key().as_dict(private=True), "kid": "rsa-1"})
    lookup = Lookup(key)
    with pytest.raises(InvalidToken, match="alg"):
        verify(
            make_token(key, jkt=jkt, alg="RS256"), lookup, TokenPolicy(issuer=ISSUER, algorithms=algorithms)
        )
    assert lookup.asked == []


def test_alg_and_key_type_must_agree(jkt: str) -> None:
    """An allowed alg does not let a key of another type verify (ES256 header, RSA key)."""
    key = RSAKey.import_key({**rsa_key().as_dict(private=True), "kid": "rsa-1"})
    token = sign({"alg": "ES256", "typ": "at+jwt", "kid": "rsa-1"}, token_claims(jkt=jkt), key, alg="PS256")
    with pytest.raises(InvalidToken, match="signature"):
        verify(token, Lookup(key), TokenPolicy(issuer=ISSUER, algorithms=("ES256", "PS256")))


# --- AUTH-07 / AUTH-15: typ ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ", [None, "JWT", "jwt", "dpop+jwt", "client-authentication+jwt", "", 5, ["at+jwt"]]
)
def test_typ_other_than_at_jwt(as_key: ECKey, jkt: str, typ: Any) -> None:
    token = make_token(as_key, jkt=jkt, typ=None, header=None if typ is None else {"typ": typ})
    with pytest.raises(InvalidToken, match="typ"):
        verify(token, Lookup(as_key))


def test_id_token_of_the_same_issuer(as_key: ECKey, jkt: str) -> None:
    """AUTH-15: an ID token (typ JWT, aud = client, nonce, auth_time) is not an access token."""
    id_claims: dict[str, Any] = {
        "aud": CLIENT_ID,
        "nonce": "n-0S6_WzA2Mj",
        "auth_time": NOW,
        "azp": CLIENT_ID,
    }
    with pytest.raises(InvalidToken, match="typ"):
        verify(make_token(as_key, jkt=jkt, typ="JWT", **id_claims), Lookup(as_key))
    with pytest.raises(InvalidToken, match="audience"):
        verify(make_token(as_key, jkt=jkt, **id_claims), Lookup(as_key))


# --- AUTH-08: iss and aud -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "drop", "match"),
    [
        ({"iss": "https://evil.example"}, (), "issuer"),
        ({"iss": f"{ISSUER}/"}, (), "issuer"),
        ({"iss": ["https://dho.example.test"]}, (), "iss"),
        ({"aud": "other-api"}, (), "audience"),
        ({}, ("aud",), "audience"),
        ({"aud": ["other-api", "another"]}, (), "audience"),
        ({"aud": []}, (), "audience"),
        ({"aud": [["dho-share"]]}, (), "audience"),
    ],
)
def test_wrong_issuer_or_audience(
    as_key: ECKey, jkt: str, claims: dict[str, Any], drop: tuple[str, ...], match: str
) -> None:
    with pytest.raises(InvalidToken, match=match):
        verify(make_token(as_key, jkt=jkt, drop_claims=drop, **claims), Lookup(as_key))


# --- AUTH-09: time and required claims ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": NOW - 11},
        {"exp": NOW - 3600},
        {"nbf": NOW + 61},
        {"iat": NOW + 61},
        {"nbf": NOW + 11},
        {"exp": "later"},
        {"iat": None},
        {"nbf": True},
    ],
)
def test_time_claims_out_of_range(as_key: ECKey, jkt: str, claims: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        verify(make_token(as_key, jkt=jkt, **claims), Lookup(as_key))


@pytest.mark.parametrize("claim", ["iss", "exp", "aud", "sub", "client_id", "iat", "jti", "cnf"])
def test_missing_required_claim(as_key: ECKey, jkt: str, claim: str) -> None:
    with pytest.raises(InvalidToken):
        verify(make_token(as_key, jkt=jkt, drop_claims=[claim]), Lookup(as_key))


def test_sub_is_optional_for_an_external_issuer_policy(as_key: ECKey, jkt: str) -> None:
    policy = TokenPolicy(issuer=ISSUER)
    verify(make_token(as_key, jkt=jkt, drop_claims=["sub"]), Lookup(as_key), policy)
    with pytest.raises(InvalidToken, match="sub"):
        verify(make_token(as_key, jkt=jkt, sub=17), Lookup(as_key), policy)


@pytest.mark.parametrize(
    "claims",
    [
        {"client_id": 5},
        {"client_id": ""},
        {"jti": ""},
        {"jti": "j" * 257},
        {"cnf": {}},
        {"cnf": {"jkt": "too-short"}},
        {"cnf": "jkt"},
        {"scope": {"read": True}},
        {CLAIM_ORGNR_PARENT: 997506499},
        {"helseid://claims/identity/pid": ["03117000205"]},
    ],
)
def test_claim_of_the_wrong_shape(as_key: ECKey, jkt: str, claims: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        verify(make_token(as_key, jkt=jkt, **claims), Lookup(as_key))


# --- AUTH-10: kid and key-bearing headers -------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["unknown", "'OR'1'='1'--", "../../etc/passwd", "%00", "a" * 256])
def test_unknown_or_hostile_kid(as_key: ECKey, jkt: str, kid: str) -> None:
    lookup = Lookup(as_key)
    with pytest.raises(InvalidToken, match="unknown key"):
        verify(make_token(as_key, jkt=jkt, kid=kid), lookup)
    assert lookup.asked == [kid]  # handed over verbatim, for comparison only


@pytest.mark.parametrize("kid", ["", "a" * 257, "' OR 1=1 --", "tab\t", 7, None])
def test_malformed_kid_is_refused_before_lookup(as_key: ECKey, jkt: str, kid: Any) -> None:
    lookup = Lookup(as_key)
    token = make_token(as_key, jkt=jkt, header={"kid": kid})
    with pytest.raises(InvalidToken, match="kid"):
        verify(token, lookup)
    assert lookup.asked == []


@pytest.mark.parametrize("param", ["jku", "x5u", "jwk", "x5c", "crit", "b64"])
def test_key_bearing_headers_are_refused_without_fetching(as_key: ECKey, jkt: str, param: str) -> None:
    value: Any = {
        "jku": "https://evil.example/jwks.json",
        "x5u": "https://evil.example/cert.pem",
        "jwk": as_key.as_dict(private=False),
        "x5c": ["MIIB"],
        "crit": ["exp"],
        "b64": False,
    }[param]
    lookup = Lookup(as_key)
    with pytest.raises(InvalidToken, match="forbidden"):
        verify(make_token(as_key, jkt=jkt, header={param: value}), lookup)
    assert lookup.asked == []


def test_lookup_must_return_a_public_key(as_key: ECKey, jkt: str) -> None:
    with pytest.raises(ValueError, match="public"):
        verify_access_token(
            make_token(as_key, jkt=jkt), policy=TokenPolicy.own(ISSUER), keys=lambda _: as_key, now=NOW
        )


# --- AUTH-11 / AUTH-17: format confusion and size -----------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        "json-general",
        "json-flattened",
        "jwe-5",
        "four",
        "two",
        "space",
        "plus",
        "padding",
        "unicode",
        "empty",
    ],
)
def test_format_confusion(as_key: ECKey, jkt: str, shape: str) -> None:
    token = make_token(as_key, jkt=jkt)
    header, payload, signature = token.split(".")
    value = {
        "json-general": json.dumps(
            {"payload": payload, "signatures": [{"protected": header, "signature": signature}]}
        ),
        "json-flattened": json.dumps({"payload": payload, "protected": header, "signature": signature}),
        "jwe-5": f"{header}.{payload}.{b64url(b'iv')}.{signature}.{b64url(b'tag')}",
        "four": f"{header}.{payload}.{signature}.{signature}",
        "two": f"{header}.{payload}",
        "space": f"{header}.{payload}.{signature} ",
        "plus": f"{header}.{payload.replace('-', '+')}.{signature}"
        if "-" in payload
        else f"{header}+.{payload}.{signature}",
        "padding": f"{header}==.{payload}.{signature}",
        "unicode": f"{header}.{payload}.{signature[:-1]}é",
        "empty": "",
    }[shape]
    with pytest.raises(InvalidToken, match="well-formed"):
        verify(value, Lookup(as_key))


def test_oversize_token_is_refused_cheaply(as_key: ECKey) -> None:
    """AUTH-17: a 30 MB token is refused by its length alone (best of 5, so a busy machine's
    scheduling hiccup does not fail the test)."""
    segment = "a" * (10 * 1024 * 1024)
    token = f"{segment}.{segment}.{segment}"
    lookup = Lookup(as_key)
    durations = []
    for _ in range(5):
        started = time.perf_counter()
        with pytest.raises(InvalidToken):
            verify(token, lookup)
        durations.append(time.perf_counter() - started)
    assert min(durations) < 0.1
    assert lookup.asked == []


def test_oversize_header_is_refused(as_key: ECKey, jkt: str) -> None:
    with pytest.raises(InvalidToken):
        verify(make_token(as_key, jkt=jkt, header={"x-pad": "p" * 600}), Lookup(as_key))


def test_header_that_is_not_json(as_key: ECKey, jkt: str) -> None:
    _, payload, signature = make_token(as_key, jkt=jkt).split(".")
    for header in (
        b64url(b"not json"),
        b64json([1, 2]),
        b64url(b'{"alg":"ES256","alg":"none","typ":"at+jwt"}'),
    ):
        with pytest.raises(InvalidToken):
            verify(f"{header}.{payload}.{signature}", Lookup(as_key))


# --- AUTH-12: tampering -------------------------------------------------------------------------------------


def test_tampered_payload_with_original_signature(as_key: ECKey, jkt: str) -> None:
    header, payload, signature = make_token(as_key, jkt=jkt).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "dho-share/observation.write"
    with pytest.raises(InvalidToken, match="signature"):
        verify(f"{header}.{b64json(claims)}.{signature}", Lookup(as_key))


def test_one_bit_flipped_in_the_payload(as_key: ECKey, jkt: str) -> None:
    header, payload, signature = make_token(as_key, jkt=jkt).split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[len(raw) // 2] ^= 0x01
    with pytest.raises(InvalidToken):
        verify(f"{header}.{b64url(bytes(raw))}.{signature}", Lookup(as_key))


_AS_KEY = ECKey.generate_key("P-256", private=True, auto_kid=True)
_JKT = ec_key().thumbprint()
_TOKEN = make_token(_AS_KEY, jkt=_JKT)
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "


@settings(max_examples=300, deadline=None)
@given(index=st.integers(min_value=0, max_value=len(_TOKEN) - 1), char=st.sampled_from(_ALPHABET))
def test_any_one_character_change_is_refused(index: int, char: str) -> None:
    if _TOKEN[index] == char:
        return
    with pytest.raises(InvalidToken):
        verify(_TOKEN[:index] + char + _TOKEN[index + 1 :], Lookup(_AS_KEY))


# --- scope --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a b  c", {"a", "b", "c"}),
        (["a", "b c"], {"a", "b", "c"}),
        ([], set()),
        (None, set()),
        (["a", 1], set()),
        (42, set()),
    ],
)
def test_parse_scope(value: Any, expected: set[str]) -> None:
    assert parse_scope(value) == expected
