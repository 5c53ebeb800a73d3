"""Signing keys of our token service: one active ES256 key and retired keys still published for a while.

Rotation (REL-06): :meth:`SigningKeySet.rotate` makes a new key active and keeps the old one *published*
(in the JWKS and for verification) until a given time, so tokens it signed stay verifiable for their
whole life. Choose that period at least as long as the access-token lifetime plus the longest JWKS cache
time of any resource server. (A resource server that meets an unknown ``kid`` refreshes its cached JWKS,
rate-limited; that is the caller's key lookup, not this module.)

``kid`` is the RFC 7638 JWK thumbprint (SHA-256) of the public key, so it is derived, unique per key
and never chosen by hand.

The private key set is kept as JSON at a path the caller gives (outside the repository), written
atomically with mode 0600. The public JWKS (RFC 7517 §5) never contains a private member (AS-05).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from auth._jose import PRIVATE_JWK_MEMBERS

__all__ = [
    "SIGNING_ALG",
    "RetiredKey",
    "SigningKeySet",
    "generate_signing_key",
    "load_keyset",
    "save_keyset",
]

SIGNING_ALG = "ES256"
_CURVE = "P-256"
_FORMAT = "dho-share/signing-keys"
_VERSION = 1


def generate_signing_key() -> ECKey:
    """A new private EC P-256 key for ES256, with ``kid`` = RFC 7638 thumbprint, ``use`` = ``sig``."""
    key = ECKey.generate_key(_CURVE, parameters={"use": "sig", "alg": SIGNING_ALG}, private=True)
    return _with_kid(key)


def _with_kid(key: ECKey) -> ECKey:
    # The thumbprint covers only kty/crv/x/y (RFC 7638 §3.2), so adding kid/use/alg does not change it.
    data = key.as_dict(private=key.is_private)
    data.update({"kid": key.thumbprint(), "use": "sig", "alg": SIGNING_ALG})
    return ECKey.import_key(data)


def _public(key: ECKey) -> ECKey:
    return ECKey.import_key(_public_dict(key))


def _public_dict(key: ECKey) -> dict[str, Any]:
    data = dict(key.as_dict(private=False))
    # Belt and braces for AS-05: as_dict(private=False) already drops them.
    for member in PRIVATE_JWK_MEMBERS:
        data.pop(member, None)
    return data


def _kid(key: ECKey) -> str:
    kid = key.kid
    if kid is None:  # pragma: no cover - every key here gets one in _with_kid
        raise ValueError("signing key without kid")
    return kid


@dataclass(frozen=True, slots=True)
class RetiredKey:
    """A former signing key, still published and accepted for verification until ``published_until``."""

    key: ECKey
    published_until: int

    @property
    def kid(self) -> str:
        return _kid(self.key)


@dataclass(frozen=True, slots=True)
class SigningKeySet:
    """The token service's keys: ``active`` signs; ``retired`` only verify, each until its time.

    Immutable: rotation returns a new set, which the caller saves with :func:`save_keyset`.
    """

    active: ECKey
    retired: tuple[RetiredKey, ...] = ()

    def __post_init__(self) -> None:
        kids = [self.kid, *(r.kid for r in self.retired)]
        if len(set(kids)) != len(kids):
            raise ValueError("duplicate kid in signing key set")
        for key in (self.active, *(r.key for r in self.retired)):
            if not key.is_private or key.curve_name != _CURVE or key.kid != key.thumbprint():
                raise ValueError("signing keys must be private P-256 keys with kid = RFC 7638 thumbprint")

    @classmethod
    def generate(cls) -> SigningKeySet:
        """A set with one fresh active key and nothing retired."""
        return cls(generate_signing_key())

    @property
    def kid(self) -> str:
        """The ``kid`` of the active key (goes into every token header we sign)."""
        return _kid(self.active)

    def rotate(self, *, now: float, keep_published_for: int) -> SigningKeySet:
        """A new set: a fresh active key; the current one retired, published until
        ``now + keep_published_for``; retired keys past their time dropped."""
        if keep_published_for < 0:
            raise ValueError("keep_published_for must not be negative")
        kept = self.prune(now).retired
        retired = RetiredKey(self.active, int(now) + keep_published_for)
        return SigningKeySet(generate_signing_key(), (*kept, retired))

    def prune(self, now: float) -> SigningKeySet:
        """This set without retired keys whose publication has ended."""
        return replace(self, retired=tuple(r for r in self.retired if r.published_until > now))

    def _published(self, now: float) -> Iterator[ECKey]:
        yield self.active
        for retired in self.retired:
            if retired.published_until > now:
                yield retired.key

    def public_jwks(self, now: float) -> dict[str, list[dict[str, Any]]]:
        """The JWKS to publish (RFC 7517 §5): active key first, then retired keys still published.

        Public members only (``kty``, ``crv``, ``x``, ``y``, ``kid``, ``use``, ``alg``).
        """
        return {"keys": [_public_dict(key) for key in self._published(now)]}

    def verification_key(self, kid: str, now: float) -> ECKey | None:
        """The public key for ``kid`` if it is published at ``now``; ``None`` for an unknown ``kid``.

        Plug into :func:`auth.tokens.verify_access_token` as
        ``lambda kid: keyset.verification_key(kid, now)``.
        The ``kid`` is only compared with our own, never used as a path or query (AUTH-10).
        """
        for key in self._published(now):
            if key.kid == kid:
                return _public(key)
        return None

    def to_json(self) -> str:
        """The private key set as JSON (contains private keys: store with care)."""
        document = {
            "format": _FORMAT,
            "version": _VERSION,
            "active": self.active.as_dict(private=True),
            "retired": [
                {"jwk": r.key.as_dict(private=True), "published_until": r.published_until}
                for r in self.retired
            ],
        }
        return json.dumps(document, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SigningKeySet:
        """Parse :meth:`to_json` output.

        :raise ValueError: wrong format or version, a key that is not a private P-256 key, a ``kid`` that
            is not the thumbprint, or a duplicate ``kid``.
        """
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ValueError("not a dho-share signing key set")
        if document.get("version") != _VERSION:
            raise ValueError("unsupported signing key set version")
        retired_raw = document.get("retired", [])
        if not isinstance(retired_raw, list):
            raise ValueError("'retired' must be a list")
        retired = []
        for entry in retired_raw:
            until = entry.get("published_until") if isinstance(entry, dict) else None
            if not isinstance(until, int) or isinstance(until, bool):
                raise ValueError("a retired key needs an integer 'published_until'")
            retired.append(RetiredKey(_import_private(entry.get("jwk")), until))
        return cls(_import_private(document.get("active")), tuple(retired))


def _import_private(data: Any) -> ECKey:
    if not isinstance(data, dict) or data.get("kty") != "EC" or "d" not in data:
        raise ValueError("signing keys must be private EC JWKs")
    return ECKey.import_key(data)


def save_keyset(keyset: SigningKeySet, path: Path) -> None:
    """Write the private key set to ``path`` atomically, readable by the owner only (0600).

    The file is written beside ``path`` and renamed over it, so a crash never leaves half a key set.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(keyset.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_keyset(path: Path) -> SigningKeySet:
    """Read a key set written by :func:`save_keyset`.

    :raise FileNotFoundError: no file at ``path`` (the caller decides whether to generate one).
    :raise ValueError: the file is not a valid key set.
    """
    return SigningKeySet.from_json(Path(path).read_text(encoding="utf-8"))
