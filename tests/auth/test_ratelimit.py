"""Per-client rate limits (RES-03): contract for both implementations, atomicity on real Redis, and
fail-closed behaviour. Time is always injected; nothing sleeps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from auth.errors import StateUnavailable
from auth.ratelimit import InMemoryRateLimiter, RateDecision, RateLimiter, RedisRateLimiter

LIMIT = 5
WINDOW = 60
T0 = 1_767_225_600.0  # the start of a 60 s window
CLIENT = "https://dho.example.test|client-a"

Make = Callable[..., RateLimiter]


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> Make:
    """A factory, so each test chooses limit and window; every contract test runs against both."""
    if request.param == "memory":
        return lambda limit=LIMIT, window_seconds=WINDOW: InMemoryRateLimiter(
            limit=limit, window_seconds=window_seconds
        )
    client: redis.Redis = request.getfixturevalue("redis_client")
    prefix: str = request.getfixturevalue("redis_prefix")
    return lambda limit=LIMIT, window_seconds=WINDOW: RedisRateLimiter(
        client, limit=limit, window_seconds=window_seconds, prefix=prefix
    )


# --- contract -----------------------------------------------------------------------------------------


def test_limit_hits_pass_and_the_next_is_denied_with_retry_after(make_limiter: Make) -> None:
    limiter = make_limiter()
    decisions = [limiter.hit(CLIENT, T0 + 10 + i) for i in range(LIMIT)]
    assert decisions == [RateDecision(True, 0)] * LIMIT
    denied = limiter.hit(CLIENT, T0 + 20.5)
    assert denied == RateDecision(False, 40)  # the window ends at T0 + 60: 39.5 s, rounded up


def test_retry_after_is_at_least_one_second(make_limiter: Make) -> None:
    limiter = make_limiter(limit=1)
    limiter.hit(CLIENT, T0 + 59.999)
    assert limiter.hit(CLIENT, T0 + 59.999) == RateDecision(False, 1)


def test_other_clients_are_unaffected(make_limiter: Make) -> None:
    limiter = make_limiter()
    for i in range(LIMIT + 3):
        limiter.hit(CLIENT, T0 + i)
    assert limiter.hit(CLIENT, T0 + 10).allowed is False
    other = "https://dho.example.test|client-b"
    assert all(limiter.hit(other, T0 + 10).allowed for _ in range(LIMIT))
    assert limiter.hit("https://helseid-sts.test.nhn.no|client-a", T0 + 10).allowed is True


def test_window_rolls_over(make_limiter: Make) -> None:
    limiter = make_limiter()
    for _ in range(LIMIT):
        assert limiter.hit(CLIENT, T0 + 59).allowed
    assert not limiter.hit(CLIENT, T0 + 59.9).allowed
    assert all(limiter.hit(CLIENT, T0 + WINDOW).allowed for _ in range(LIMIT))
    assert limiter.hit(CLIENT, T0 + WINDOW + 1) == RateDecision(False, WINDOW - 1)


def test_denied_hits_do_not_extend_the_window(make_limiter: Make) -> None:
    limiter = make_limiter(limit=1)
    assert limiter.hit(CLIENT, T0).allowed
    for i in range(50):
        assert not limiter.hit(CLIENT, T0 + i).allowed
    assert limiter.hit(CLIENT, T0 + WINDOW).allowed


def test_concurrent_hits_never_exceed_the_limit(make_limiter: Make) -> None:
    limiter = make_limiter(limit=25)
    results = _hammer(limiter, threads=40, hits_each=5, now=T0 + 1)
    assert results.count(True) == 25
    assert results.count(False) == 175


@pytest.mark.parametrize(("limit", "window"), [(0, 60), (5, 0), (-1, 60), (1.5, 60), (True, 60), (5, 0.5)])
def test_bad_configuration_is_refused(make_limiter: Make, limit: Any, window: Any) -> None:
    with pytest.raises(ValueError, match="positive int"):
        make_limiter(limit=limit, window_seconds=window)


@pytest.mark.parametrize(("key", "now"), [("", T0), (CLIENT, float("nan")), (CLIENT, float("inf"))])
def test_bad_arguments_are_programming_errors(make_limiter: Make, key: str, now: float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        make_limiter().hit(key, now)


def _hammer(limiter: RateLimiter, *, threads: int, hits_each: int, now: float) -> list[bool]:
    barrier = threading.Barrier(threads)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        outcomes = [limiter.hit(CLIENT, now).allowed for _ in range(hits_each)]
        with lock:
            results.extend(outcomes)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results


def _dead_redis() -> redis.Redis:
    """Nothing listens on port 1; no retries, so the failure is immediate."""
    return redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )


# --- Redis specifics ---------------------------------------------------------------------------------


def test_workers_sharing_redis_share_the_count(redis_client: redis.Redis, redis_prefix: str) -> None:
    """Two limiters (two workers) on one Redis admit ``limit`` hits between them, not each."""
    a = RedisRateLimiter(redis_client, limit=LIMIT, window_seconds=WINDOW, prefix=redis_prefix)
    b = RedisRateLimiter(redis_client, limit=LIMIT, window_seconds=WINDOW, prefix=redis_prefix)
    outcomes = [(a if i % 2 else b).hit(CLIENT, T0 + 1).allowed for i in range(2 * LIMIT)]
    assert outcomes.count(True) == LIMIT


def test_redis_counter_is_hashed_and_expires(redis_client: redis.Redis, redis_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, limit=LIMIT, window_seconds=WINDOW, prefix=redis_prefix)
    limiter.hit(CLIENT, T0 + 1)
    (key,) = (k.decode() for k in redis_client.scan_iter(match=f"{redis_prefix}*"))
    assert "client-a" not in key
    assert key.endswith(f":{int(T0 // WINDOW)}")
    assert 0 < int(redis_client.ttl(key)) <= WINDOW


def test_redis_unreachable_fails_closed() -> None:
    """Fail closed, documented in RedisRateLimiter: 503 rather than an unlimited flood."""
    dead = _dead_redis()
    with pytest.raises(StateUnavailable) as caught:
        RedisRateLimiter(dead, limit=LIMIT, window_seconds=WINDOW).hit(CLIENT, T0)
    assert caught.value.resource.status == 503
    dead.close()


def test_redis_oom_fails_closed() -> None:
    class OomPipeline:
        def __init__(self) -> None:
            self.commands: list[str] = []

        def incr(self, name: str) -> None:
            self.commands.append("incr")

        def expire(self, name: str, seconds: int) -> None:
            self.commands.append("expire")

        def execute(self) -> list[Any]:
            raise redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")

    class OomRedis(redis.Redis):
        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            return OomPipeline()

    with pytest.raises(StateUnavailable):
        RedisRateLimiter(OomRedis(), limit=LIMIT, window_seconds=WINDOW).hit(CLIENT, T0)


# --- in-memory specifics -----------------------------------------------------------------------------


def test_in_memory_drops_counters_of_past_windows() -> None:
    limiter = InMemoryRateLimiter(limit=LIMIT, window_seconds=WINDOW)
    for i in range(100):
        limiter.hit(f"client-{i}", T0)
    assert limiter.live_counters() == 100
    limiter.hit("client-0", T0 + WINDOW)  # the previous window is kept: clocks may straddle it
    assert limiter.live_counters() == 101
    limiter.hit("client-0", T0 + 2 * WINDOW)
    assert limiter.live_counters() == 2


@given(
    limit=st.integers(1, 5),
    window=st.integers(1, 120),
    hits=st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 1000)), max_size=60),
)
def test_in_memory_matches_the_fixed_window_model(
    limit: int, window: int, hits: list[tuple[str, float]]
) -> None:
    """Any hits in time order: the first ``limit`` per key and window pass, the rest wait for the end."""
    limiter = InMemoryRateLimiter(limit=limit, window_seconds=window)
    counts: dict[tuple[str, int], int] = {}
    for key, offset in sorted(hits, key=lambda hit: hit[1]):
        now = T0 + offset
        index = int(now // window)
        counts[key, index] = counts.get((key, index), 0) + 1
        decision = limiter.hit(key, now)
        assert decision.allowed is (counts[key, index] <= limit)
        if decision.allowed:
            assert decision.retry_after == 0
        else:
            assert 1 <= decision.retry_after <= window
            assert now + decision.retry_after >= (index + 1) * window
