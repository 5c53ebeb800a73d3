"""Small factories for keys, access tokens, DPoP proofs and client assertions.

Valid by default; every test changes one thing. ``raw_jws`` builds a token by hand (for ``alg=none``,
HS256 confusion, broken shapes) where a JOSE library would refuse to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from auth.dpop import access_token_hash

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z, as in the HelseID reference examples
ISSUER = "https://dho.example.test"
BASE_URL = "https://dho.example.test"
API_URL = f"{BASE_URL}/fhir/Observation"
TOKEN_ENDPOINT = f"{BASE_URL}/oauth/token"
CLIENT_ID = "0f6c2c71-3c1a-4d6e-9a51-6f2b8e1d4c7a"
ORGNR_PARENT = "997506499"
ORGNR_CHILD = "875300342"

_DROP = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def ec_key(crv: str = "P-256") -> ECKey:
    return ECKey.generate_key(crv, private=True)


def okp_key() -> OKPKey:
    return OKPKey.generate_key("Ed25519", private=True)


@lru_cache(maxsize=4)
def rsa_key(bits: int = 2048) -> RSAKey:
    """RSA keys are slow to make; tests share one per size (read-only)."""
    return RSAKey.generate_key(bits, private=True)


def public_jwk(key: Key, **extra: Any) -> dict[str, Any]:
    return {**key.as_dict(private=False), **extra}


def jwks_of(*keys: Key, **extra: Any) -> dict[str, Any]:
    return {"keys": [public_jwk(k, **extra) for k in keys]}


def default_alg(key: Key) -> str:
    if isinstance(key, ECKey):
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[key.curve_name]
    if isinstance(key, OKPKey):
        return "EdDSA"
    return "PS256"


def sign(
    header: Mapping[str, Any], claims: Mapping[str, Any] | bytes, key: Key, *, alg: str | None = None
) -> str:
    """Sign any header and payload, however odd (a non-string ``typ``...), with joserfc's algorithm
    models. ``alg`` defaults to the header's."""
    model = JWSRegistry.algorithms[alg or str(header["alg"])]
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode("utf-8")
    signing_input = f"{b64json(dict(header))}.{b64url(payload)}"
    return f"{signing_input}.{b64url(model.sign(signing_input.encode('ascii'), key))}"


def raw_jws(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A compact JWS assembled by hand, with whatever signature bytes are given."""
    return f"{b64json(dict(header))}.{b64json(dict(claims))}.{b64url(signature)}"


def hs256_jws(header: Mapping[str, Any], claims: Mapping[str, Any], secret: bytes) -> str:
    """An HS256 JWS keyed with ``secret`` (e.g. the verifier's public key bytes: AUTH-04)."""
    signing_input = f"{b64json(dict(header))}.{b64json(dict(claims))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def _apply(base: dict[str, Any], overrides: Mapping[str, Any] | None, drop: Iterable[str]) -> dict[str, Any]:
    out = {**base, **(overrides or {})}
    for name in drop:
        out.pop(name, None)
    return out


# --- DPoP proofs -----------------------------------------------------------------------------------


def proof_claims(
    *,
    method: str = "GET",
    url: str = API_URL,
    iat: float = NOW,
    jti: str | None = None,
    access_token: str | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    claims: dict[str, Any] = {"jti": jti or str(uuid.uuid4()), "htm": method, "htu": url, "iat": iat}
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    return claims


def make_proof(
    key: Key,
    *,
    method: str = "GET",
    url: str = API_URL,
    iat: float = NOW,
    jti: str | None = None,
    access_token: str | None = None,
    nonce: str | None = None,
    header: Mapping[str, Any] | None = None,
    claims: Mapping[str, Any] | None = None,
    drop_header: Iterable[str] = (),
    drop_claims: Iterable[str] = (),
    signing_key: Key | None = None,
) -> str:
    """A DPoP proof signed by ``key`` (or ``signing_key``, to forge a mismatch) with its public ``jwk``."""
    base_header = {"typ": "dpop+jwt", "alg": default_alg(key), "jwk": public_jwk(key)}
    h = _apply(base_header, header, drop_header)
    c = _apply(
        proof_claims(method=method, url=url, iat=iat, jti=jti, access_token=access_token, nonce=nonce),
        claims,
        drop_claims,
    )
    if "alg" not in h:
        return raw_jws(h, c, b"\x01" * 64)
    return sign(h, c, signing_key or key)


# --- access tokens ---------------------------------------------------------------------------------


def token_claims(*, jkt: str, now: float = NOW, **overrides: Any) -> dict[str, Any]:
    """RFC 9068 claims as our token service writes them."""
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": CLIENT_ID,
        "aud": "dho-share",
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 300,
        "jti": uuid.uuid4().hex,
        "client_id": CLIENT_ID,
        "scope": "dho-share/observation.read",
        "cnf": {"jkt": jkt},
        "helseid://claims/client/claims/orgnr_parent": ORGNR_PARENT,
        "helseid://claims/client/claims/orgnr_child": ORGNR_CHILD,
    }
    claims.update(overrides)
    return claims


def make_token(
    key: Key,
    *,
    jkt: str,
    kid: str | None = None,
    alg: str = "ES256",
    typ: str | None = "at+jwt",
    header: Mapping[str, Any] | None = None,
    drop_claims: Iterable[str] = (),
    now: float = NOW,
    **claims: Any,
) -> str:
    """An access token signed by ``key`` with ``kid`` (default: the key's own ``kid``)."""
    h: dict[str, Any] = {"alg": alg, "kid": kid if kid is not None else key.kid}
    if typ is not None:
        h["typ"] = typ
    h.update(header or {})
    c = _apply(token_claims(jkt=jkt, now=now), claims, drop_claims)
    return sign(h, c, key)


# --- client assertions -----------------------------------------------------------------------------


def assertion_claims(
    *, client_id: str = CLIENT_ID, aud: Any = ISSUER, now: float = NOW, lifetime: int = 30
) -> dict[str, Any]:
    """HelseID's client assertion shape (reference/helseid/client-assertion.payload.json)."""
    return {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + lifetime,
        "jti": uuid.uuid4().hex,
    }


def make_assertion(
    key: Key,
    *,
    alg: str | None = None,
    typ: str | None = "client-authentication+jwt",
    kid: str | None = None,
    header: Mapping[str, Any] | None = None,
    claims: Mapping[str, Any] | None = None,
    drop_claims: Iterable[str] = (),
    now: float = NOW,
    aud: Any = ISSUER,
    client_id: str = CLIENT_ID,
) -> str:
    h: dict[str, Any] = {"alg": alg or default_alg(key)}
    if typ is not None:
        h["typ"] = typ
    if kid is not None:
        h["kid"] = kid
    h.update(header or {})
    c = _apply(assertion_claims(client_id=client_id, aud=aud, now=now), claims, drop_claims)
    return sign(h, c, key)


# --- HelseID access tokens (external issuer) -------------------------------------------------------

HELSEID_ISSUER = "https://helseid-sts.test.nhn.no"
HELSEID_AUDIENCE = "nhn:dho-share"


def helseid_token_claims(
    *, jkt: str, issuer: str = HELSEID_ISSUER, audience: str = HELSEID_AUDIENCE, now: float = NOW
) -> dict[str, Any]:
    """A HelseID client-credentials access token payload, with HelseID's claim names and shapes
    (``reference/helseid/access-token.payload.client-credentials.json``): no ``sub``, ``scope`` as a
    JSON array, ``helseid://claims/...`` organisation claims, 600 s life."""
    return {
        "iss": issuer,
        "nbf": int(now),
        "iat": int(now),
        "exp": int(now) + 600,
        "aud": audience,
        "scope": ["dho-share/observation.read"],
        "cnf": {"jkt": jkt},
        "client_id": CLIENT_ID,
        "client_amr": "private_key_jwt",
        "helseid://claims/client/amr": "rsa_private_key",
        "helseid://claims/client/client_name": "Acme EPJ (multi-tenant)",
        "helseid://claims/client/claims/orgnr_parent": ORGNR_PARENT,
        "helseid://claims/client/claims/orgnr_child": ORGNR_CHILD,
        "helseid://claims/client/claims/client_tenancy": "multi-tenant",
        "jti": uuid.uuid4().hex.upper(),
    }


def make_helseid_token(
    key: Key,
    *,
    jkt: str,
    kid: str | None = None,
    alg: str = "RS256",
    issuer: str = HELSEID_ISSUER,
    audience: str = HELSEID_AUDIENCE,
    now: float = NOW,
    header: Mapping[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A HelseID-shaped access token (``typ: at+jwt``, RS256 by default) signed by ``key``."""
    h: dict[str, Any] = {"alg": alg, "kid": kid if kid is not None else key.kid, "typ": "at+jwt"}
    h.update(header or {})
    c = {**helseid_token_claims(jkt=jkt, issuer=issuer, audience=audience, now=now), **claims}
    return sign(h, c, key)
