"""Single-use state for the security checks: the replay cache and DPoP server nonces.

``ReplayCache`` is the small interface the verifiers need; :class:`RedisReplayCache` is the shared,
multi-worker implementation and :class:`InMemoryReplayCache` the single-process one. The same contract
tests run against both (``tests/auth/test_replay.py``).

**Several values at once.** The token endpoint claims two values per request, the client assertion's
``jti`` and then the DPoP proof's. The verifiers record their claim in :class:`DeferredClaims` instead
of making it, and :func:`claim_all` then makes them in one step (one Redis round trip, issue 12) with
the meaning of claiming them one after the other: **in order, up to the first value claimed before**.
That one and the ones after it are not recorded, the ones before it are. So a replayed assertion does
not burn the fresh proof sent with it, and a fresh assertion sent with a replayed proof is spent, as
when the two claims were two round trips.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis
import redis.exceptions

from auth.errors import StateUnavailable

__all__ = [
    "Claim",
    "DeferredClaims",
    "InMemoryReplayCache",
    "NoncePolicy",
    "NonceSource",
    "RedisReplayCache",
    "ReplayCache",
    "claim_all",
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


@dataclass(frozen=True, slots=True)
class Claim:
    """A one-time value to claim: ``key`` in ``namespace`` for ``ttl`` seconds.

    :param acceptable_from: the earliest time the value could have been accepted (see
        :meth:`ReplayCache.claim`); ``None`` skips the epoch rule (only for values that cannot outlive
        a reset).
    """

    namespace: str
    key: str
    ttl: int
    acceptable_from: float | None


def check_claim(namespace: str, ttl_seconds: int) -> None:
    """``ValueError``/``TypeError`` for a namespace or ``ttl_seconds`` no cache would store."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError("namespace must be 1-64 characters of [a-z0-9._-]")
    if not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool):
        raise TypeError("ttl_seconds must be an int")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be within 1..{MAX_TTL_SECONDS}")


def _storage_key(namespace: str, key: str, ttl_seconds: int) -> str:
    """Validate the arguments and return the stored name: ``<namespace>:<sha256(key)>``.

    Hashing bounds the stored size whatever the caller passes (DPOP-14: no growth from a 10 KB ``jti``)
    and keeps raw identifiers out of the store.
    """
    check_claim(namespace, ttl_seconds)
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{namespace}:{digest}"


class DeferredClaims:
    """A :class:`ReplayCache` that records the claims a verifier asks for and answers ``True``, so the
    caller can make them later, together with others, through :func:`claim_all`.

    The arguments are checked as a real cache checks them, so a bad namespace or TTL fails where it
    is made. A verifier given this cache has **not** claimed anything: the caller must pass
    :attr:`claims` to :func:`claim_all` before it acts on the verified value.
    """

    def __init__(self) -> None:
        self.claims: list[Claim] = []

    def claim(
        self, namespace: str, key: str, ttl_seconds: int, *, acceptable_from: float | None = None
    ) -> bool:
        check_claim(namespace, ttl_seconds)
        self.claims.append(Claim(namespace, key, ttl_seconds, acceptable_from))
        return True


def claim_all(replay: ReplayCache, claims: Sequence[Claim]) -> int | None:
    """Claim ``claims`` in ``replay`` in order, as consecutive :meth:`ReplayCache.claim` calls would,
    stopping at the first value claimed before.

    :return: ``None`` when every value was new (all are recorded now); else the index of the first one
        claimed before: it and the ones after it are not recorded, the ones before it are. The caches
        of this package (:class:`InMemoryReplayCache`, :class:`RedisReplayCache`,
        :class:`auth.replaystate.EpochReplayCache`) answer in one step (one Redis round trip); any
        other :class:`ReplayCache` is asked one claim at a time.
    :raise StateUnavailable: the cache cannot answer (fail closed); claims before the failure may be
        recorded.
    """
    if not claims:
        return None
    batch = getattr(replay, "claim_all", None)
    if batch is not None:
        found: int | None = batch(claims)
        return found
    for index, c in enumerate(claims):
        if not replay.claim(c.namespace, c.key, c.ttl, acceptable_from=c.acceptable_from):
            return index
    return None


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
        self._claim_all = client.register_script(_CLAIM_ALL)

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

    def claim_all(self, claims: Sequence[Claim]) -> int | None:
        """:func:`claim_all` in one script (one ``SET NX EX`` per claim, in order)."""
        names = [self._prefix + _storage_key(c.namespace, c.key, c.ttl) for c in claims]
        try:
            found = int(self._claim_all(keys=names, args=[c.ttl for c in claims]))
        except redis.exceptions.RedisError as err:
            raise StateUnavailable("replay cache unavailable") from err
        return None if found == 0 else found - 1


# KEYS: the claims; ARGV: their ttls. 0 when all were new (all set now), else the 1-based index of the
# first key already there (the keys before it are set, it and the ones after are not touched).
_CLAIM_ALL = """
for i = 1, #KEYS do
  if not redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[i]) then return i end
end
return 0
"""


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

    def claim_all(self, claims: Sequence[Claim]) -> int | None:
        """:func:`claim_all` under one hold of the cache's lock."""
        names = [_storage_key(c.namespace, c.key, c.ttl) for c in claims]
        with self._lock:
            now = self._clock()
            self._expire(now)
            for index, (name, c) in enumerate(zip(names, claims, strict=True)):
                if name in self._expiry:
                    return index
                self._expiry[name] = now + c.ttl
                heapq.heappush(self._heap, (now + c.ttl, name))
        return None

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
