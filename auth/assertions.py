"""Client authentication with ``private_key_jwt`` (RFC 7523 §2.2, §3; OIDC Core §9) under HelseID's rules.

:func:`verify_client_assertion` checks, in order:

1. a compact JWS of at most :data:`MAX_ASSERTION_BYTES`;
2. header ``typ`` exactly ``client-authentication+jwt`` (draft-ietf-oauth-rfc7523bis; HelseID sends it),
   which also stops a DPoP proof or an access token being replayed as an assertion (CLA-06);
3. ``alg`` in :data:`CLIENT_ASSERTION_ALGS`; no ``jku``/``x5u``/``jwk``/``x5c``/``crit``/``b64`` header;
4. the signature, by a key of the client's **registered** JWKS (looked up by the unverified ``iss``;
   selected by ``kid`` if the header has one, else every key of the right type is tried; RSA keys below
   2048 bits are never used);
5. ``iss`` = ``sub`` = client id, all strings (RFC 7523 §3 items 1-2);
6. ``aud`` is our issuer identifier (see *Audience policy*);
7. ``exp`` present, not past (beyond ``skew``) and at most :data:`MAX_ASSERTION_LIFETIME` seconds ahead;
   ``iat`` and ``nbf``, if present, at most ``skew`` ahead;
8. ``jti`` present (at most 256 characters) and used once: one atomic claim in the replay cache,
   remembered until the assertion has expired (RFC 7523 §3 item 7; CLA-05).

**Algorithm policy.** :data:`CLIENT_ASSERTION_ALGS` is :data:`auth._jose.CLIENT_SIGNING_ALGS`, the one
list shared with DPoP proofs and advertised in discovery: ES256/384/512, EdDSA (Ed25519), PS256/384/512
and RS256/384/512. HelseID clients sign with RSA (their samples with ``RS512``), so RSASSA-PKCS1-v1_5
is accepted as HelseID accepts it; a registered RSA key below 2048 bits is never used. ``none`` and every
``HS*`` (a client secret in disguise) are refused. A deployment may narrow the list through
``allowed_algs``, but never widen it to ``none``/``HS*`` (:func:`auth._jose.check_allowlist` raises).

**Audience policy.** ``aud`` must be our issuer identifier, as a string or as a one-element array.
The token endpoint URL and multi-valued arrays are refused: draft-ietf-oauth-rfc7523bis (after the 2024
audience-injection findings) requires the issuer so that an assertion made for one authorisation
server cannot be presented to another that shares an endpoint URL pattern.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from auth._jose import (
    ALG_CRV,
    ALG_KTY,
    CLIENT_SIGNING_ALGS,
    MIN_RSA_BITS,
    PRIVATE_JWK_MEMBERS,
    JoseFormatError,
    allowlist,
    check_forbidden_headers,
    import_public_key,
    numeric_date,
    rsa_modulus_bits,
    split_compact,
    verify_signature,
)
from auth.errors import InvalidClient
from auth.replay import ReplayCache

__all__ = [
    "ASSERTION_TYP",
    "CLIENT_ASSERTION_ALGS",
    "CLIENT_ASSERTION_TYPE",
    "MAX_ASSERTION_LIFETIME",
    "ClientAssertion",
    "ClientJwksLookup",
    "verify_client_assertion",
]

#: ``client_assertion_type`` form value (RFC 7523 §2.2).
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_TYP = "client-authentication+jwt"
CLIENT_ASSERTION_ALGS: tuple[str, ...] = CLIENT_SIGNING_ALGS
#: HelseID: ``exp`` at most 60 s after now (their clients use 10-30 s).
MAX_ASSERTION_LIFETIME = 60
#: Clock tolerance for ``exp`` in the past and ``iat``/``nbf`` in the future.
CLOCK_SKEW = 10
MAX_ASSERTION_BYTES = 16 * 1024
MAX_JTI_LENGTH = 256
#: Bound on keys tried when the header has no ``kid``: a client's JWKS holds one to three keys.
MAX_CANDIDATE_KEYS = 10
_REPLAY_NAMESPACE = "client-assertion"

#: Look a client's registered public JWKS (``{"keys": [...]}``) up by client id; ``None`` if unknown.
ClientJwksLookup = Callable[[str], Mapping[str, Any] | None]


@dataclass(frozen=True, slots=True)
class ClientAssertion:
    """A verified client assertion.

    ``assertion_details`` is the raw claim (HelseID's name; an object or an array), to be read with
    :func:`auth.attestation.parse_attestation`. ``claims`` holds every claim as sent.
    """

    client_id: str
    jti: str
    expires_at: float
    issued_at: float | None
    alg: str
    kid: str | None
    assertion_details: Any
    claims: Mapping[str, Any]


def _candidate_keys(jwks: Mapping[str, Any], alg: str, kid: str | None) -> list[ECKey | OKPKey | RSAKey]:
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        return []
    kty = ALG_KTY[alg]
    keys: list[ECKey | OKPKey | RSAKey] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != kty:
            continue
        if kid is not None and entry.get("kid") != kid:
            continue
        if entry.get("use", "sig") != "sig":
            continue
        public = {name: value for name, value in entry.items() if name not in PRIVATE_JWK_MEMBERS}
        try:
            if kty in ("EC", "OKP"):
                if public.get("crv") != ALG_CRV[alg]:
                    continue
            # Checked before import: joserfc only warns about short RSA keys.
            elif rsa_modulus_bits(public) < MIN_RSA_BITS:
                continue
            keys.append(import_public_key(public))
        except (JoseError, JoseFormatError, ValueError, TypeError):
            continue  # a broken registered key is unusable, not a reason to accept
        if len(keys) >= MAX_CANDIDATE_KEYS:
            break
    return keys


def _audience_ok(aud: Any, issuer: str) -> bool:
    if isinstance(aud, str):
        return aud == issuer
    return isinstance(aud, list) and len(aud) == 1 and aud[0] == issuer


def verify_client_assertion(
    assertion: str,
    *,
    issuer: str,
    client_jwks: ClientJwksLookup,
    replay: ReplayCache,
    now: float,
    client_id: str | None = None,
    allowed_algs: Collection[str] = CLIENT_ASSERTION_ALGS,
    max_lifetime: int = MAX_ASSERTION_LIFETIME,
    skew: int = CLOCK_SKEW,
) -> ClientAssertion:
    """Authenticate a client by its ``client_assertion`` (RFC 7523 §3, HelseID profile).

    :param assertion: the ``client_assertion`` form value.
    :param issuer: our issuer identifier; the only accepted ``aud``.
    :param client_jwks: registered public JWKS by client id (never fetched from a URL in the assertion).
    :param replay: where ``jti`` is claimed once per client until the assertion expires.
    :param now: the server clock, epoch seconds.
    :param client_id: the ``client_id`` form parameter if the request sent one; must equal ``iss``.
    :raise InvalidClient: any failure (401 ``invalid_client``; CLA-01..06).
    :raise StateUnavailable: the replay cache cannot answer (fail closed).
    :raise ValueError: ``allowed_algs`` contains ``none``/``HS*`` or an unknown name.
    """
    algs = allowlist(allowed_algs)
    try:
        compact = split_compact(assertion, max_bytes=MAX_ASSERTION_BYTES)
        unverified = compact.unverified_claims()
    except JoseFormatError as err:
        raise InvalidClient("client assertion is not a well-formed JWT") from err
    header = compact.header
    if header.get("typ") != ASSERTION_TYP:
        raise InvalidClient("client assertion typ must be client-authentication+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algs:
        raise InvalidClient("client assertion alg missing or not allowed")
    try:
        check_forbidden_headers(header)
    except JoseFormatError as err:
        raise InvalidClient("forbidden JOSE header parameter in client assertion") from err
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidClient("client assertion kid must be a string")

    claimed_client = unverified.get("iss")
    if not isinstance(claimed_client, str) or not claimed_client:
        raise InvalidClient("client assertion iss missing or not a string")
    if client_id is not None and client_id != claimed_client:
        raise InvalidClient("client_id does not match the client assertion")
    jwks = client_jwks(claimed_client)
    if jwks is None:
        raise InvalidClient("unknown client")

    verified = False
    for key in _candidate_keys(jwks, alg, kid):
        try:
            verify_signature(compact, key, (alg,))
        except JoseFormatError:
            continue
        verified = True
        break
    if not verified:
        raise InvalidClient("client assertion not signed by a registered key")
    # The signature covers the payload segment `unverified` was parsed from: those claims, now
    # authenticated (verify_signature returns that segment's bytes; parsing them again gives the same).
    claims = unverified

    if claims.get("iss") != claimed_client or claims.get("sub") != claimed_client:
        raise InvalidClient("client assertion iss and sub must both be the client id")
    if not _audience_ok(claims.get("aud"), issuer):
        raise InvalidClient("client assertion aud must be the issuer")

    exp = numeric_date(claims.get("exp"))
    if exp is None:
        raise InvalidClient("client assertion exp missing or not a number")
    if exp + skew <= now:
        raise InvalidClient("client assertion expired")
    if exp - now > max_lifetime:
        raise InvalidClient("client assertion lives too long")
    issued_at = None
    for name in ("iat", "nbf"):
        if name in claims:
            value = numeric_date(claims[name])
            if value is None or value > now + skew:
                raise InvalidClient(f"client assertion {name} invalid or in the future")
            if name == "iat":
                issued_at = value

    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise InvalidClient("client assertion jti missing or invalid")
    # Remember the jti until the assertion could no longer be accepted anyway.
    ttl = max(1, math.ceil(exp + skew - now))
    # The earliest moment this assertion could have been accepted (epoch rule, auth/replaystate.py).
    earliest = (issued_at if issued_at is not None else exp - max_lifetime) - skew
    if not replay.claim(_REPLAY_NAMESPACE, f"{claimed_client}:{jti}", ttl, acceptable_from=earliest):
        raise InvalidClient("client assertion replayed")

    return ClientAssertion(
        client_id=claimed_client,
        jti=jti,
        expires_at=exp,
        issued_at=issued_at,
        alg=alg,
        kid=kid,
        assertion_details=claims.get("assertion_details"),
        claims=claims,
    )
