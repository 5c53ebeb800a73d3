"""Search sessions: server-side records behind opaque ids (``Patient/$match`` ids, AuditEvent search
cursors, and the Observation paging cursors too long to seal: ``cursors``).

A cursor is 128 random bits naming a record that holds the tenant, the requester and the query; it
cannot be forged or edited, only presented. Records live in Redis with a TTL so that every worker sees
them (``RedisSessions``), or in this process when no Redis is configured (``LocalSessions``).
Losing a session costs the client a re-run of the search, nothing more: this store fails *open* to a
clear 503 for the continuation only, never returns another requester's page.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import redis

from sharing_api.errors import ServiceUnavailable


class SearchSessions(Protocol):
    def put(self, record: dict[str, Any]) -> str: ...

    def put_many(self, records: list[dict[str, Any]]) -> list[str]:
        """``put`` each record (a page's ``self``, ``next`` and ``previous``), in one round trip."""
        ...

    def get(self, cursor: str) -> dict[str, Any] | None: ...


def new_cursor() -> str:
    return secrets.token_urlsafe(16)


class LocalSessions:
    """In-process sessions for a single-process server; bounded, oldest evicted first.

    Records keep coming for as long as the server runs (``Patient/$match`` ids, pages too long to
    seal): expired records are dropped as new ones come (all share one ``ttl``, so they expire in the
    order they were put and the oldest is always first), not only when ``max_entries`` is reached.

    :param clock: monotonic seconds; injectable for tests.
    """

    def __init__(self, ttl: int, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, record: dict[str, Any]) -> str:
        cursor = new_cursor()
        with self._lock:
            now = self._clock()
            while self._data and next(iter(self._data.values()))[0] < now:
                self._data.popitem(last=False)
            self._data[cursor] = (now + self.ttl, orjson.dumps(record))
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return cursor

    def held(self) -> int:
        """How many records are kept now (for tests and measurements)."""
        with self._lock:
            return len(self._data)

    def put_many(self, records: list[dict[str, Any]]) -> list[str]:
        return [self.put(record) for record in records]

    def get(self, cursor: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._data.get(cursor)
            if item is None:
                return None
            if item[0] < self._clock():
                del self._data[cursor]
                return None
        loaded: dict[str, Any] = orjson.loads(item[1])
        return loaded


class RedisSessions:
    """Sessions in Redis under ``dho:search:<cursor>`` with a TTL."""

    def __init__(self, client: redis.Redis, ttl: int, prefix: str = "dho:search:"):
        self.client = client
        self.ttl = ttl
        self.prefix = prefix

    def put(self, record: dict[str, Any]) -> str:
        cursor = new_cursor()
        try:
            self.client.set(self.prefix + cursor, orjson.dumps(record), ex=self.ttl)
        except redis.RedisError as exc:
            raise ServiceUnavailable("the search-session store is unavailable; retry shortly") from exc
        return cursor

    def put_many(self, records: list[dict[str, Any]]) -> list[str]:
        """One pipelined round trip for all the records (issue 12); any failure is the same 503."""
        if len(records) == 1:
            return [self.put(records[0])]
        cursors = [new_cursor() for _ in records]
        try:
            pipe = self.client.pipeline(transaction=False)
            for cursor, record in zip(cursors, records, strict=True):
                pipe.set(self.prefix + cursor, orjson.dumps(record), ex=self.ttl)
            stored = pipe.execute()
        except redis.RedisError as exc:
            raise ServiceUnavailable("the search-session store is unavailable; retry shortly") from exc
        if not all(stored):
            raise ServiceUnavailable("the search-session store did not keep a paging cursor; retry shortly")
        return cursors

    def get(self, cursor: str) -> dict[str, Any] | None:
        try:
            raw = self.client.get(self.prefix + cursor)
        except redis.RedisError as exc:
            raise ServiceUnavailable("the search-session store is unavailable; retry shortly") from exc
        if raw is None:
            return None
        loaded: dict[str, Any] = orjson.loads(raw)
        return loaded
