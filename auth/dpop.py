"""DPoP proof verification (RFC 9449), as a pure function of the proof and the request.

:func:`verify_proof` performs every check of RFC 9449 §4.3 and the resource-server checks of §7:

1. exactly one well-formed compact JWT (the caller passes the single ``DPoP`` header value; see
   :func:`single_proof` for the "zero or two headers" case);
2. ``typ`` is the string ``dpop+jwt``;
3. ``alg`` is in the allowlist (:data:`DPOP_ALGS`, the same list as client assertions: EC, OKP and RSA,
   never ``none`` or ``HS*``). joserfc bounds a JWS header to 512 bytes, which a proof carrying an
   RSA-2048 ``jwk`` exceeds, so the header limit is raised deliberately (:data:`MAX_PROOF_HEADER_BYTES`);
4. ``jwk`` is a public key (no ``d``, ``p``, ``q``...) of the type ``alg`` names: EC or OKP on the curve
   ``alg`` names, or RSA with a modulus of at least 2048 bits; a ``jwk.alg``, if present, equals ``alg``;
5. the signature verifies with that ``jwk``;
6. ``jti`` present, a string of at most :data:`MAX_JTI_LENGTH` characters (DPOP-14);
7. ``htm`` equals the request method;
8. ``htu`` equals the request URL, both normalised per §4.3 step 9 (query and fragment dropped; scheme and
   host case-insensitive; default port dropped; RFC 3986 §6.2.2 syntax normalisation);
9. ``iat`` inside :class:`IatWindow` (default: at most 60 s old, at most 10 s ahead);
10. with an access token: ``ath`` = base64url(SHA-256(token)) (§4.3 step 12, §7);
11. with an expected key: the RFC 7638 thumbprint of ``jwk`` equals ``cnf.jkt`` (§6.1; for RSA over the
    required members ``e``, ``kty``, ``n`` only, so a ``jwk.alg`` does not change it);
12. with a nonce policy: ``nonce`` present and valid (§8, §9), else ``use_dpop_nonce`` with a fresh one;
13. ``jti`` used once: one atomic claim in the replay cache, remembered for the whole window (§11.1).

Unknown header parameters and claims are ignored (DPOP-15). Every failure raises an
:class:`~auth.errors.AuthError` subclass; the replay cache may raise
:class:`~auth.errors.StateUnavailable` (fail closed).

The ``url`` must be built by the caller from the **configured** public base URL and the request path,
never from ``Host`` or ``X-Forwarded-*`` headers (DPOP-17).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

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
    b64url_encode,
    b64url_sha256,
    check_forbidden_headers,
    loads_object,
    numeric_date,
    parsed_header,
    rsa_modulus_bits,
    split_compact,
    verify_signature,
)
from auth.errors import InvalidDPoPProof, InvalidToken, UseDPoPNonce
from auth.replay import NoncePolicy, ReplayCache

__all__ = [
    "DEFAULT_IAT_WINDOW",
    "DPOP_ALGS",
    "MAX_JTI_LENGTH",
    "DPoPProof",
    "IatWindow",
    "access_token_hash",
    "normalise_htu",
    "single_proof",
    "verify_proof",
]

#: Algorithms we accept and advertise (``algs`` in ``WWW-Authenticate``,
#: ``dpop_signing_alg_values_supported``): :data:`auth._jose.CLIENT_SIGNING_ALGS`, the list client
#: assertions use too. ``EdDSA`` is accepted with Ed25519 keys; ``Ed25519`` is its RFC 9864 name.
DPOP_ALGS: tuple[str, ...] = CLIENT_SIGNING_ALGS

#: A ``jti`` longer than this is refused before it reaches the replay cache (DPOP-14). A UUID is 36.
MAX_JTI_LENGTH = 256

#: Whole-proof bound, checked before any decoding. An RSA-4096 proof with ``ath`` and ``nonce`` is < 2.5 KB;
#: the rest is room for clients that (wrongly, but harmlessly) put a long query string into ``htu``.
MAX_PROOF_BYTES = 8192

#: Header-segment bound (base64url characters). joserfc's default is 512, which a proof carrying an
#: RSA-2048 ``jwk`` (about 570) exceeds (security-tests.md DPOP-19); 2048 fits an RSA-4096 ``jwk``
#: (about 1,000) with room for unknown extension parameters (DPOP-15). Larger RSA keys are refused.
MAX_PROOF_HEADER_BYTES = 2048

_TYP = "dpop+jwt"
_REPLAY_NAMESPACE = "dpop"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# A percent-escape, or a character RFC 3986 does not allow literally in a path (pchar and "/").
_ESCAPE_OR_UNSAFE = re.compile(r"%([0-9A-Fa-f]{2})|([^A-Za-z0-9\-._~/:@!$&'()*+,;=])")


@dataclass(frozen=True, slots=True)
class IatWindow:
    """How far a proof's ``iat`` may be from the server clock (RFC 9449 §11.1).

    Accepted: ``now - max_age <= iat <= now + max_skew``. Defaults: 60 s back, 10 s ahead, so a proof
    created ±10 s from our clock is accepted and one 61 s old or 11 s ahead is refused (DPOP-11).

    A ``jti`` is remembered for :attr:`replay_ttl` = ``max_age + max_skew + 1`` seconds: a proof is only
    acceptable while ``iat - max_skew <= now <= iat + max_age``, so no accepted proof can outlive its
    ``jti`` entry (DPOP-13, the "just inside window + skew" replay).
    """

    max_age: int = 60
    max_skew: int = 10

    def __post_init__(self) -> None:
        if self.max_age < 1 or self.max_skew < 0:
            raise ValueError("max_age must be >= 1 and max_skew >= 0")

    @property
    def replay_ttl(self) -> int:
        return self.max_age + self.max_skew + 1

    def contains(self, iat: float, now: float) -> bool:
        return now - self.max_age <= iat <= now + self.max_skew


DEFAULT_IAT_WINDOW = IatWindow()


@dataclass(frozen=True, slots=True)
class DPoPProof:
    """A verified proof: what the caller may keep (for audit: ``jti``; for binding: ``jkt``)."""

    jkt: str
    jti: str
    htm: str
    htu: str
    iat: float
    alg: str
    nonce: str | None
    public_jwk: Mapping[str, Any]


def access_token_hash(access_token: str) -> str:
    """The ``ath`` value for ``access_token``: base64url(SHA-256(ASCII)) without padding (RFC 9449 §4.2)."""
    return b64url_sha256(access_token)


def single_proof(values: Sequence[str]) -> str:
    """The one ``DPoP`` header value of a request, given all of them.

    :raise InvalidDPoPProof: none, or more than one (RFC 9449 §4.3 step 1; DPOP-02).
    """
    if len(values) != 1:
        raise InvalidDPoPProof("exactly one DPoP header is required")
    return values[0]


def _normalise_percent(path: str) -> str:
    # RFC 3986 §6.2.2.1-2: upper-case escapes, decode escapes of unreserved characters, escape anything
    # that may not appear literally (a lone "%" included). A path already decoded by the web framework
    # and the client's raw htu then compare equal.
    def fix(match: re.Match[str]) -> str:
        escaped, literal = match.group(1), match.group(2)
        if escaped is not None:
            char = chr(int(escaped, 16))
            return char if char in _UNRESERVED else f"%{escaped.upper()}"
        return "".join(f"%{byte:02X}" for byte in literal.encode("utf-8", "surrogatepass"))

    return _ESCAPE_OR_UNSAFE.sub(fix, path)


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 §5.2.4, simplified for absolute paths: "." and ".." segments resolved.
    segments: list[str] = []
    parts = path.split("/")
    for index, part in enumerate(parts[1:], start=1):
        last = index == len(parts) - 1
        if part == ".":
            if last:
                segments.append("")
        elif part == "..":
            if segments:
                segments.pop()
            if last:
                segments.append("")
        else:
            segments.append(part)
    return "/" + "/".join(segments)


@lru_cache(maxsize=4096)
def normalise_htu(url: str) -> str:
    """An HTTP(S) URI reduced to what RFC 9449 §4.3 step 9 compares.

    Scheme and host lower-cased, default port (80/443) dropped, query and fragment dropped, empty path as
    ``/``, dot segments removed, percent-encoding normalised (RFC 3986 §6.2.2, §6.2.3). A pure function
    of the string, so answers are kept (bounded, least recently used dropped; a ``ValueError`` is
    never kept): a request's URL and its proof's ``htu`` are usually the same few strings (issue 12).

    :raise ValueError: not an absolute http(s) URI with a host, or with user information.
    """
    parts = urlsplit(url if isinstance(url, str) else "")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an absolute http(s) URI")
    if parts.username is not None or parts.password is not None:
        raise ValueError("user information is not allowed in htu")
    port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    path = _remove_dot_segments(_normalise_percent(parts.path or "/"))
    return f"{scheme}://{host}{path}"


@dataclass(frozen=True, slots=True)
class _ProofHeader:
    """What a proof's header establishes: its algorithm, its checked and imported key, the key's
    thumbprint and public JWK (read-only: one instance serves every proof with that header)."""

    alg: str
    key: ECKey | OKPKey | RSAKey
    jkt: str
    public_jwk: Mapping[str, Any]


@lru_cache(maxsize=4096)
def _proof_header(header_segment: str, algs: tuple[str, ...]) -> _ProofHeader:
    """The checks of a proof that depend on its header alone (RFC 9449 §4.3 steps 3-6: ``typ``,
    ``alg`` in ``algs``, no forbidden parameter, a public ``jwk`` of the right type), with the imported
    key and its thumbprint.

    A client proves with the same key, hence the same header text, on every request, and importing
    the key costs more than verifying the signature (issue 12): the answer is remembered by the exact
    header segment (which :func:`~auth._jose.split_compact` has checked) and allowlist, bounded, least
    recently used dropped. A different key or header is a different entry; refusals are not
    remembered.
    """
    header = parsed_header(header_segment)
    if header.get("typ") != _TYP:  # also refuses a non-string typ (DPOP-04)
        raise InvalidDPoPProof("typ must be dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algs:
        raise InvalidDPoPProof("alg missing or not allowed")
    try:
        # jwk is the one key-bearing header a proof must carry; the rest stay forbidden.
        check_forbidden_headers(header, allow=frozenset({"jwk"}))
    except JoseFormatError as err:
        raise InvalidDPoPProof("forbidden JOSE header parameter") from err
    key, jkt = _proof_key(header.get("jwk"), alg)
    return _ProofHeader(alg, key, jkt, MappingProxyType(key.as_dict(private=False)))


def _proof_key(jwk: Any, alg: str) -> tuple[ECKey | OKPKey | RSAKey, str]:
    """The proof's public key, checked, and its RFC 7638 thumbprint: public only, of the key type
    ``alg`` requires; EC/OKP on the curve ``alg`` names, RSA of at least
    :data:`~auth._jose.MIN_RSA_BITS` bits; ``jwk.alg``, when present, the same as the header's
    (RFC 7517 §4.4)."""
    if not isinstance(jwk, dict):
        raise InvalidDPoPProof("jwk header missing or not an object")
    if PRIVATE_JWK_MEMBERS & jwk.keys():
        raise InvalidDPoPProof("jwk must be a public key")
    kty = jwk.get("kty")
    if kty not in ("EC", "OKP", "RSA") or kty != ALG_KTY.get(alg):
        raise InvalidDPoPProof("jwk key type not supported for this alg")
    if "alg" in jwk and jwk["alg"] != alg:
        raise InvalidDPoPProof("jwk alg does not match the proof's alg")
    try:
        key: ECKey | OKPKey | RSAKey
        if kty == "RSA":
            # Before import: joserfc only warns about short RSA keys.
            if rsa_modulus_bits(jwk) < MIN_RSA_BITS:
                raise InvalidDPoPProof("RSA jwk shorter than 2048 bits")
            key = RSAKey.import_key(jwk)
        elif jwk.get("crv") != ALG_CRV.get(alg):
            raise InvalidDPoPProof("jwk curve does not match alg")
        else:
            key = ECKey.import_key(jwk) if kty == "EC" else OKPKey.import_key(jwk)
        return key, key.thumbprint()
    except (JoseError, JoseFormatError, ValueError, TypeError) as err:
        raise InvalidDPoPProof("jwk malformed") from err


def _string_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidDPoPProof(f"{name} claim missing or not a string")
    return value


def verify_proof(
    proof: str,
    *,
    method: str,
    url: str,
    replay: ReplayCache,
    now: float,
    access_token: str | None = None,
    access_token_sha256: bytes | None = None,
    expected_jkt: str | None = None,
    nonce: NoncePolicy | None = None,
    iat_window: IatWindow = DEFAULT_IAT_WINDOW,
    allowed_algs: Collection[str] = DPOP_ALGS,
    replay_namespace: str = _REPLAY_NAMESPACE,
) -> DPoPProof:
    """Verify one DPoP proof for one request (RFC 9449 §4.3; §7.1 at a resource server).

    :param proof: the single ``DPoP`` header value.
    :param method: the request method, e.g. ``GET`` (compared exactly with ``htm``).
    :param url: the request URL built from the configured public base URL (query is ignored).
    :param replay: where ``jti`` is claimed once, for ``iat_window.replay_ttl`` seconds.
    :param now: the server clock, epoch seconds.
    :param access_token: at a resource server, the presented token; then ``ath`` is required and checked.
    :param access_token_sha256: SHA-256 of ``access_token`` (:func:`auth.tokens.token_digest`) when the
        caller has computed it already, so that a request hashes its token once; else computed here.
    :param expected_jkt: the token's ``cnf.jkt``; the proof key's RFC 7638 thumbprint must equal it.
    :param nonce: when given, a valid server nonce is required (RFC 9449 §8/§9).
    :param allowed_algs: algorithms accepted (default :data:`DPOP_ALGS`); symmetric names and ``none``
        are refused here.
    :param replay_namespace: keeps token-endpoint and resource-server ``jti`` spaces apart if wanted.
    :raise InvalidDPoPProof: any check of the proof itself fails, including replay.
    :raise InvalidToken: the proof is valid but signed by another key than ``expected_jkt`` (DPOP-07).
    :raise UseDPoPNonce: a nonce is required and missing, stale or forged; carries a fresh nonce.
    :raise StateUnavailable: the replay cache cannot answer (fail closed).
    :raise ValueError: a bad argument from the caller (``url`` not absolute, allowlist with HS/none).
    """
    algs = allowlist(allowed_algs)
    expected_htu = normalise_htu(url)

    try:
        compact = split_compact(proof, max_bytes=MAX_PROOF_BYTES, max_header_bytes=MAX_PROOF_HEADER_BYTES)
    except JoseFormatError as err:
        raise InvalidDPoPProof("DPoP proof is not a single well-formed JWT") from err
    checked = _proof_header(compact.header_segment, algs)
    try:
        payload = verify_signature(
            compact, checked.key, (checked.alg,), max_header_length=MAX_PROOF_HEADER_BYTES
        )
        claims = loads_object(payload)
    except JoseFormatError as err:
        raise InvalidDPoPProof("DPoP proof signature not verified") from err

    jti = _string_claim(claims, "jti")
    if len(jti) > MAX_JTI_LENGTH:
        raise InvalidDPoPProof("jti too long")
    if _string_claim(claims, "htm") != method:
        raise InvalidDPoPProof("htm does not match the request method")
    htu = _string_claim(claims, "htu")
    try:
        matches = normalise_htu(htu) == expected_htu
    except ValueError:
        matches = False
    if not matches:
        raise InvalidDPoPProof("htu does not match the request URL")
    iat = numeric_date(claims.get("iat"))
    if iat is None:
        raise InvalidDPoPProof("iat claim missing or not a number")
    if not iat_window.contains(iat, now):
        raise InvalidDPoPProof("iat outside the accepted window")

    if access_token is not None:
        ath = _string_claim(claims, "ath")
        expected_ath = (
            access_token_hash(access_token)
            if access_token_sha256 is None
            else b64url_encode(access_token_sha256)
        ).encode("ascii")
        if not hmac.compare_digest(ath.encode("utf-8", "surrogatepass"), expected_ath):
            raise InvalidDPoPProof("ath does not match the access token")

    jkt = checked.jkt
    if expected_jkt is not None and not hmac.compare_digest(
        jkt.encode("ascii"), expected_jkt.encode("utf-8", "surrogatepass")
    ):
        raise InvalidToken("access token is bound to another key")

    proof_nonce = claims.get("nonce")
    if nonce is not None and not (isinstance(proof_nonce, str) and nonce.check(proof_nonce, now)):
        raise UseDPoPNonce("a fresh DPoP nonce is required", nonce=nonce.issue(now))

    # Last, so that only fully valid proofs occupy the cache; keyed by key and jti so one client cannot
    # burn another's jti values.
    # acceptable_from: the proof could have been accepted from iat - max_skew on (epoch rule, replaystate).
    if not replay.claim(
        replay_namespace,
        f"{jkt}:{jti}",
        iat_window.replay_ttl,
        acceptable_from=iat - iat_window.max_skew,
    ):
        raise InvalidDPoPProof("DPoP proof replayed")

    return DPoPProof(
        jkt=jkt,
        jti=jti,
        htm=method,
        htu=htu,
        iat=iat,
        alg=checked.alg,
        nonce=proof_nonce if isinstance(proof_nonce, str) else None,
        public_jwk=checked.public_jwk,
    )
