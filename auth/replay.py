"""Single-use state for the security checks: the replay cache and DPoP server nonces.

``ReplayCache`` is the small interface the verifiers need; :class:`RedisReplayCache` is the shared,
multi-worker implementation and :class:`InMemoryReplayCache` the single-process one. The same contract
tests run against both (``tests/auth/test_replay.py``).

Failure policy: **closed**. If the replay cache cannot answer, :class:`~auth.errors.StateUnavailable`
is raised and the request is refused with 503; a proof or assertion is never accepted unchecked (REL-01).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import re
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis
import redis.exceptions

from auth.errors import StateUnavailable

__all__ = [
    "InMemoryReplayCache",
    "NoncePolicy",
    "NonceSource",
    "RedisReplayCache",
    "ReplayCache",
]

_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_TTL_SECONDS = 24 * 3600


class ReplayCache(Protocol):
    """Remembers one-time values (``jti``) for a while.

    ``claim`` is **atomic**: of any number of concurrent calls with the same ``(namespace, key)`` inside
    ``ttl_seconds``, exactly one returns ``True`` (DPOP-12, CLA-05). It raises
    :class:`~auth.errors.StateUnavailable` when it cannot decide.
    """

    def claim(
        self, namespace: str, key: str, ttl_seconds: int, *, acceptable_from: float | None = None
    ) -> bool:
        """Record ``key`` in ``namespace`` for ``ttl_seconds``; ``True`` if it was not already there.

        ``acceptable_from`` is the earliest time the value could have been accepted; a store that can
        lose its state (:class:`auth.replaystate.EpochReplayCache`) refuses values that could have
        been accepted before its state began, with :class:`~auth.errors.StateUnavailable`.
        """
        ...


def _storage_key(namespace: str, key: str, ttl_seconds: int) -> str:
    """Validate the arguments and return the stored name: ``<namespace>:<sha256(key)>``.

    Hashing bounds the stored size whatever the caller passes (DPOP-14: no growth from a 10 KB ``jti``)
    and keeps raw identifiers out of the store.
    """
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError("namespace must be 1-64 characters of [a-z0-9._-]")
    if not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool):
        raise TypeError("ttl_seconds must be an int")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be within 1..{MAX_TTL_SECONDS}")
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{namespace}:{digest}"


class RedisReplayCache:
    """:class:`ReplayCache` on Redis: one ``SET <key> 1 NX EX <ttl>`` per claim.

    The single command is the whole algorithm: Redis executes it atomically, so there is no read-then-write
    race (unlike a ``GET`` followed by ``SET``), and the key expires on its own.

    **Fails closed**: any Redis error (connection refused, timeout, ``OOM`` under ``noeviction``,
    ``READONLY`` after a failover) raises :class:`~auth.errors.StateUnavailable` (503). The Redis used for
    replay state must run with ``maxmemory-policy noeviction`` so that a remembered ``jti`` is never
    evicted early (REL-02).

    :param client: a ``redis.Redis`` client; give it short socket timeouts.
    :param prefix: prepended to every key, so several deployments or tests can share one database.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "dho:replay:") -> None:
        self._client = client
        self._prefix = prefix

    def claim(
        self, namespace: str, key: str, ttl_seconds: int, *, acceptable_from: float | None = None
    ) -> bool:
        """One ``SET NX EX``; ``acceptable_from`` is ignored (no epoch: use
        :class:`auth.replaystate.EpochReplayCache` where Redis may lose state)."""
        name = self._prefix + _storage_key(namespace, key, ttl_seconds)
        try:
            stored = self._client.set(name, b"1", nx=True, ex=ttl_seconds)
        except redis.exceptions.RedisError as err:
            raise StateUnavailable("replay cache unavailable") from err
        return stored is True


class InMemoryReplayCache:
    """:class:`ReplayCache` in this process: a lock, a dict of expiry times and a heap to expire them.

    For tests and single-process development only: two workers each with their own instance would both
    accept the same proof. Never fails.

    :param clock: monotonic seconds; injectable for tests.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def claim(
        self, namespace: str, key: str, ttl_seconds: int, *, acceptable_from: float | None = None
    ) -> bool:
        """``acceptable_from`` is ignored: this cache lives and dies with its only process."""
        name = _storage_key(namespace, key, ttl_seconds)
        with self._lock:
            now = self._clock()
            self._expire(now)
            if name in self._expiry:
                return False
            expires = now + ttl_seconds
            self._expiry[name] = expires
            heapq.heappush(self._heap, (expires, name))
            return True

    def _expire(self, now: float) -> None:
        # Entries are inserted once and never refreshed, so the heap top is always the oldest live entry.
        while self._heap and self._heap[0][0] <= now:
            _, name = heapq.heappop(self._heap)
            self._expiry.pop(name, None)

    def live_entries(self) -> int:
        """How many claims are remembered now (for tests and metrics).

        Deliberately not ``__len__``: an empty cache must not be falsy in ``cache or default``.
        """
        with self._lock:
            self._expire(self._clock())
            return len(self._expiry)


class NoncePolicy(Protocol):
    """What a DPoP verifier needs from a nonce provider (RFC 9449 §8, §9)."""

    def issue(self, now: float) -> str:
        """A nonce to send in ``DPoP-Nonce``."""
        ...

    def check(self, nonce: str, now: float) -> bool:
        """Whether ``nonce`` is one this provider issued recently."""
        ...


_NONCE = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{32})")


class NonceSource:
    """Stateless DPoP server nonces (RFC 9449 §8 at the resource server, §9 at the token endpoint).

    A nonce is ``<window>.<mac>`` where ``window = floor(now / window_seconds)`` and ``mac`` is
    ``HMAC-SHA-256(secret, "dho-dpop-nonce" | audience | window)`` truncated to 192 bits. Every worker
    holding the same secret issues and accepts the same nonces without shared state. A nonce is accepted
    in its own window and the next one, so it lives between ``window_seconds`` and twice that.

    ``audience`` separates the token endpoint from the resource server: a nonce from one is refused by the
    other (DPOP-16), because the audience is inside the MAC.

    :param secret: at least 32 random bytes, shared by all workers; keep it out of the repository.
    :param audience: e.g. ``"token-endpoint"`` or ``"resource"``.
    :param window_seconds: rotation period; default 300 s (a nonce lives 5-10 minutes).
    :param generation: the replay state's current epoch
        (:meth:`auth.replaystate.RedisState.current_generation`); part of the MAC,
        so a Redis restart or failover rotates every nonce (issue 13 item 1).
    """

    def __init__(
        self,
        secret: bytes,
        *,
        audience: str,
        window_seconds: int = 300,
        generation: Callable[[], str] = str,
    ) -> None:
        if len(secret) < 32:
            raise ValueError("the nonce secret must be at least 32 bytes")
        if not audience:
            raise ValueError("a nonce audience is required")
        if window_seconds < 10:
            raise ValueError("window_seconds must be at least 10")
        # Derive a per-audience key so the secret itself is never used directly as a MAC key twice.
        self._key = hmac.new(
            secret, b"dho-dpop-nonce\x00" + audience.encode("utf-8"), hashlib.sha256
        ).digest()
        self._window = window_seconds
        self._generation = generation

    def _mac(self, window: int) -> str:
        # The replay-state generation (auth.replaystate) rotates every nonce after a Redis reset.
        generation = self._generation()
        message = f"{window}\x00{generation}".encode() if generation else str(window).encode("ascii")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:24]
        return base64.urlsafe_b64encode(digest).decode("ascii")

    def issue(self, now: float) -> str:
        window = int(now // self._window)
        return f"{window}.{self._mac(window)}"

    def check(self, nonce: str, now: float) -> bool:
        match = _NONCE.fullmatch(nonce) if isinstance(nonce, str) else None
        if match is None:
            return False
        window = int(match.group(1))
        current = int(now // self._window)
        if window not in (current, current - 1):
            return False
        return hmac.compare_digest(match.group(2), self._mac(window))
