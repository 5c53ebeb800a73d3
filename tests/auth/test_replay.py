"""Replay-cache contract (both implementations), Redis fail-closed behaviour, and DPoP nonces."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from auth.errors import StateUnavailable
from auth.replay import InMemoryReplayCache, NonceSource, RedisReplayCache, ReplayCache

# --- contract: runs against InMemoryReplayCache and RedisReplayCache ----------------------------------


def test_first_claim_wins_second_loses(replay_cache: ReplayCache) -> None:
    assert replay_cache.claim("dpop", "jti-1", 60) is True
    assert replay_cache.claim("dpop", "jti-1", 60) is False


def test_keys_and_namespaces_are_independent(replay_cache: ReplayCache) -> None:
    assert replay_cache.claim("dpop", "a", 60) is True
    assert replay_cache.claim("dpop", "b", 60) is True
    assert replay_cache.claim("client-assertion", "a", 60) is True


def test_claim_expires_after_ttl(replay_cache: ReplayCache) -> None:
    assert replay_cache.claim("dpop", "short", 1) is True
    time.sleep(1.1)
    assert replay_cache.claim("dpop", "short", 1) is True


def test_huge_keys_are_stored_bounded(replay_cache: ReplayCache) -> None:
    """DPOP-14: a 10 KB value is hashed, never stored as such."""
    big = "x" * 10_240
    assert replay_cache.claim("dpop", big, 60) is True
    assert replay_cache.claim("dpop", big, 60) is False


@pytest.mark.parametrize(
    ("namespace", "ttl", "error"),
    [
        ("", 60, ValueError),
        ("Bad Namespace", 60, ValueError),
        ("x" * 65, 60, ValueError),
        ("dpop", 0, ValueError),
        ("dpop", 10**9, ValueError),
        ("dpop", 1.5, TypeError),
        ("dpop", True, TypeError),
    ],
)
def test_bad_arguments_are_programming_errors(
    replay_cache: ReplayCache, namespace: str, ttl: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        replay_cache.claim(namespace, "k", ttl)


def test_concurrent_claims_have_exactly_one_winner(replay_cache: ReplayCache) -> None:
    results = _race(replay_cache, threads=50)
    assert results.count(True) == 1
    assert results.count(False) == 49


def _race(cache: ReplayCache, *, threads: int) -> list[bool]:
    barrier = threading.Barrier(threads)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        outcome = cache.claim("dpop", "the-same-jti", 60)
        with lock:
            results.append(outcome)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results


# --- Redis specifics ---------------------------------------------------------------------------------


def test_fifty_threads_against_real_redis_get_one_true(redis_client: redis.Redis, redis_prefix: str) -> None:
    """DPOP-12 / CLA-05 at the storage level: one atomic SET NX EX, so exactly one winner."""
    cache = RedisReplayCache(redis_client, prefix=redis_prefix)
    results = _race(cache, threads=50)
    assert results.count(True) == 1


def test_redis_key_has_prefix_hashed_key_and_ttl(redis_client: redis.Redis, redis_prefix: str) -> None:
    cache = RedisReplayCache(redis_client, prefix=redis_prefix)
    assert cache.claim("dpop", "jti-raw-value", 71)
    keys = [k.decode() for k in redis_client.scan_iter(match=f"{redis_prefix}*")]
    assert len(keys) == 1
    assert keys[0].startswith(f"{redis_prefix}dpop:")
    assert "jti-raw-value" not in keys[0]
    assert 69 <= int(redis_client.ttl(keys[0])) <= 71


def test_redis_unreachable_fails_closed() -> None:
    """REL-01: no Redis, no acceptance: StateUnavailable (503)."""
    dead = redis.Redis(  # no retries: redis-py's default ten, with backoff, only add seconds of sleep
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    cache = RedisReplayCache(dead)
    with pytest.raises(StateUnavailable) as caught:
        cache.claim("dpop", "jti", 60)
    assert caught.value.resource.status == 503
    dead.close()


class _OomRedis(redis.Redis):
    def set(self, *args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")


def test_redis_oom_fails_closed() -> None:
    """REL-02: Redis at maxmemory with noeviction refuses the SET; we refuse the request."""
    with pytest.raises(StateUnavailable):
        RedisReplayCache(_OomRedis()).claim("dpop", "jti", 60)


# --- in-memory specifics -----------------------------------------------------------------------------


def test_in_memory_cache_forgets_expired_entries() -> None:
    clock = [1000.0]
    cache = InMemoryReplayCache(clock=lambda: clock[0])
    for i in range(100):
        assert cache.claim("dpop", str(i), 10)
    assert cache.live_entries() == 100
    clock[0] += 10
    assert cache.live_entries() == 0
    assert cache.claim("dpop", "0", 10) is True


def test_in_memory_entry_lives_exactly_ttl() -> None:
    clock = [0.0]
    cache = InMemoryReplayCache(clock=lambda: clock[0])
    assert cache.claim("dpop", "k", 71)
    clock[0] = 70.9
    assert cache.claim("dpop", "k", 71) is False
    clock[0] = 71.0
    assert cache.claim("dpop", "k", 71) is True


# --- nonces ------------------------------------------------------------------------------------------


def test_nonce_round_trip(rs_nonces: NonceSource) -> None:
    nonce = rs_nonces.issue(1_000_000)
    assert rs_nonces.check(nonce, 1_000_000)


def test_nonce_survives_one_window_then_goes_stale(rs_nonces: NonceSource) -> None:
    issued = 1_000_200.0  # window 3334 of 300 s: [1_000_200, 1_000_500)
    nonce = rs_nonces.issue(issued)
    assert rs_nonces.check(nonce, issued + 299)
    assert rs_nonces.check(nonce, issued + 599)
    assert not rs_nonces.check(nonce, issued + 600)
    assert not rs_nonces.check(nonce, issued - 1)  # from the future


def test_all_workers_with_the_same_secret_agree() -> None:
    a = NonceSource(b"s" * 32, audience="resource")
    b = NonceSource(b"s" * 32, audience="resource")
    assert b.check(a.issue(5_000), 5_000)


def test_nonces_of_the_token_endpoint_do_not_work_at_the_resource(
    rs_nonces: NonceSource, as_nonces: NonceSource
) -> None:
    """DPOP-16: an AS nonce used at the RS is refused."""
    assert not rs_nonces.check(as_nonces.issue(5_000), 5_000)
    assert not as_nonces.check(rs_nonces.issue(5_000), 5_000)


@pytest.mark.parametrize("forged", ["", "abc", "3.AAAA", "16.", "x" * 10_000, "16." + "A" * 32])
def test_forged_nonces_are_refused(rs_nonces: NonceSource, forged: str) -> None:
    assert not rs_nonces.check(forged, 5_000)


def test_other_secret_nonces_are_refused(rs_nonces: NonceSource) -> None:
    other = NonceSource(b"o" * 32, audience="resource")
    assert not rs_nonces.check(other.issue(5_000), 5_000)


def test_nonce_source_needs_a_real_secret() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        NonceSource(b"short", audience="resource")
    with pytest.raises(ValueError, match="audience"):
        NonceSource(b"s" * 32, audience="")
