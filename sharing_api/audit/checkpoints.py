"""Signed checkpoints of a tenant's audit log: C2SP ``tlog-checkpoint`` bodies in C2SP ``signed-note`` form.

A checkpoint commits to the first ``size`` entries of one tenant's log (domain.md "Audit"; security-tests
AUD-08). Its body (C2SP tlog-checkpoint) is three lines, each ending in a newline::

    <origin>            e.g. dho-share/audit/921234562 (names the log and so the tenant)
    <size>              decimal, no leading zeros
    <root>              standard base64 of the 32-byte RFC 9162 root hash

followed (C2SP signed-note) by an empty line and one signature line per signer::

    — <key name> <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>

The signature covers the body bytes exactly; the key id is the first four bytes of
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)`` (0x01: the Ed25519 algorithm byte).
``NoteVerifier.vkey`` gives the standard verifier-key string ``<name>+<key id hex>+<base64(0x01||key)>``.

The private key lives in a PEM file the operator names (``DHO_AUDIT_KEY_PATH``), never in the repository;
auditors pin the public key (``public_key_pem``) and verify exports offline with it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sharing_api.audit.merkle import HASH_SIZE
from sharing_api.create_once import create_once

__all__ = [
    "DEFAULT_KEY_NAME",
    "AuditSigner",
    "Checkpoint",
    "CheckpointBody",
    "CheckpointError",
    "NoteVerifier",
    "load_public_key",
]

DEFAULT_KEY_NAME = "dho-share-audit"
_ALG_ED25519 = b"\x01"
_SIG_PREFIX = "\u2014 "  # em dash and a space
_ORIGIN = re.compile(r"[\x21-\x7e][\x20-\x7e]*")
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")
_KEY_NAME = re.compile(r"[\x21-\x2a\x2c-\x7e]+")  # printable ASCII, no space, no '+'
MAX_NOTE = 8192


class CheckpointError(ValueError):
    """A checkpoint that is malformed, not signed by the pinned key, or not of the expected log."""


@dataclass(frozen=True, slots=True)
class CheckpointBody:
    """What a checkpoint says: the log (``origin``), its ``size``, and the ``root`` of those entries."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not _ORIGIN.fullmatch(self.origin):
            raise CheckpointError("the origin must be one line of printable ASCII")
        if self.size < 0 or len(self.root) != HASH_SIZE:
            raise CheckpointError("a checkpoint needs a size >= 0 and a 32-byte root")

    def text(self) -> str:
        """The checkpoint body, the bytes that are signed (as UTF-8)."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"

    @classmethod
    def parse(cls, text: str) -> CheckpointBody:
        """Read a body (extension lines after the root are ignored); ``CheckpointError`` if it is bad."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise CheckpointError(
                "a checkpoint body has an origin, a size and a root, each ending in a newline"
            )
        origin, size, root = lines[0], lines[1], lines[2]
        if not _SIZE.fullmatch(size):
            raise CheckpointError(f"bad tree size line {size!r}")
        try:
            root_bytes = base64.b64decode(root, validate=True)
        except binascii.Error as exc:
            raise CheckpointError("the root is not base64") from exc
        return cls(origin, int(size), root_bytes)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A stored checkpoint: the tenant, what it commits to, when it was made (µs since the epoch, UTC),
    and the signed note itself."""

    tenant: str
    size: int
    root: bytes
    created: int
    note: str


def _key_id(name: str, public_raw: bytes) -> bytes:
    return sha256(name.encode("ascii") + b"\n" + _ALG_ED25519 + public_raw).digest()[:4]


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class NoteVerifier:
    """Checks signed checkpoints against one pinned Ed25519 public key."""

    def __init__(self, public_key: Ed25519PublicKey, name: str = DEFAULT_KEY_NAME):
        if not _KEY_NAME.fullmatch(name):
            raise ValueError("a key name is printable ASCII without spaces or '+'")
        self.public_key = public_key
        self.name = name
        self._raw = _raw(public_key)
        self.key_id = _key_id(name, self._raw)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """A verifier from a C2SP verifier key ``<name>+<key id hex>+<base64(0x01 || key)>``."""
        try:
            name, key_id, encoded = vkey.strip().split("+", 2)
            blob = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ValueError("not a verifier key (name+keyid+base64)") from exc
        if len(blob) != 33 or blob[:1] != _ALG_ED25519:
            raise ValueError("only Ed25519 verifier keys are supported")
        verifier = cls(Ed25519PublicKey.from_public_bytes(blob[1:]), name)
        if verifier.key_id.hex() != key_id.lower():
            raise ValueError("the verifier key's id does not match its name and key")
        return verifier

    def vkey(self) -> str:
        """This verifier as a C2SP verifier-key string."""
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(_ALG_ED25519 + self._raw).decode()}"

    def open(self, note: str, *, origin: str | None = None) -> CheckpointBody:
        """The body of ``note`` if one of its signatures is this key's and verifies; else ``CheckpointError``.

        Any key name in the signature line is accepted as long as the key id computed from that name
        and the pinned key matches and the signature verifies, so auditors need to pin only the key.
        With ``origin``, the body must name that log.
        """
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise CheckpointError("a checkpoint note is a string of bounded length")
        body, sep, signatures = note.partition("\n\n")
        if not sep or not signatures.endswith("\n"):
            raise CheckpointError("a signed note is a body, an empty line and signature lines")
        text = body + "\n"
        parsed = CheckpointBody.parse(text)
        if origin is not None and parsed.origin != origin:
            raise CheckpointError(f"the checkpoint is of log {parsed.origin!r}, not {origin!r}")
        for line in signatures[:-1].split("\n"):
            if not line.startswith(_SIG_PREFIX):
                raise CheckpointError("a signature line starts with an em dash and a space")
            try:
                name, encoded = line[len(_SIG_PREFIX) :].split(" ")
                blob = base64.b64decode(encoded, validate=True)
            except (ValueError, binascii.Error) as exc:
                raise CheckpointError("a signature line is '— <name> <base64>'") from exc
            if not _KEY_NAME.fullmatch(name) or len(blob) != 4 + 64:
                continue  # another algorithm or a malformed name: not ours
            if blob[:4] != _key_id(name, self._raw):
                continue  # another signer (e.g. a witness)
            try:
                self.public_key.verify(blob[4:], text.encode("utf-8"))
            except InvalidSignature as exc:
                raise CheckpointError("the checkpoint signature does not verify with the pinned key") from exc
            return parsed
        raise CheckpointError("the checkpoint carries no signature by the pinned key")


class AuditSigner:
    """The Ed25519 key that signs a deployment's checkpoints. Keep its file private (mode 0600)."""

    def __init__(self, private_key: Ed25519PrivateKey, name: str = DEFAULT_KEY_NAME):
        self._key = private_key
        self.verifier = NoteVerifier(private_key.public_key(), name)

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.verifier.public_key

    def __repr__(self) -> str:
        return f"AuditSigner(name={self.name!r}, key_id={self.verifier.key_id.hex()})"

    @classmethod
    def generate(cls, name: str = DEFAULT_KEY_NAME) -> AuditSigner:
        return cls(Ed25519PrivateKey.generate(), name)

    @classmethod
    def load(cls, path: Path, name: str = DEFAULT_KEY_NAME) -> AuditSigner:
        """The key in the PKCS#8 PEM file at ``path``; ``FileNotFoundError`` if there is none,
        ``ValueError`` if it is not an unencrypted Ed25519 private key."""
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key, name)

    @classmethod
    def load_or_create(cls, path: Path, name: str = DEFAULT_KEY_NAME) -> AuditSigner:
        """The key at ``path``, generated (mode 0600) when there is none.

        Several processes may start at once: the first file linked into place wins (``create_once``),
        and everyone then reads that one file.
        """
        path = Path(path)
        try:
            return cls.load(path, name)
        except FileNotFoundError:
            pass
        create_once(path, cls.generate(name).save)
        return cls.load(path, name)

    def save(self, path: Path) -> None:
        """Write the private key as PKCS#8 PEM to a new file (mode 0600); ``FileExistsError`` if it exists."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)

    def public_key_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM, for auditors to pin."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, body: CheckpointBody) -> str:
        """The signed note of ``body``."""
        text = body.text()
        signature = self._key.sign(text.encode("utf-8"))
        blob = base64.b64encode(self.verifier.key_id + signature).decode("ascii")
        return f"{text}\n{_SIG_PREFIX}{self.name} {blob}\n"


def load_public_key(data: bytes | str) -> NoteVerifier:
    """A verifier from a pinned public key: SubjectPublicKeyInfo PEM, or a C2SP verifier-key string."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    if "-----BEGIN" not in text:
        return NoteVerifier.from_vkey(text)
    key = serialization.load_pem_public_key(text.encode("ascii"))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the pinned key must be an Ed25519 public key")
    return NoteVerifier(key)
