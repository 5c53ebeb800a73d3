"""The token service's signing keys on disk: created once, shared by every worker, reloaded on rotation."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from auth.keys import SigningKeySet, load_keyset, save_keyset


def load_or_create(path: Path) -> SigningKeySet:
    """The key set at ``path``; generated when there is none.

    Several workers may start at once: the first one to link its file into place wins (``os.link``
    fails if the name exists), and everyone then reads that one file, so all sign with the same key.
    """
    try:
        return load_keyset(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.new")
    save_keyset(SigningKeySet.generate(), staged)
    try:
        os.link(staged, path)
    except FileExistsError:
        pass
    finally:
        staged.unlink(missing_ok=True)
    return load_keyset(path)


class KeysetFile:
    """The current key set, re-read when the file changes (``dho-share keys rotate`` rewrites it)."""

    def __init__(self, path: Path, check_every: float = 1.0):
        self.path = path
        self.check_every = check_every
        self._keyset = load_or_create(path)
        self._mtime = path.stat().st_mtime_ns
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self) -> SigningKeySet:
        if time.monotonic() - self._checked < self.check_every:
            return self._keyset
        with self._lock:
            self._checked = time.monotonic()
            mtime = self.path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._keyset, self._mtime = load_keyset(self.path), mtime
        return self._keyset

    def derived_secret(self, purpose: str) -> bytes:
        """A secret every worker derives alike from the key file (e.g. for DPoP nonces); it changes with
        every rotation."""
        return derive_secret(self.path, purpose)


def derive_secret(path: Path, purpose: str) -> bytes:
    """``KeysetFile(path).derived_secret(purpose)`` without making a key file."""
    return hashlib.sha256(purpose.encode() + b"\x00" + path.read_bytes()).digest()
