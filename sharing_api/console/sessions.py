"""Server-side sessions of the auditor console, in Redis when configured (every worker sees them).

The browser holds only a random session id (128 bits, cookie ``HttpOnly; SameSite=Strict``, ``Secure``
when the public URL is https). The record holds the auditor, their tenant, the CSRF token and the time
of the last request. A session ends ``timeout`` seconds after its last request (checked against
``clock``, which tests replace, so no test sleeps) or at logout, which deletes the record. Redis keeps
the record a little longer than the timeout as a backstop and removes it by itself.

Failure: an unreachable Redis raises (the console answers 503); it never falls back to another store.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis

__all__ = ["ConsoleSession", "ConsoleSessions"]

_PREFIX = "dho:console:session:"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id: str
    username: str
    tenant: str
    name: str
    csrf: str
    last_seen: float


class ConsoleSessions:
    """Console sessions in Redis (``client``) or, without Redis, in this process (one worker only)."""

    def __init__(self, client: redis.Redis | None, timeout: int, clock: Callable[[], float] = time.time):
        self.client = client
        self.timeout = timeout
        self.clock = clock
        self._local: dict[str, tuple[float, bytes]] = {}
        """Without Redis: session id -> (last request, record); timed-out ones go at the next login."""
        self._lock = threading.Lock()

    def _put(self, session: ConsoleSession) -> None:
        data = orjson.dumps(asdict(session))
        if self.client is not None:
            self.client.set(_PREFIX + session.id, data, ex=self.timeout + 60)
        else:
            with self._lock:
                self._local[session.id] = (session.last_seen, data)

    def _load(self, sid: str) -> dict[str, Any] | None:
        if self.client is not None:
            raw = self.client.get(_PREFIX + sid)
        else:
            with self._lock:
                entry = self._local.get(sid)
            raw = entry[1] if entry is not None else None
        if not isinstance(raw, bytes):
            return None
        loaded: dict[str, Any] = orjson.loads(raw)
        return loaded

    def start(self, username: str, tenant: str, name: str) -> ConsoleSession:
        session = ConsoleSession(
            id=secrets.token_urlsafe(16),
            username=username,
            tenant=tenant,
            name=name,
            csrf=secrets.token_urlsafe(24),
            last_seen=self.clock(),
        )
        if self.client is None:  # sessions left to time out are dropped here, not kept for ever
            with self._lock:
                live = {k: v for k, v in self._local.items() if session.last_seen - v[0] <= self.timeout}
                self._local = live
        self._put(session)
        return session

    def held(self) -> int:
        """Sessions kept in this process (without Redis), timed-out ones not yet dropped included."""
        with self._lock:
            return len(self._local)

    def resume(self, sid: str) -> ConsoleSession | None:
        """The live session ``sid`` with its idle timer restarted, or None (unknown, ended or timed out)."""
        if not sid or len(sid) > 64:
            return None
        record = self._load(sid)
        if record is None:
            return None
        now = self.clock()
        if now - float(record["last_seen"]) > self.timeout:
            self.end(sid)
            return None
        session = ConsoleSession(**{**record, "last_seen": now})
        self._put(session)
        return session

    def end(self, sid: str) -> None:
        if self.client is not None:
            self.client.delete(_PREFIX + sid)
        else:
            with self._lock:
                self._local.pop(sid, None)
