"""The parse-once path of the JOSE verifiers and the caches behind it (issue 12).

Each compact JWS is split and decoded once (``auth._jose.split_compact``); what depends on the header
alone (the parsed header, joserfc's header checks and algorithm, a DPoP proof's checked and imported
key) is remembered by the header's exact text; our access tokens are signed under a header built once
per signing key. These tests show that a remembered header never lets anything else through: a JWS
whose header was seen before, with a tampered header, payload or signature, is refused exactly as it
is with nothing remembered, with the same status and error; that the caches stay bounded; and that a
new key (a client's new proof key, our rotated signing key) is never answered from an old entry.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey

from auth import _jose, dpop, tokens
from auth._jose import parsed_header, split_compact
from auth.assertions import verify_client_assertion
from auth.dpop import verify_proof
from auth.errors import AuthError, InvalidDPoPProof, InvalidToken, Surface
from auth.keys import SigningKeySet
from auth.replay import InMemoryReplayCache
from auth.tokens import TokenPolicy, issue_access_token, verify_access_token
from tests.auth.factories import (
    API_URL,
    CLIENT_ID,
    ISSUER,
    NOW,
    b64url,
    ec_key,
    jwks_of,
    make_assertion,
    make_proof,
    make_token,
)

ACCESS_TOKEN = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ4In0.c2ln"


def forget_headers() -> None:
    """Empty every cache of the parse-once path: the 'nothing remembered' side of a comparison."""
    parsed_header.cache_clear()
    _jose._header_algorithm.cache_clear()
    dpop._proof_header.cache_clear()


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    forget_headers()
    yield
    forget_headers()


def refusal(verify: Callable[[str], Any], value: str) -> tuple[type[AuthError], str, int, Any]:
    """How ``verify`` refuses ``value``: the error class, its description, and the HTTP status and
    headers (``WWW-Authenticate``) the API would answer with."""
    with pytest.raises(AuthError) as caught:
        verify(value)
    response = caught.value.response(Surface.RESOURCE)
    return type(caught.value), caught.value.description, response.status, dict(response.headers)


def segments(value: str) -> list[str]:
    return value.split(".")


def with_segment(value: str, index: int, segment: str) -> str:
    parts = segments(value)
    parts[index] = segment
    return ".".join(parts)


def reencoded(segment: str, change: Callable[[dict[str, Any]], None]) -> str:
    data = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    change(data)
    return b64url(json.dumps(data).encode())


def flip_last_bits(segment: str) -> str:
    """The same bytes in a non-canonical spelling: a non-zero unused bit in the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 in (2, 3)
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) | 1]


def tampered_variants(valid: str, other_signed: str) -> dict[str, str]:
    """Ways to tamper with ``valid`` while keeping its (remembered) header, and one changing it.
    ``other_signed`` is another JWS under the same header, signed by another key."""
    header, payload, signature = segments(valid)
    return {
        "payload changed, signature kept": with_segment(
            valid, 1, reencoded(payload, lambda c: c.update(jti=str(uuid.uuid4())))
        ),
        "signature of another key": with_segment(valid, 2, segments(other_signed)[2]),
        "signature of another JWS": ".".join([header, payload, segments(other_signed)[2]]),
        "signature truncated": with_segment(valid, 2, signature[:-4]),
        "signature spelled non-canonically": with_segment(valid, 2, flip_last_bits(signature)),
        "header changed (alg)": with_segment(valid, 0, reencoded(header, lambda h: h.update(alg="ES384"))),
        "header changed (typ)": with_segment(valid, 0, reencoded(header, lambda h: h.update(typ="JWT"))),
        "header spelled non-canonically": with_segment(
            valid, 0, flip_last_bits(header) if len(header) % 4 else header[:-1] + "A"
        ),
    }


def assert_refused_alike(verify: Callable[[str], Any], valid: str, other_signed: str) -> None:
    """Each tampered variant: the refusal with nothing remembered equals the refusal after ``valid``
    (same header) was accepted and its header remembered."""
    for name, value in tampered_variants(valid, other_signed).items():
        forget_headers()
        cold = refusal(verify, value)
        forget_headers()
        verify(valid)  # remembers the valid header's parse, checks and key
        warm = refusal(verify, value)
        assert warm == cold, name
        assert warm[2] == 401, name


# --- DPoP proofs -------------------------------------------------------------------------------------


def verify_get(proof: str, replay: InMemoryReplayCache | None = None, **extra: Any) -> Any:
    """``verify_proof`` of ``proof`` for ``GET API_URL`` with ``ACCESS_TOKEN`` (a fresh replay cache
    unless one is given)."""
    return verify_proof(
        proof,
        method="GET",
        url=API_URL,
        replay=replay if replay is not None else InMemoryReplayCache(),
        now=NOW,
        access_token=ACCESS_TOKEN,
        **extra,
    )


def test_tampered_proofs_are_refused_alike_with_and_without_the_header_remembered() -> None:
    key = ec_key()
    impostor = ec_key()
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}

    valid = make_proof(key, access_token=ACCESS_TOKEN, header=header)
    # The same header (the victim's jwk) over a proof signed by the impostor's key.
    forged = make_proof(key, access_token=ACCESS_TOKEN, header=header, signing_key=impostor)
    assert segments(valid)[0] == segments(forged)[0]
    assert_refused_alike(verify_get, valid, forged)


def test_a_forged_proof_after_the_genuine_one_is_refused_with_the_proofs_error() -> None:
    key = ec_key()
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    replay = InMemoryReplayCache()
    verify_get(make_proof(key, access_token=ACCESS_TOKEN, header=header), replay)
    forged = make_proof(key, access_token=ACCESS_TOKEN, header=header, signing_key=ec_key())
    with pytest.raises(InvalidDPoPProof) as caught:
        verify_get(forged, replay)
    assert caught.value.description == "DPoP proof signature not verified"
    response = caught.value.response(Surface.RESOURCE)
    assert response.status == 401
    assert 'error="invalid_dpop_proof"' in response.headers["WWW-Authenticate"]


def test_a_clients_new_proof_key_is_not_answered_from_its_old_entry() -> None:
    """Key change: after proofs with the old key were checked (and their header remembered), a proof
    with the new key has the new key's thumbprint, and a token bound to the old key refuses it."""
    old, new = ec_key(), ec_key()
    for key in (old, new):
        result = verify_get(make_proof(key, access_token=ACCESS_TOKEN))
        assert result.jkt == key.thumbprint()
    with pytest.raises(InvalidToken) as caught:
        verify_get(make_proof(new, access_token=ACCESS_TOKEN), expected_jkt=old.thumbprint())
    assert caught.value.response(Surface.RESOURCE).status == 401


def test_the_remembered_proof_key_is_public_and_read_only() -> None:
    key = ec_key()
    result = verify_get(make_proof(key, access_token=ACCESS_TOKEN))
    assert "d" not in result.public_jwk
    with pytest.raises(TypeError):
        result.public_jwk["x"] = "changed"  # type: ignore[index]
    with pytest.raises(TypeError):
        split_compact(make_proof(key), max_bytes=8192, max_header_bytes=2048).header["typ"] = "JWT"  # type: ignore[index]


def test_proof_headers_remembered_are_bounded() -> None:
    """More distinct proof keys than the cache holds: it stays at its bound, and every proof is still
    checked (the oldest keys are imported again when they come back)."""
    bound = dpop._proof_header.cache_info().maxsize
    assert bound is not None
    keys = [OKPKey.generate_key("Ed25519", private=True) for _ in range(bound + 50)]
    for key in keys:
        proof = make_proof(key, access_token=ACCESS_TOKEN)
        compact = split_compact(proof, max_bytes=dpop.MAX_PROOF_BYTES, max_header_bytes=2048)
        dpop._proof_header(compact.header_segment, dpop.DPOP_ALGS)
    assert dpop._proof_header.cache_info().currsize == bound
    first = verify_get(make_proof(keys[0], access_token=ACCESS_TOKEN))
    assert first.jkt == keys[0].thumbprint()


def test_parsed_headers_remembered_are_bounded() -> None:
    key = ec_key()
    bound = parsed_header.cache_info().maxsize
    assert bound is not None
    for i in range(bound + 50):
        split_compact(make_token(key, jkt="x" * 43, kid=f"kid-{i}"), max_bytes=16384)
    assert parsed_header.cache_info().currsize == bound


# --- client assertions -------------------------------------------------------------------------------


def test_tampered_assertions_are_refused_alike_with_and_without_the_header_remembered() -> None:
    key, impostor = ec_key(), ec_key()
    clients = {CLIENT_ID: jwks_of(key)}

    def verify(assertion: str) -> Any:
        return verify_client_assertion(
            assertion, issuer=ISSUER, client_jwks=clients.get, replay=InMemoryReplayCache(), now=NOW
        )

    valid = make_assertion(key)
    forged = make_assertion(impostor, alg="ES256")
    assert segments(valid)[0] == segments(forged)[0]
    for name, value in tampered_variants(valid, forged).items():
        forget_headers()
        with pytest.raises(AuthError) as cold:
            verify(value)
        forget_headers()
        verify(valid)
        with pytest.raises(AuthError) as warm:
            verify(value)
        assert (type(warm.value), warm.value.description) == (type(cold.value), cold.value.description), name
        status = warm.value.response(Surface.TOKEN_ENDPOINT).status
        assert (status, warm.value.response(Surface.TOKEN_ENDPOINT).body["error"]) == (401, "invalid_client")


# --- access tokens -----------------------------------------------------------------------------------


def test_tampered_access_tokens_are_refused_alike_with_and_without_the_header_remembered() -> None:
    key = ECKey.import_key({**ec_key().as_dict(private=True), "kid": "as-1"})
    impostor = ECKey.import_key({**ec_key().as_dict(private=True), "kid": "as-1"})
    public = ECKey.import_key(key.as_dict(private=False))
    policy = TokenPolicy.own(ISSUER)
    jkt = ec_key().thumbprint()

    def verify(token: str) -> Any:
        return verify_access_token(token, policy=policy, keys=lambda kid: public, now=NOW)

    valid = make_token(key, jkt=jkt)
    forged = make_token(impostor, jkt=jkt)
    assert segments(valid)[0] == segments(forged)[0]
    assert_refused_alike(verify, valid, forged)


# --- signing our tokens ------------------------------------------------------------------------------


def test_token_header_is_the_rfc9068_header_of_the_active_key(keyset: SigningKeySet) -> None:
    jkt = ec_key().thumbprint()
    issued = issue_access_token(keyset, issuer=ISSUER, client_id=CLIENT_ID, scopes=["a"], jkt=jkt, now=NOW)
    header = json.loads(base64.urlsafe_b64decode(segments(issued.token)[0] + "=="))
    assert header == {"typ": "at+jwt", "alg": "ES256", "kid": keyset.kid}
    # An independent decoder (joserfc's own) verifies it with the published key.
    decoded = jwt.decode(issued.token, keyset.verification_key(keyset.kid, NOW), algorithms=["ES256"])
    assert decoded.claims == dict(issued.claims)


def test_a_rotated_signing_key_signs_under_its_own_kid(keyset: SigningKeySet) -> None:
    """Key change: tokens signed after a rotation carry the new kid, verify with the new key and not
    with the old one; a key set loaded afresh (the same keys, new objects) signs as before."""
    jkt = ec_key().thumbprint()
    rotated = keyset.rotate(now=NOW, keep_published_for=600)
    before = issue_access_token(keyset, issuer=ISSUER, client_id=CLIENT_ID, scopes=["a"], jkt=jkt, now=NOW)
    after = issue_access_token(rotated, issuer=ISSUER, client_id=CLIENT_ID, scopes=["a"], jkt=jkt, now=NOW)
    policy = TokenPolicy.own(ISSUER, "dho-share")
    for issued, kid in ((before, keyset.kid), (after, rotated.kid)):
        verified = verify_access_token(
            issued.token, policy=policy, keys=lambda k: rotated.verification_key(k, NOW), now=NOW
        )
        assert verified.kid == kid
    assert rotated.kid != keyset.kid
    with pytest.raises(InvalidToken):
        verify_access_token(
            after.token, policy=policy, keys=lambda k: keyset.verification_key(keyset.kid, NOW), now=NOW
        )
    reloaded = SigningKeySet.from_json(rotated.to_json())
    again = issue_access_token(reloaded, issuer=ISSUER, client_id=CLIENT_ID, scopes=["a"], jkt=jkt, now=NOW)
    assert segments(again.token)[0] == segments(after.token)[0]


def test_signing_headers_remembered_are_bounded() -> None:
    jkt = ec_key().thumbprint()
    for _ in range(40):
        issue_access_token(
            SigningKeySet.generate(), issuer=ISSUER, client_id=CLIENT_ID, scopes=["a"], jkt=jkt, now=NOW
        )
        assert len(tokens._SIGNING_HEADERS) <= 16


def test_attestation_with_an_integer_beyond_64_bits_is_signed_and_verified(keyset: SigningKeySet) -> None:
    jkt = ec_key().thumbprint()
    details = [{"type": "nhn:tillitsrammeverk:parameters", "toa": 2**70}]
    issued = issue_access_token(
        keyset,
        issuer=ISSUER,
        client_id=CLIENT_ID,
        scopes=["a"],
        jkt=jkt,
        now=NOW,
        authorization_details=details,
    )
    verified = verify_access_token(
        issued.token,
        policy=TokenPolicy.own(ISSUER),
        keys=lambda kid: keyset.verification_key(kid, NOW),
        now=NOW,
    )
    assert verified.claims["authorization_details"] == details
