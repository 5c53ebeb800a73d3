"""The keyed hash of a health worker's national identity number that the audit log records instead of
the number, so that log-control rule R8 (self-access: the health worker looked up themself,
console.md §5.2) can run without the log ever holding the number (docs/console-rules.md).

``PidHasher(secret)(pid)`` is ``<key tag>.<HMAC-SHA256(secret, pid) in hex>``. The secret is the
deployment's own, in its own file (``DHO_AUDIT_SELF_ACCESS_KEY_PATH``, made 0600 on first start by
``load_or_create_secret``, never rotated with the token service's signing keys), so anyone who reads the
log without it cannot confirm a guessed number (the 11-digit fnr space is small enough to try
exhaustively against a plain hash), and rotating the signing keys changes nothing for R8. The key tag
(8 hex digits of a hash of the secret, not of any number) is the secret's key id in every value: if the
secret ever changes, R8 tells the events it cannot compare ("secret changed") from those that do not
match, instead of passing them silently.

The hasher never keeps or shows a number: its ``repr`` is masked, and it is the only place the number
and the secret meet.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from sharing_api.create_once import create_once

__all__ = ["PID_HASH_SYSTEM", "PidHasher", "key_tag_of", "load_or_create_secret"]

PID_HASH_SYSTEM = "urn:dho-share:audit:practitioner-pid-hmac"
"""``Identifier.system`` of the keyed hash on the event's contained ``Practitioner``
(docs/audit-profile.md)."""


def key_tag_of(value: str) -> str:
    """The key tag part of a recorded value (``""`` when it has none)."""
    tag, _, digest = value.partition(".")
    return tag if digest else ""


class PidHasher:
    """Keyed hash of national identity numbers (module docstring)."""

    __slots__ = ("_secret", "key_tag")

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the self-access secret must be at least 16 bytes")
        self._secret = secret
        self.key_tag = hashlib.sha256(b"dho-share audit-self-access key tag\x00" + secret).hexdigest()[:8]

    def __call__(self, pid: str) -> str:
        digest = hmac.new(self._secret, pid.strip().encode(), hashlib.sha256).hexdigest()
        return f"{self.key_tag}.{digest}"

    def matches(self, recorded: str, pid: str) -> bool:
        """Whether ``recorded`` (a value this class made) is the keyed hash of ``pid`` (constant time)."""
        return hmac.compare_digest(recorded, self(pid))

    def __repr__(self) -> str:
        return f"PidHasher(key_tag={self.key_tag!r}, secret=***)"


def load_or_create_secret(path: Path, adopt: Callable[[], bytes | None] | None = None) -> bytes:
    """The self-access secret in the file at ``path`` (hex), made when there is none: ``adopt()``'s
    secret when it gives one (a deployment whose events were hashed before the secret had a file of its
    own, docs/console-rules.md), else 32 random bytes. The file is written 0600 and never rewritten.

    Several processes may start at once: the first file linked into place wins (``create_once``), and
    everyone then reads that one file.
    """
    path = Path(path)
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    secret = (adopt() if adopt is not None else None) or secrets.token_bytes(32)

    def write(staged: Path) -> None:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secret.hex() + "\n")

    create_once(path, write)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    try:
        secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} does not hold a hex self-access secret") from exc
    if len(secret) < 16:
        raise ValueError(f"{path}: the self-access secret must be at least 16 bytes")
    return secret
