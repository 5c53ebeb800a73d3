"""JWT access tokens (RFC 9068): issued by our token service, verified by the API for any trusted issuer.

Verification (:func:`verify_access_token`) is deliberately stricter than a generic JWT library:

* cheap rejections first: more than :data:`MAX_TOKEN_BYTES`, not exactly three non-empty base64url
  segments (JWS JSON serialisation, JWE, ``alg=none`` with an empty signature) (AUTH-03, AUTH-11, AUTH-17);
* header ``typ`` is **required** and must be ``at+jwt`` (or ``application/at+jwt``), RFC 9068 §4; an ID
  token (``JWT``), a DPoP proof or a client assertion is refused (AUTH-07, AUTH-15). Authlib's RFC 9068
  validator accepts a missing ``typ``; we do not;
* ``alg`` in the policy's explicit allowlist, passed to every joserfc decode (AUTH-04, AUTH-05);
* no ``jku``/``x5u``/``jwk``/``x5c``/``crit``/``b64`` header: keys come only from the caller's lookup,
  never from a URL or the token itself (AUTH-10);
* ``kid`` is a string handed to the caller's lookup, which compares it and never uses it as a path or
  query; unknown ``kid`` is refused (AUTH-10);
* ``iss`` equal to the policy's issuer; ``aud`` is the audience or an array containing it (AUTH-08);
* ``exp`` required and not past (beyond ``leeway``); ``iat`` required and ``nbf`` optional, neither
  further ahead than ``leeway`` (AUTH-09);
* ``client_id`` and ``jti`` required; ``sub`` required for our own tokens (RFC 9068 §2.2);
* ``cnf.jkt`` required: every token in this system is DPoP-bound (RFC 9449 §6.1).

HelseID puts ``scope`` as a JSON array; RFC 9068 §2.2.3 as a space-separated string. Both are read.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from auth._jose import (
    JoseFormatError,
    b64url_encode,
    check_allowlist,
    check_forbidden_headers,
    loads_object,
    numeric_date,
    registry,
    split_compact,
    verify_signature,
)
from auth.errors import InvalidToken
from auth.keys import SIGNING_ALG, SigningKeySet

__all__ = [
    "AT_TYP",
    "CLAIM_HPR_NUMBER",
    "CLAIM_ORGNR_CHILD",
    "CLAIM_ORGNR_PARENT",
    "CLAIM_PID",
    "CLAIM_SECURITY_LEVEL",
    "HELSEID_TOKEN_ALGS",
    "MAX_TOKEN_BYTES",
    "OWN_AUDIENCE",
    "OWN_TOKEN_ALGS",
    "SCOPES",
    "IssuedToken",
    "KeyLookup",
    "TokenPolicy",
    "VerifiedAccessToken",
    "issue_access_token",
    "parse_scope",
    "token_digest",
    "verify_access_token",
]

AT_TYP = "at+jwt"
_ACCEPTED_TYP = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 §4; media types are case-insensitive
OWN_AUDIENCE = "dho-share"
#: What our token service signs with.
OWN_TOKEN_ALGS: tuple[str, ...] = (SIGNING_ALG,)
#: A default allowlist for a trusted HelseID issuer: its header is documented as RS256 "or similar";
#: configure the list per issuer from its discovery document rather than widening this one.
HELSEID_TOKEN_ALGS: tuple[str, ...] = ("RS256", "PS256", "ES256")
MAX_TOKEN_BYTES = 16 * 1024
#: Our header (``typ``, ``alg``, ``kid``) is ~110 bytes; HelseID adds ``x5t``-style members.
MAX_TOKEN_HEADER_BYTES = 512
DEFAULT_LIFETIME = 300
MAX_JTI_LENGTH = 256
_KID = re.compile(r"[\x21-\x7e]{1,256}")
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url SHA-256, RFC 7638 §3

#: Scopes of the API (``<audience>/<name>``, domain.md "Tokens").
SCOPES = frozenset(
    {
        "dho-share/observation.read",
        "dho-share/observation.write",
        "dho-share/consent.read",
        "dho-share/consent.write",
        "dho-share/audit.read",
        "dho-share/careplan.read",
        "dho-share/careplan.write",
        "dho-share/subscription.read",
        "dho-share/subscription.write",
    }
)

CLAIM_ORGNR_PARENT = "helseid://claims/client/claims/orgnr_parent"  # legal entity
CLAIM_ORGNR_CHILD = "helseid://claims/client/claims/orgnr_child"  # point of care
CLAIM_PID = "helseid://claims/identity/pid"
CLAIM_HPR_NUMBER = "helseid://claims/hpr/hpr_number"
CLAIM_SECURITY_LEVEL = "helseid://claims/identity/security_level"
T = TypeVar("T")
_STRING_CLAIMS = (CLAIM_ORGNR_PARENT, CLAIM_ORGNR_CHILD, CLAIM_PID, CLAIM_HPR_NUMBER, CLAIM_SECURITY_LEVEL)

#: The verification key for a ``kid``, or ``None`` if unknown (our key set, or a cached external JWKS).
KeyLookup = Callable[[str], Key | None]


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """What one trusted issuer's access tokens must look like.

    :param issuer: the exact ``iss``.
    :param audience: our audience; ``aud`` must be it or an array containing it.
    :param algorithms: explicit allowlist (asymmetric only; ``none``/``HS*`` raise ``ValueError``).
    :param leeway: seconds of clock tolerance for ``exp`` (past) and ``iat``/``nbf`` (future).
    :param require_sub: ``sub`` required (our tokens always carry it; HelseID machine tokens do not).
    :param require_cnf: ``cnf.jkt`` required (DPoP-bound tokens only).
    """

    issuer: str
    audience: str = OWN_AUDIENCE
    algorithms: tuple[str, ...] = OWN_TOKEN_ALGS
    leeway: int = 10
    require_sub: bool = False
    require_cnf: bool = True

    def __post_init__(self) -> None:
        check_allowlist(self.algorithms)
        if not self.issuer or not self.audience:
            raise ValueError("issuer and audience are required")
        if not 0 <= self.leeway <= 300:
            raise ValueError("leeway must be within 0..300 seconds")

    @classmethod
    def own(cls, issuer: str, audience: str = OWN_AUDIENCE) -> TokenPolicy:
        """Policy for tokens from our own token service: ES256, ``sub`` required."""
        return cls(issuer=issuer, audience=audience, algorithms=OWN_TOKEN_ALGS, require_sub=True)


@dataclass(frozen=True, slots=True)
class VerifiedAccessToken:
    """A token that passed :func:`verify_access_token`. ``claims`` are as issued."""

    claims: Mapping[str, Any] = field(repr=False)
    kid: str
    alg: str

    @property
    def jti(self) -> str:
        return str(self.claims["jti"])

    @property
    def client_id(self) -> str:
        return str(self.claims["client_id"])

    @property
    def expires_at(self) -> float:
        return float(self.claims["exp"])

    @property
    def jkt(self) -> str | None:
        cnf = self.claims.get("cnf")
        return cnf.get("jkt") if isinstance(cnf, dict) else None

    @property
    def scopes(self) -> frozenset[str]:
        return parse_scope(self.claims.get("scope"))


_NOT_DERIVED: Any = object()


def token_digest(token: str) -> bytes:
    """SHA-256 of the token's text: the key of :class:`VerifiedTokenCache`, and the hash whose
    base64url is a DPoP proof's ``ath`` for it (RFC 9449 §4.2; ``auth.dpop.access_token_hash``)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class VerifiedTokenCache:
    """Access tokens that passed :func:`verify_access_token`, by the SHA-256 of the token, until they
    expire (issue 12: the signature check and claim checks run once per token, not per request).

    Only the token's own verification is remembered, and what :meth:`derived` derives from its
    claims alone (the :class:`~auth.caller.Caller`): revocation, the DPoP proof, its ``ath`` and the
    replay claim are still checked on every request by the caller. A hit is served only while
    ``exp + leeway > now``, exactly as :func:`verify_access_token` would decide; ``nbf``/``iat`` in
    the future never reach the cache (they fail verification).

    Bounded in two ways. Expired entries are swept out at most every ``sweep_seconds`` (on an insert),
    so the cache holds the tokens still live plus those verified since the last sweep: without the
    sweep a worker kept every token it had seen until ``max_entries`` (a few KiB each, with their
    claims), and its memory crept up for hours (issue 12 soak). And when it is full of live tokens
    anyway, it starts afresh. Safe across threads (single dict ops; an insert racing a sweep is at
    worst a later cache miss).
    """

    def __init__(self, max_entries: int = 10_000, sweep_seconds: float = 30.0):
        self.max_entries = max_entries
        self.sweep_seconds = sweep_seconds
        self._entries: dict[bytes, list[Any]] = {}
        self._next_sweep = 0.0

    def _entry(self, token: str, policy: TokenPolicy, keys: KeyLookup, now: float) -> list[Any]:
        key = token_digest(token)
        hit = self._entries.get(key)
        if hit is not None and hit[0].claims.get("iss") == policy.issuer and now < hit[1]:
            return hit
        verified = verify_access_token(token, policy=policy, keys=keys, now=now)
        if now >= self._next_sweep or len(self._entries) >= self.max_entries:
            live = {k: v for k, v in list(self._entries.items()) if v[1] > now}
            self._entries = live if len(live) < self.max_entries else {}
            self._next_sweep = now + self.sweep_seconds
        entry = [verified, verified.expires_at + policy.leeway, _NOT_DERIVED]
        self._entries[key] = entry
        return entry

    def held(self) -> int:
        """How many verified tokens are remembered now, expired ones not yet swept included (for tests
        and measurements). Deliberately not ``__len__``: an empty cache must not be falsy."""
        return len(self._entries)

    def live(self, token: str, now: float, *, digest: bytes | None = None) -> VerifiedAccessToken | None:
        """``token`` as :meth:`verify` verified it, while that answer holds (``now < exp + leeway``);
        ``None`` when it was never verified here or has expired. The entry was verified for the
        issuer its own ``iss`` names, which is the ``iss`` the same token's bytes carry.

        ``digest``: :func:`token_digest` of ``token``, when the caller has it (one hash per request)."""
        hit = self._entries.get(token_digest(token) if digest is None else digest)
        if hit is not None and now < hit[1]:
            verified: VerifiedAccessToken = hit[0]
            return verified
        return None

    def verify(self, token: str, *, policy: TokenPolicy, keys: KeyLookup, now: float) -> VerifiedAccessToken:
        """:func:`verify_access_token`, answered from the cache while the token is unexpired."""
        verified: VerifiedAccessToken = self._entry(token, policy, keys, now)[0]
        return verified

    def derived(
        self,
        token: str,
        verified: VerifiedAccessToken,
        derive: Callable[[Mapping[str, Any]], T],
        *,
        digest: bytes | None = None,
    ) -> T:
        """``derive(verified.claims)`` for ``token`` as :meth:`verify` just answered it, computed once
        per cached token (``derive`` must be a pure function of the verified claims; pass the same one
        on every call). When ``derive`` raises, nothing is remembered and the next request derives
        again; a token no longer cached is derived afresh. ``digest`` as in :meth:`live`."""
        entry = self._entries.get(token_digest(token) if digest is None else digest)
        if entry is None or entry[0] is not verified:
            return derive(verified.claims)
        found = entry[2]
        if found is _NOT_DERIVED:
            found = derive(verified.claims)
            entry[2] = found
        result: T = found
        return result


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly signed access token and what the token response and audit need about it."""

    token: str = field(repr=False)
    jti: str
    expires_at: int
    lifetime: int
    claims: Mapping[str, Any] = field(repr=False)


def parse_scope(value: Any) -> frozenset[str]:
    """Scopes from a ``scope`` claim: a space-separated string (RFC 9068 §2.2.3) or an array (HelseID).

    Anything else, and a missing claim, give the empty set.
    """
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(s for v in value for s in v.split())
    return frozenset()


def issue_access_token(
    keyset: SigningKeySet,
    *,
    issuer: str,
    client_id: str,
    scopes: Iterable[str],
    jkt: str,
    now: float,
    lifetime: int = DEFAULT_LIFETIME,
    audience: str = OWN_AUDIENCE,
    subject: str | None = None,
    orgnr_parent: str | None = None,
    orgnr_child: str | None = None,
    pid: str | None = None,
    hpr_number: str | None = None,
    security_level: str | None = None,
    authorization_details: list[dict[str, Any]] | None = None,
) -> IssuedToken:
    """Sign an RFC 9068 access token with the key set's active key (ES256, ``typ: at+jwt``).

    ``sub`` defaults to the client id (RFC 9068 §2.2: client credentials have no resource owner). ``jti``
    is 256 random bits. ``cnf.jkt`` binds the token to the DPoP key (RFC 9449 §6.1). Optional HelseID
    claims are written only when given.
    """
    scope_list = sorted(set(scopes))
    if any(not s or " " in s for s in scope_list):
        raise ValueError("scopes must be non-empty and contain no spaces")
    if not _JKT.fullmatch(jkt):
        raise ValueError("jkt must be a base64url SHA-256 thumbprint")
    if not 1 <= lifetime <= 3600:
        raise ValueError("lifetime must be within 1..3600 seconds")
    issued_at = int(now)
    jti = secrets.token_urlsafe(32)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject if subject is not None else client_id,
        "aud": audience,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + lifetime,
        "jti": jti,
        "client_id": client_id,
        "scope": " ".join(scope_list),
        "cnf": {"jkt": jkt},
    }
    optional = {
        CLAIM_ORGNR_PARENT: orgnr_parent,
        CLAIM_ORGNR_CHILD: orgnr_child,
        CLAIM_PID: pid,
        CLAIM_HPR_NUMBER: hpr_number,
        CLAIM_SECURITY_LEVEL: security_level,
    }
    claims.update({name: value for name, value in optional.items() if value is not None})
    if authorization_details is not None:
        claims["authorization_details"] = authorization_details
    return IssuedToken(_sign(keyset, claims), jti, issued_at + lifetime, lifetime, claims)


def _sign(keyset: SigningKeySet, claims: Mapping[str, Any]) -> str:
    """The compact JWS (RFC 7515 §7.1) of ``claims`` under ``{"typ": "at+jwt", "alg": "ES256", "kid"}``,
    signed by the key set's active key with joserfc's ES256 model (``cryptography`` underneath).

    What ``jwt.encode`` would redo per token although it does not change between tokens (a registry,
    its header check, the key check, the header's JSON and base64url) is done once per signing key
    (:func:`_signing_header`)."""
    header_segment = _signing_header(keyset.kid, keyset.active)
    try:
        payload = orjson.dumps(claims)
    except TypeError:  # an integer beyond 64 bits in the attestation: the standard encoder writes it
        payload = json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    signing_input = f"{header_segment}.{b64url_encode(payload)}"
    signature = _OWN_SIGNING_ALG.sign(signing_input.encode("ascii"), keyset.active)
    return f"{signing_input}.{b64url_encode(signature)}"


_OWN_SIGNING_ALG = registry(OWN_TOKEN_ALGS).get_alg(SIGNING_ALG)
_SIGNING_HEADERS: dict[int, tuple[ECKey, str]] = {}


def _signing_header(kid: str, key: ECKey) -> str:
    """The base64url header segment of our tokens signed by ``key`` with ``kid``, after joserfc's checks
    of that header and of ``key`` for ES256 (``check_header``, ``check_key``): once per key object
    (a key set loaded afresh, e.g. after a rotation, brings new objects and is checked again; the
    entry holds its key, so an identity is never reused for another). Bounded: beyond 16 keys the
    table starts afresh."""
    entry = _SIGNING_HEADERS.get(id(key))
    if entry is not None and entry[0] is key:
        return entry[1]
    header = {"typ": AT_TYP, "alg": SIGNING_ALG, "kid": kid}
    registry(OWN_TOKEN_ALGS).check_header(header)
    _OWN_SIGNING_ALG.check_key(key)
    segment = b64url_encode(json.dumps(header, separators=(",", ":")).encode("ascii"))
    if len(_SIGNING_HEADERS) >= 16:
        _SIGNING_HEADERS.clear()
    _SIGNING_HEADERS[id(key)] = (key, segment)
    return segment


def _required_string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"{name} claim missing or not a string")
    return value


def _audience_ok(aud: Any, audience: str) -> bool:
    if isinstance(aud, str):
        return aud == audience
    return isinstance(aud, list) and all(isinstance(a, str) for a in aud) and audience in aud


def verify_access_token(
    token: str, *, policy: TokenPolicy, keys: KeyLookup, now: float
) -> VerifiedAccessToken:
    """Verify an access token for ``policy`` (RFC 9068 §4, RFC 8725); see the module docstring.

    :param token: the credentials of ``Authorization: DPoP <token>``.
    :param keys: ``kid`` to public key, or ``None`` if unknown. Called once, after all header checks.
    :param now: the server clock, epoch seconds.
    :raise InvalidToken: any failure (401 ``invalid_token``).
    """
    try:
        compact = split_compact(token, max_bytes=MAX_TOKEN_BYTES, max_header_bytes=MAX_TOKEN_HEADER_BYTES)
    except JoseFormatError as err:
        raise InvalidToken("access token is not a well-formed JWT") from err
    header = compact.header

    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP:
        raise InvalidToken("access token typ must be at+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        raise InvalidToken("access token alg missing or not allowed")
    try:
        check_forbidden_headers(header)
    except JoseFormatError as err:
        raise InvalidToken("forbidden JOSE header parameter in access token") from err
    kid = header.get("kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise InvalidToken("access token kid missing or malformed")
    key = keys(kid)
    if key is None:
        raise InvalidToken("access token signed by an unknown key")
    if not isinstance(key, ECKey | RSAKey | OKPKey) or key.is_private:
        raise ValueError("the key lookup must return a public asymmetric key")

    try:
        payload = verify_signature(compact, key, policy.algorithms, max_header_length=MAX_TOKEN_HEADER_BYTES)
        claims = loads_object(payload)
    except JoseFormatError as err:
        raise InvalidToken("access token signature not verified") from err

    if _required_string(claims, "iss") != policy.issuer:
        raise InvalidToken("access token from another issuer")
    if not _audience_ok(claims.get("aud"), policy.audience):
        raise InvalidToken("access token is not for this audience")
    exp = numeric_date(claims.get("exp"))
    if exp is None:
        raise InvalidToken("exp claim missing or not a number")
    if exp + policy.leeway <= now:
        raise InvalidToken("access token expired")
    iat = numeric_date(claims.get("iat"))
    if iat is None:
        raise InvalidToken("iat claim missing or not a number")
    if iat > now + policy.leeway:
        raise InvalidToken("access token issued in the future")
    if "nbf" in claims:
        nbf = numeric_date(claims["nbf"])
        if nbf is None or nbf > now + policy.leeway:
            raise InvalidToken("access token not yet valid")
    _required_string(claims, "client_id")
    if len(_required_string(claims, "jti")) > MAX_JTI_LENGTH:
        raise InvalidToken("jti claim too long")
    if policy.require_sub or "sub" in claims:
        _required_string(claims, "sub")
    if "scope" in claims and not isinstance(claims["scope"], str | list):
        raise InvalidToken("scope claim must be a string or an array")
    cnf = claims.get("cnf")
    if cnf is not None or policy.require_cnf:
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if not isinstance(jkt, str) or not _JKT.fullmatch(jkt):
            raise InvalidToken("access token is not bound to a DPoP key (cnf.jkt)")
    for name in _STRING_CLAIMS:
        if name in claims and not isinstance(claims[name], str):
            raise InvalidToken(f"{name} must be a string")
    return VerifiedAccessToken(claims, kid, alg)
