"""Per-client rate limits (RES-03): too many requests in a window -> 429 with ``Retry-After``.

``RateLimiter`` is the small interface the HTTP layer calls once per authenticated request with a key
naming the client (``"<issuer>|<client_id>"``); :class:`RedisRateLimiter` is the shared, multi-worker
implementation and :class:`InMemoryRateLimiter` the single-process one. The same contract tests run
against both (``tests/auth/test_ratelimit.py``).

**Algorithm: fixed window.** Time is cut into windows of ``window_seconds`` (``floor(now / window)``);
each ``(key, window)`` has a counter; a hit increments it and is allowed while the counter is at most
``limit``. This is exact and needs one atomic increment, so concurrent workers never admit more than
``limit`` hits into one window. The known price: a client may spend its limit at the end of one window
and again at the start of the next, i.e. up to ``2 * limit`` within any ``window_seconds`` span. For a
per-client abuse brake that is acceptable; a sliding log would cost a sorted set per client.

``Retry-After`` (RFC 9110 §10.2.3, RFC 6585 §4) is the whole number of seconds until the window ends,
at least 1. Denied hits are counted too, so hammering does not help, but they never extend the window.

Workers take ``now`` from their own clocks; a few milliseconds of skew only moves where a window
boundary falls for one hit, never lets more than ``limit`` into one counter.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from typing import Protocol

import redis
import redis.exceptions

from auth.errors import StateUnavailable

__all__ = [
    "InMemoryRateLimiter",
    "RateDecision",
    "RateLimiter",
    "RedisRateLimiter",
    "decide",
    "window",
]


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer for one hit.

    :param allowed: whether the request may proceed.
    :param retry_after: when denied, whole seconds until the window ends (>= 1), for ``Retry-After``;
        0 when allowed.
    """

    allowed: bool
    retry_after: int


class RateLimiter(Protocol):
    """Counts hits per key in fixed windows.

    ``hit`` is atomic: of any number of concurrent hits on one key within one window, at most ``limit``
    are allowed. It raises :class:`~auth.errors.StateUnavailable` when it cannot count.
    """

    def hit(self, key: str, now: float) -> RateDecision:
        """Count one request for ``key`` at ``now`` (epoch seconds) and say whether it may proceed."""
        ...


def _check_limits(limit: int, window_seconds: int) -> None:
    for name, value in (("limit", limit), ("window_seconds", window_seconds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int")


def window(now: float, window_seconds: int) -> tuple[int, int]:
    """``(window index, seconds until it ends rounded up, >= 1)`` for ``now`` (also used by the
    one-round-trip admission, :mod:`auth.replaystate`)."""
    if not math.isfinite(now):
        raise ValueError("now must be a finite number")
    index = int(now // window_seconds)  # floor division of floats is exact; floor(now / w) may round up
    remaining = (index + 1) * window_seconds - now
    return index, max(1, math.ceil(remaining))


def decide(count: int, limit: int, retry_after: int) -> RateDecision:
    """The decision for the ``count``-th hit of a window (allowed while ``count <= limit``)."""
    return RateDecision(True, 0) if count <= limit else RateDecision(False, retry_after)


def _key_digest(key: str) -> str:
    # Keys carry issuer and client id: hashing bounds their size in the store whatever a token said.
    if not isinstance(key, str) or not key:
        raise ValueError("the rate-limit key must be a non-empty string")
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RedisRateLimiter:
    """:class:`RateLimiter` on Redis: ``MULTI; INCR <counter>; EXPIRE <counter> <window>; EXEC``.

    One round trip, executed atomically by Redis: ``INCR`` hands each concurrent hit a distinct count,
    so exactly the first ``limit`` hits of a window are allowed, across all workers. The counter's name
    contains the window index (``<prefix><sha256(key)[:32]>:<window>``), so a new window starts a new
    counter; the ``EXPIRE`` only bounds memory (a counter lives one window after its last hit).

    **Fails closed**: any Redis error raises :class:`~auth.errors.StateUnavailable` (503). Unlike
    warehouse, which fails open, here the same Redis holds the replay cache that every request needs
    (the DPoP ``jti`` claim fails closed already), so failing open would not keep the API up; it would
    only drop the brake during partial failures (``OOM`` refusing writes, a read-only replica after a
    failover), which is exactly when a flood hurts most.

    :param client: a ``redis.Redis`` client; give it short socket timeouts.
    :param limit: hits allowed per key per window.
    :param window_seconds: window length.
    :param prefix: prepended to every key, so several deployments or tests can share one database.
    """

    def __init__(
        self, client: redis.Redis, *, limit: int, window_seconds: int, prefix: str = "dho:ratelimit:"
    ) -> None:
        _check_limits(limit, window_seconds)
        self._client = client
        self._limit = limit
        self._window = window_seconds
        self._prefix = prefix

    def hit(self, key: str, now: float) -> RateDecision:
        index, retry_after = window(now, self._window)
        name = f"{self._prefix}{_key_digest(key)}:{index}"
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.incr(name)
            pipe.expire(name, self._window)
            count, _ = pipe.execute()
        except redis.exceptions.RedisError as err:
            raise StateUnavailable("rate limiter unavailable") from err
        return decide(int(count), self._limit, retry_after)


class InMemoryRateLimiter:
    """:class:`RateLimiter` in this process: a lock and a dict of ``(key, window) -> count``.

    For tests and single-process development only: each worker would count separately. Never fails.
    Counters of past windows are dropped when time moves on, so memory is bounded by the keys seen in
    the current and the previous window.

    :param limit: hits allowed per key per window.
    :param window_seconds: window length.
    """

    def __init__(self, *, limit: int, window_seconds: int) -> None:
        _check_limits(limit, window_seconds)
        self._limit = limit
        self._window = window_seconds
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}
        self._newest = -math.inf

    def hit(self, key: str, now: float) -> RateDecision:
        index, retry_after = window(now, self._window)
        name = (_key_digest(key), index)
        with self._lock:
            if index > self._newest:
                self._newest = index
                # Keep the previous window too: threads' clocks may straddle a boundary.
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= index - 1}
            count = self._counts.get(name, 0) + 1
            self._counts[name] = count
        return decide(count, self._limit, retry_after)

    def live_counters(self) -> int:
        """How many counters are kept (for tests and metrics)."""
        with self._lock:
            return len(self._counts)
