"""The keyed hash of a health worker's national identity number that the audit log records instead of
the number, so that log-control rule R8 (self-access: the health worker looked up themself,
console.md §5.2) can run without the log ever holding the number (docs/console-rules.md).

``PidHasher(secret)(pid)`` is ``<key tag>.<HMAC-SHA256(secret, pid) in hex>``. The secret is derived
from the deployment's key file (``KeysetFile.derived_secret("audit-self-access")``), so anyone who
reads the log without the key cannot confirm a guessed number (the 11-digit fnr space is small enough
to try exhaustively against a plain hash). The key tag (8 hex digits of a hash of the secret, not of
any number) says under which key a value was made: after the key file changes, R8 can tell the events
it cannot compare from those that do not match, instead of passing them silently.

The hasher never keeps or shows a number: its ``repr`` is masked, and it is the only place the number
and the secret meet.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["PID_HASH_SYSTEM", "PidHasher", "key_tag_of"]

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
