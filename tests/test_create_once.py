"""Key and secret files are made once, even when several processes start at the same moment."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.pseudonym import load_or_create_secret
from sharing_api.create_once import create_once
from sharing_api.keyfiles import load_or_create


def _secret_in_child(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(load_or_create_secret(Path(path)).hex())


def test_processes_starting_together_all_read_the_one_secret_that_won(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "self-access.key"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_secret_in_child, args=(str(path), queue)) for _ in range(6)]
    for child in children:
        child.start()
    seen = {queue.get(timeout=30) for _ in children}
    for child in children:
        child.join(timeout=30)
    assert seen == {path.read_text(encoding="ascii").strip()}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staged file left behind


def test_an_existing_file_is_kept_and_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "token-keys.json"
    first = load_or_create(path)
    written = path.read_bytes()
    again = load_or_create(path)
    assert path.read_bytes() == written
    assert again.kid == first.kid

    signer_path = tmp_path / "audit-signing.pem"
    signer = AuditSigner.load_or_create(signer_path)
    assert AuditSigner.load_or_create(signer_path).public_key_pem() == signer.public_key_pem()


def test_a_stale_staged_file_of_a_crashed_process_does_not_block_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "self-access.key"
    stale = path.with_name(f".{path.name}.{os.getpid()}.new")
    stale.write_text("half a secret", encoding="ascii")  # a crash between staging and linking

    with pytest.raises(FileExistsError):
        load_or_create_secret(path)  # the staged name is taken; nothing is made ...
    assert not path.exists()
    assert not stale.exists()  # ... and the stale file is gone, so the next start succeeds
    assert len(load_or_create_secret(path)) == 32


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "k"

    def fail(staged: Path) -> None:
        staged.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        create_once(path, fail)
    assert list(tmp_path.iterdir()) == []
