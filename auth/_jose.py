"""Shared JOSE plumbing for the verifiers: cheap shape checks before any parsing, strict JSON, explicit
algorithm allowlists, and one JWS registry per allowlist.

Private to ``auth``. Every verifier here decodes with ``joserfc`` and **always** passes an explicit
allowlist (RFC 8725 §3.1): joserfc's default would otherwise allow HS256/RS256/ES256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import orjson
from joserfc.errors import JoseError
from joserfc.jwa import EdDSAAlgorithm, JWSAlgModel
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

# A compact JWS is three non-empty base64url segments. This single regular expression rejects JWS JSON
# serialisation, JWE (five segments), four segments, an empty signature (``alg=none`` style) and any
# character outside base64url (AUTH-03, AUTH-11) before a byte is decoded.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

# Algorithms that can never be allowed: none, and every symmetric one (RFC 8725 §3.1/§3.2: an HMAC
# "verified" with a public key is the classic algorithm-confusion attack, AUTH-04).
_NEVER = re.compile(r"(?i)none|HS\d+")

#: Header parameters that point the verifier at a key or change how the payload is read. A verifier must
#: never fetch a key from a URL in the token (no outbound request, RFC 8725 §3.10), never trust a key the
#: token carries for itself, and must not meet an extension it does not understand (``crit``, ``b64``).
FORBIDDEN_HEADER_PARAMS = frozenset({"jku", "x5u", "jwk", "x5c", "crit", "b64"})

#: Key types that belong to each asymmetric algorithm family.
ALG_KTY = {
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "EdDSA": "OKP",
    "Ed25519": "OKP",
}

#: The curve each EC/OKP algorithm requires (RFC 7518 §3.4, RFC 8037 §3.1, RFC 9864 §2).
ALG_CRV = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "EdDSA": "Ed25519", "Ed25519": "Ed25519"}

#: JWK members that only a private (or symmetric) key has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

MIN_RSA_BITS = 2048

#: What a client may sign with: client assertions (RFC 7523) and DPoP proofs (RFC 9449) share this one
#: allowlist, and discovery advertises it (``token_endpoint_auth_signing_alg_values_supported``,
#: ``dpop_signing_alg_values_supported``). HelseID clients sign with RSA, commonly ``RS512``
#: (``shared/reference/helseid/dpop-proof.header.rsa.json``; HelseID's API sample accepts RS/PS/ES
#: 256/384/512), so RSASSA-PKCS1-v1_5 and RSASSA-PSS are both here, with keys of at least
#: :data:`MIN_RSA_BITS` bits. ``EdDSA`` is accepted with Ed25519 keys only; ``Ed25519`` is its RFC 9864
#: name. Never ``none`` or ``HS*`` (:func:`check_allowlist`).
CLIENT_SIGNING_ALGS: tuple[str, ...] = (
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
    "PS256",
    "PS384",
    "PS512",
    "RS256",
    "RS384",
    "RS512",
)


class JoseFormatError(ValueError):
    """A JOSE object failed a shape or JSON check; the message is a fixed phrase safe to show."""


def rsa_modulus_bits(jwk: Mapping[str, Any]) -> int:
    """The size in bits of an RSA JWK's modulus ``n`` (RFC 7518 §6.3.1.1), read before any import.

    Checked before joserfc sees the key: joserfc only *warns* about short RSA keys.

    :raise JoseFormatError: ``n`` missing, not a string or not strict base64url.
    """
    modulus = jwk.get("n")
    if not isinstance(modulus, str):
        raise JoseFormatError("RSA key without a modulus")
    return int.from_bytes(b64url_decode(modulus), "big").bit_length()


def check_allowlist(algorithms: Collection[str]) -> tuple[str, ...]:
    """Validate an algorithm allowlist: non-empty, asymmetric, known to us.

    :raise ValueError: for ``none``, any ``HS*``, or an unknown name: a configuration error, raised
        at the call rather than silently widening what a verifier accepts.
    """
    names = tuple(algorithms)
    if not names:
        raise ValueError("an algorithm allowlist must not be empty")
    for name in names:
        if _NEVER.fullmatch(name) or name not in ALG_KTY:
            raise ValueError(f"algorithm {name!r} may not be allowed")
    return names


def allowlist(algorithms: Collection[str]) -> tuple[str, ...]:
    """:func:`check_allowlist`, remembered for a tuple (what the verifiers are given on every request;
    a refusal is not remembered)."""
    return _checked(algorithms) if isinstance(algorithms, tuple) else check_allowlist(algorithms)


@lru_cache(maxsize=32)
def _checked(algorithms: tuple[str, ...]) -> tuple[str, ...]:
    return check_allowlist(algorithms)


class _QuietEdDSA(EdDSAAlgorithm):
    """``EdDSA`` restricted to Ed25519 and without joserfc's deprecation warning.

    RFC 9864 deprecates the polymorphic name ``EdDSA`` in favour of ``Ed25519``; the risk it addresses is
    an unpinned curve, which ``check_key`` pins here. Clients in the wild still send ``EdDSA``.
    """

    security_warning = ""  # falsy: joserfc warns only when this is set

    def check_key(self, key: Any) -> None:
        super().check_key(key)
        if getattr(key, "curve_name", None) != "Ed25519":
            raise JoseFormatError("EdDSA is accepted with Ed25519 keys only")


class _Registry(JWSRegistry):
    algorithms: dict[str, JWSAlgModel] = {**JWSRegistry.algorithms, "EdDSA": _QuietEdDSA()}  # noqa: RUF012


@lru_cache(maxsize=32)
def registry(algorithms: tuple[str, ...], max_header_length: int = 512) -> JWSRegistry:
    """A JWS registry allowing exactly ``algorithms``.

    Unknown header parameters are accepted (RFC 9449 §4.3 / DPOP-15: extensions are ignored); the ones
    that matter are refused before this point by :data:`FORBIDDEN_HEADER_PARAMS`. ``max_header_length``
    bounds the base64url header segment (joserfc's default is 512 bytes).
    """
    reg = _Registry(algorithms=check_allowlist(algorithms), strict_check_header=False)
    reg.max_header_length = max_header_length
    return reg


def import_public_key(jwk: Mapping[str, Any]) -> ECKey | OKPKey | RSAKey:
    """``jwk`` (a public EC, OKP or RSA JWK, already checked by the caller) imported by joserfc.

    Importing costs more than verifying a signature with the key, and a client signs with the same
    registered key on every request (issue 12), so imports are remembered by the JWK's every member
    (canonical JSON): a changed or rotated key is a different entry and never served for another; a
    key no longer registered is simply not asked for. Failures are not remembered.

    :raise JoseError | ValueError | TypeError: joserfc cannot import it.
    """
    return _imported(orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS))


@lru_cache(maxsize=1024)
def _imported(canonical: bytes) -> ECKey | OKPKey | RSAKey:
    members = orjson.loads(canonical)
    kty = members.get("kty")
    if kty == "EC":
        return ECKey.import_key(members)
    if kty == "OKP":
        return OKPKey.import_key(members)
    if kty == "RSA":
        return RSAKey.import_key(members)
    raise ValueError("not an EC, OKP or RSA key")


_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def b64url_decode(segment: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2): anything else is a format error."""
    if len(segment) % 4 == 1:
        raise JoseFormatError("bad base64url segment")
    try:
        # base64.urlsafe_b64decode's own steps, without its two layers of calls.
        standard = segment.encode("ascii").translate(_URLSAFE_TO_STANDARD)
        return binascii.a2b_base64(standard + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as err:
        raise JoseFormatError("bad base64url segment") from err


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_sha256(value: str) -> str:
    """``base64url(SHA-256(ASCII(value)))`` without padding: the DPoP ``ath`` (RFC 9449 §4.2)."""
    # Tokens are ASCII; anything else (which cannot match) is hashed as UTF-8 instead of raising.
    return b64url_encode(hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest())


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 / RFC 8725 §3.11: two "typ" or "alg" members could be read differently by two
    # parsers; refuse rather than pick one. A duplicate makes the dict shorter than the list.
    out = dict(pairs)
    if len(out) != len(pairs):
        raise JoseFormatError("duplicate JSON member")
    return out


def _no_constant(_: str) -> Any:
    # NaN/Infinity are not JSON; a NaN "iat" compares false with everything and would slip through a
    # window check.
    raise JoseFormatError("non-finite number")


# Built once: json.loads with hooks builds a new decoder (and scanner) on every call.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def loads_object(data: bytes) -> dict[str, Any]:
    """Parse a JSON object strictly: UTF-8, no duplicate members, no NaN/Infinity, an object at the top."""
    try:
        value = _STRICT_JSON.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError, ValueError) as err:
        if isinstance(err, JoseFormatError):
            raise
        raise JoseFormatError("not a JSON object") from err
    if not isinstance(value, dict):
        raise JoseFormatError("not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Compact:
    """A compact JWS split but not yet verified: every segment decoded once (the signature check and
    the claims read the bytes :func:`split_compact` already decoded).

    ``header`` is shared by every JWS with the same header segment (:func:`parsed_header`): read-only.
    """

    value: str
    header: Mapping[str, Any]
    header_segment: str
    payload_segment: str
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    def unverified_claims(self) -> dict[str, Any]:
        """The payload, parsed. Use only to find the verification key (e.g. a client's ``iss``)."""
        return loads_object(self.payload)


def split_compact(value: str, *, max_bytes: int, max_header_bytes: int = 512) -> Compact:
    """Check the shape of a compact JWS cheaply, then parse its header.

    Length and character checks come first so that a 10 MB header (AUTH-17) or a JSON-serialised JWS
    (AUTH-11) costs one comparison and one regular-expression pass.
    """
    if not isinstance(value, str) or len(value) > max_bytes:
        raise JoseFormatError("token too large or not text")
    if not _COMPACT.fullmatch(value):
        raise JoseFormatError("not a compact JWS")
    header_segment, payload_segment, signature_segment = value.split(".")
    if len(header_segment) > max_header_bytes:
        raise JoseFormatError("JOSE header too large")
    return Compact(
        value,
        parsed_header(header_segment),
        header_segment,
        payload_segment,
        _canonical_b64url(payload_segment),
        _canonical_b64url(signature_segment),
    )


@lru_cache(maxsize=2048)
def parsed_header(segment: str) -> Mapping[str, Any]:
    """The JOSE header in ``segment`` (canonical base64url, strict JSON object), read-only.

    A client sends the same header on every request (its ``alg``, ``kid``, ``typ``; a DPoP proof its
    ``jwk`` too), so parsing is remembered by the exact segment text: a pure function of the string,
    bounded (least recently used dropped); a refusal is never remembered (issue 12).
    """
    return MappingProxyType(loads_object(_canonical_b64url(segment)))


_B64URL_VALUE = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
# For a segment of 2 or 3 characters past a multiple of 4, the low bits of its last character that
# carry no byte (RFC 4648 §3.5: they must be zero in a canonical encoding).
_UNUSED_LOW_BITS = {2: 0b1111, 3: 0b11}


def _canonical_b64url(segment: str) -> bytes:
    # Only canonical base64url (unused trailing bits zero): otherwise several strings carry the same
    # signature and a token or proof would not be identified by its text. ``segment`` has passed
    # :data:`_COMPACT` (base64url characters only).
    decoded = b64url_decode(segment)
    if _B64URL_VALUE.get(segment[-1:], 0) & _UNUSED_LOW_BITS.get(len(segment) % 4, 0):
        raise JoseFormatError("non-canonical base64url segment")
    return decoded


def numeric_date(value: Any) -> float | None:
    """A JWT NumericDate (RFC 7519 §2) as a float, or ``None`` if the value is not a finite number.

    ``bool`` is an ``int`` in Python; ``true`` is not a date.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def verify_signature(
    compact: Compact, key: Key, algorithms: tuple[str, ...], *, max_header_length: int = 512
) -> bytes:
    """Verify the signature of ``compact`` with ``key`` under ``algorithms``; return the payload bytes.

    What ``jws.validate_compact`` checks, with joserfc's own parts: the header against the registry
    (``check_header``) and the algorithm against ``algorithms`` (``get_alg``), both remembered per
    registry and header segment (:func:`_header_algorithm`); the key against the algorithm (type, curve,
    ``use``, ``alg``: ``check_key``), then the signature over the segments' bytes (the algorithm's
    ``verify``, with ``cryptography``). The JWS is not split and decoded a second time:
    :func:`split_compact` did that, more strictly (canonical base64url, no duplicate JSON members).
    Unencoded payloads (RFC 7797 ``b64``) are refused, as every caller forbids that header.

    :raise JoseFormatError: bad signature, algorithm not allowed, key of the wrong type or curve.
    """
    if "b64" in compact.header:
        raise JoseFormatError("signature not verified")
    reg = registry(algorithms, max_header_length)
    signed = len(compact.header_segment) + 1 + len(compact.payload_segment)  # header "." payload
    signature_length = len(compact.value) - signed - 1
    # joserfc's size limits of the payload and signature segments (validate_*_size).
    if len(compact.payload_segment) > reg.max_payload_length or signature_length > reg.max_signature_length:
        raise JoseFormatError("signature not verified")
    try:
        alg = _header_algorithm(reg, compact.header_segment)
        alg.check_key(key)
        verified = alg.verify(compact.value[:signed].encode("ascii"), compact.signature, key)
    except (JoseError, ValueError, TypeError) as err:
        raise JoseFormatError("signature not verified") from err
    if not verified:
        raise JoseFormatError("signature not verified")
    return compact.payload


@lru_cache(maxsize=2048)
def _header_algorithm(reg: JWSRegistry, header_segment: str) -> JWSAlgModel:
    """joserfc's header checks of ``reg`` for the header in ``header_segment`` (size, ``crit``, the
    registered parameters' types), and the algorithm model its ``alg`` names, if ``reg`` allows it.

    A pure function of the registry and the segment text, so remembered (bounded; refusals are not)."""
    reg.validate_header_size(header_segment.encode("ascii"))
    header = dict(parsed_header(header_segment))
    reg.check_header(header)
    name = header.get("alg")
    if not isinstance(name, str):
        raise JoseFormatError("alg missing")
    return reg.get_alg(name)


def check_forbidden_headers(header: Mapping[str, Any], *, allow: frozenset[str] = frozenset()) -> None:
    """Refuse header parameters from :data:`FORBIDDEN_HEADER_PARAMS` (minus ``allow``)."""
    if (FORBIDDEN_HEADER_PARAMS - allow) & header.keys():
        raise JoseFormatError("forbidden JOSE header parameter")
