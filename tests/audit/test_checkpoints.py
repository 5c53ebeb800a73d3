"""Signed checkpoints (C2SP tlog-checkpoint in signed-note form) and the signing key's file (AUD-08)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from sharing_api.audit.checkpoints import (
    AuditSigner,
    CheckpointBody,
    CheckpointError,
    NoteVerifier,
    load_public_key,
)
from sharing_api.audit.merkle import EMPTY_ROOT, leaf_hash

BODY = CheckpointBody("dho-share/audit/921234562", 12345, leaf_hash(b"x"))


def test_note_format_is_c2sp(signer: AuditSigner) -> None:
    note = signer.sign(BODY)
    body, sig = note.split("\n\n")
    assert body == f"dho-share/audit/921234562\n12345\n{base64.b64encode(BODY.root).decode()}"
    assert sig.startswith("\u2014 dho-share-audit ")
    assert sig.endswith("\n")
    blob = base64.b64decode(sig.split(" ")[2])
    assert len(blob) == 4 + 64
    assert blob[:4] == signer.verifier.key_id


def test_pinned_key_opens_its_notes(signer: AuditSigner) -> None:
    pinned = load_public_key(signer.public_key_pem())
    assert pinned.open(signer.sign(BODY)) == BODY
    assert pinned.open(signer.sign(BODY), origin=BODY.origin) == BODY
    vkey = NoteVerifier.from_vkey(signer.verifier.vkey())
    assert vkey.open(signer.sign(BODY)) == BODY
    assert load_public_key(signer.verifier.vkey()).key_id == signer.verifier.key_id


def test_another_key_or_an_altered_note_is_rejected(signer: AuditSigner) -> None:
    note = signer.sign(BODY)
    pinned = signer.verifier
    with pytest.raises(CheckpointError, match="no signature by the pinned key"):
        pinned.open(AuditSigner.generate().sign(BODY))
    other_root = note.replace(base64.b64encode(BODY.root).decode(), base64.b64encode(EMPTY_ROOT).decode())
    with pytest.raises(CheckpointError, match="does not verify"):
        pinned.open(other_root)
    with pytest.raises(CheckpointError, match="does not verify"):
        pinned.open(note.replace("12345", "12346"))
    with pytest.raises(CheckpointError, match="not 'dho-share/audit/923456783'"):
        pinned.open(note, origin="dho-share/audit/923456783")
    # a forger who renames the key cannot make the key id match
    with pytest.raises(CheckpointError):
        pinned.open(note.replace("dho-share-audit", "other-name"))
    for bad in ("", "x\n", note.replace("\n\n", "\n"), note[:-1], note + "junk", note.replace("\u2014", "-")):
        with pytest.raises(CheckpointError):
            pinned.open(bad)


def test_a_witness_signature_beside_ours_is_ignored(signer: AuditSigner) -> None:
    witness = AuditSigner.generate("witness.example")
    note = signer.sign(BODY)
    cosigned = note + witness.sign(BODY).split("\n\n")[1]
    assert signer.verifier.open(cosigned) == BODY
    assert witness.verifier.open(cosigned) == BODY


def test_key_file_is_made_once_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.pem"
    first = AuditSigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = AuditSigner.load_or_create(path)
    assert again.public_key_pem() == first.public_key_pem()
    assert b"PRIVATE" not in first.public_key_pem()
    assert "PRIVATE" not in repr(first)
    with pytest.raises(FileExistsError):
        first.save(path)


def test_a_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValueError, match="Ed25519"):
        AuditSigner.load(path)


def test_bodies_are_checked() -> None:
    with pytest.raises(CheckpointError):
        CheckpointBody("two\nlines", 1, EMPTY_ROOT)
    with pytest.raises(CheckpointError):
        CheckpointBody("x", 1, b"short")
    with pytest.raises(CheckpointError):
        CheckpointBody.parse("x\n01\nAAAA\n")
