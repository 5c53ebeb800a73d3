"""The token service's signing keys on disk: created once, shared by every worker, reloaded on rotation."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from auth.keys import SigningKeySet, load_keyset, save_keyset
from sharing_api.create_once import create_once


def load_or_create(path: Path) -> SigningKeySet:
    """The key set at ``path``; generated when there is none.

    Several workers may start at once: the first to link its file into place wins (``create_once``),
    and everyone then reads that one file, so all sign with the same key.
    """
    try:
        return load_keyset(path)
    except FileNotFoundError:
        pass
    create_once(path, lambda staged: save_keyset(SigningKeySet.generate(), staged))
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
