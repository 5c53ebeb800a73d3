"""Revoked access tokens, remembered by ``jti`` until the token could no longer be accepted anyway.

This is storage only. The RFC 7009 semantics (who may revoke which token, what the endpoint answers)
belong to the caller (:meth:`auth.server.TokenService.revoke`); the resource server asks
:meth:`RevocationList.is_revoked` after a token's signature and claims have been verified (AUTH-13).

``RevocationList`` is the small interface; :class:`RedisRevocationList` is the shared, multi-worker
implementation and :class:`InMemoryRevocationList` the single-process one. The same contract tests run
against both (``tests/auth/test_revocation.py``).

**Bounded size.** An entry lives until the token's ``exp`` plus a grace period covering the verifier's
clock leeway (:data:`DEFAULT_GRACE_SECONDS`), then disappears on its own: the list never holds more
than the tokens that are still live, and revoking an already expired token stores nothing. ``jti``
values are stored as SHA-256 digests, so an entry has a fixed size whatever the token carried.

**Staleness.** With Redis every worker sees a revocation on its next request: the "configured
staleness" of AUTH-13 is zero. (With the in-memory list only the revoking process knows.)

Failure policy: **closed**. If the list cannot answer, :class:`~auth.errors.StateUnavailable` is raised
and the request is refused with 503; a possibly revoked token is never accepted unchecked (REL-01).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis
import redis.exceptions

from auth.errors import StateUnavailable

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "MAX_TTL_SECONDS",
    "InMemoryRevocationList",
    "RedisRevocationList",
    "RevocationList",
]

#: How long an entry outlives the token's ``exp``: the largest clock leeway a
#: :class:`~auth.tokens.TokenPolicy` allows (300 s), so a token accepted "just after" ``exp`` by a
#: lenient verifier is still known to be revoked.
DEFAULT_GRACE_SECONDS = 300
#: The longest an entry may live. Our tokens live at most an hour; a longer request is a programming
#: error and is refused rather than silently shortened (which would un-revoke the token early).
MAX_TTL_SECONDS = 7 * 24 * 3600


class RevocationList(Protocol):
    """The ``jti`` of revoked access tokens.

    Both methods raise :class:`~auth.errors.StateUnavailable` when the store cannot answer (fail closed).
    """

    def revoke(self, jti: str, expires_at: float, now: float) -> None:
        """Remember ``jti`` as revoked until ``expires_at`` (the token's ``exp``, epoch seconds) plus the
        grace period. ``now`` is the caller's clock, used only to turn ``expires_at`` into a duration.
        Revoking twice is harmless (the later call sets the deadline again; a token's ``exp`` never
        changes); revoking a token already past ``exp`` + grace stores nothing.

        :raise ValueError: empty ``jti``, non-finite times, or a lifetime over :data:`MAX_TTL_SECONDS`.
        """
        ...

    def is_revoked(self, jti: str) -> bool:
        """Whether ``jti`` was revoked and its entry has not yet expired."""
        ...


def _digest(jti: str) -> str:
    """The stored name of ``jti``: its SHA-256, so any length costs the same and no raw id is stored."""
    if not isinstance(jti, str) or not jti:
        raise ValueError("jti must be a non-empty string")
    return hashlib.sha256(jti.encode("utf-8", "surrogatepass")).hexdigest()


def _ttl(expires_at: float, now: float, grace: int) -> int:
    """Whole seconds the entry must live (rounded up), or 0 if the token is already past acceptance."""
    if not (math.isfinite(expires_at) and math.isfinite(now)):
        raise ValueError("expires_at and now must be finite numbers")
    remaining = expires_at + grace - now
    if remaining <= 0:
        return 0
    ttl = math.ceil(remaining)
    if ttl > MAX_TTL_SECONDS:
        raise ValueError(f"a revocation may last at most {MAX_TTL_SECONDS} seconds")
    return ttl


def _check_grace(grace_seconds: int) -> int:
    if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, int) or grace_seconds < 0:
        raise ValueError("grace_seconds must be a non-negative int")
    return grace_seconds


class RedisRevocationList:
    """:class:`RevocationList` on Redis: one key per revoked ``jti``, expiring with the token.

    ``revoke`` is one ``SET <prefix><sha256(jti)> 1 EX <ttl>``; ``is_revoked`` one ``EXISTS``. Redis
    expires the key, so there is no sweeping and no growth beyond live tokens.

    **Fails closed**: any Redis error (connection refused, timeout, ``OOM`` under ``noeviction``,
    ``READONLY`` after a failover) raises :class:`~auth.errors.StateUnavailable` (503). As for the replay
    cache, this Redis must run with ``maxmemory-policy noeviction``: an evicted entry would silently
    un-revoke a token (REL-02).

    :param client: a ``redis.Redis`` client; give it short socket timeouts.
    :param prefix: prepended to every key, so several deployments or tests can share one database.
    :param grace_seconds: how long an entry outlives ``exp`` (:data:`DEFAULT_GRACE_SECONDS`).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "dho:revoked:",
        grace_seconds: int = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._grace = _check_grace(grace_seconds)

    def revoke(self, jti: str, expires_at: float, now: float) -> None:
        name = self._prefix + _digest(jti)
        ttl = _ttl(expires_at, now, self._grace)
        if ttl == 0:
            return
        try:
            self._client.set(name, b"1", ex=ttl)
        except redis.exceptions.RedisError as err:
            raise StateUnavailable("revocation list unavailable") from err

    def is_revoked(self, jti: str) -> bool:
        name = self._prefix + _digest(jti)
        try:
            found = self._client.exists(name)
        except redis.exceptions.RedisError as err:
            raise StateUnavailable("revocation list unavailable") from err
        return bool(found)


class InMemoryRevocationList:
    """:class:`RevocationList` in this process: a lock, a dict of deadlines and a heap to expire them.

    For tests and single-process development only: other workers never learn of a revocation. Never
    fails. Deadlines are kept on ``clock`` (monotonic by default): ``revoke`` turns ``expires_at - now``
    into a duration, exactly as Redis does with ``EX``.

    :param clock: monotonic seconds; injectable for tests.
    :param grace_seconds: how long an entry outlives ``exp`` (:data:`DEFAULT_GRACE_SECONDS`).
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, grace_seconds: int = DEFAULT_GRACE_SECONDS
    ) -> None:
        self._clock = clock
        self._grace = _check_grace(grace_seconds)
        self._lock = threading.Lock()
        self._deadline: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def revoke(self, jti: str, expires_at: float, now: float) -> None:
        name = _digest(jti)
        ttl = _ttl(expires_at, now, self._grace)
        if ttl == 0:
            return
        with self._lock:
            current = self._clock()
            self._expire(current)
            deadline = current + ttl
            self._deadline[name] = deadline
            heapq.heappush(self._heap, (deadline, name))

    def is_revoked(self, jti: str) -> bool:
        name = _digest(jti)
        with self._lock:
            self._expire(self._clock())
            return name in self._deadline

    def _expire(self, now: float) -> None:
        # A jti revoked twice has two heap entries; only the one matching its current deadline removes it.
        while self._heap and self._heap[0][0] <= now:
            deadline, name = heapq.heappop(self._heap)
            if self._deadline.get(name) == deadline:
                del self._deadline[name]

    def live_entries(self) -> int:
        """How many revocations are remembered now (for tests and metrics).

        Deliberately not ``__len__``: an empty list must not be falsy in ``revocations or default``.
        """
        with self._lock:
            self._expire(self._clock())
            return len(self._deadline)
