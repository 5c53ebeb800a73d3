"""Auditor accounts of the console: one account belongs to one data controller (tenant) and sees only
that controller's log (issue 10, console.md §5 "per-tenant isolation").

Passwords are hashed with argon2id by ``argon2-cffi`` (its ``PasswordHasher`` defaults, RFC 9106's
second recommended parameter set); only the hash is stored. ``authenticate`` spends the same argon2 work
for an unknown or disabled user as for a wrong password, so timing does not tell which usernames exist.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, insert, select, update

from sharing_api.store.schema import console_auditors

__all__ = ["AccountError", "Auditor", "AuditorAccounts"]

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
MIN_PASSWORD = 12
_HASHER = PasswordHasher()
_DUMMY: str | None = None  # see _dummy


def _dummy() -> str:
    """The hash an unknown username's password is verified against, made by the first ``authenticate``
    of the process whatever username it names, not at import: every process that imports the console
    (each ``dho-share`` command, each server) spent an argon2 hash (64 MiB, ~0.1-0.2 s of CPU) on it."""
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = _HASHER.hash("not a password of anyone")
    return _DUMMY


class AccountError(ValueError):
    """A username, password or tenant that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Auditor:
    username: str
    tenant: str
    name: str
    enabled: bool


class AuditorAccounts:
    """The ``console_auditors`` table."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, username: str, tenant: str, name: str, password: str) -> Auditor:
        """Create an enabled account. ``AccountError`` for a bad username (lower-case letters, digits,
        ``.``, ``_``, ``-``; 2-64), a password shorter than 12 characters, or a username in use."""
        if not _USERNAME.fullmatch(username):
            raise AccountError("username: 2-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"password: at least {MIN_PASSWORD} characters")
        if not name.strip():
            raise AccountError("name: the auditor's name is required")
        with self.engine.begin() as conn:
            if conn.execute(
                select(console_auditors.c.username).where(console_auditors.c.username == username)
            ).first():
                raise AccountError(f"username: {username!r} is already in use")
            conn.execute(
                insert(console_auditors).values(
                    username=username,
                    tenant=tenant,
                    name=name.strip(),
                    password_hash=_HASHER.hash(password),
                    enabled=True,
                    created=time.time_ns() // 1000,
                )
            )
        return Auditor(username, tenant, name.strip(), True)

    def set_password(self, username: str, password: str) -> bool:
        """Replace an account's password (``AccountError`` when too short); False for no such account."""
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"password: at least {MIN_PASSWORD} characters")
        with self.engine.begin() as conn:
            result = conn.execute(
                update(console_auditors)
                .where(console_auditors.c.username == username)
                .values(password_hash=_HASHER.hash(password))
            )
        return result.rowcount == 1

    def list(self, tenant: str | None = None) -> list[Auditor]:
        stmt = select(console_auditors).order_by(console_auditors.c.tenant, console_auditors.c.username)
        if tenant is not None:
            stmt = stmt.where(console_auditors.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [Auditor(r.username, r.tenant, r.name, bool(r.enabled)) for r in conn.execute(stmt)]

    def set_enabled(self, username: str, enabled: bool) -> bool:
        """Enable or disable an account; False when there is no such account."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(console_auditors)
                .where(console_auditors.c.username == username)
                .values(enabled=enabled)
            )
        return result.rowcount == 1

    def get(self, username: str) -> Auditor | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(console_auditors).where(console_auditors.c.username == username)).first()
        return None if r is None else Auditor(r.username, r.tenant, r.name, bool(r.enabled))

    def authenticate(self, username: str, password: str) -> Auditor | None:
        """The enabled account whose password this is, or None (same argon2 work either way)."""
        dummy = _dummy()
        with self.engine.connect() as conn:
            r = conn.execute(select(console_auditors).where(console_auditors.c.username == username)).first()
        stored = r.password_hash if r is not None else dummy
        try:
            _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if r is None or not r.enabled:
            return None
        return Auditor(r.username, r.tenant, r.name, True)
