"""Revocation-list contract (both implementations), bounded size, and Redis fail-closed behaviour.

AUTH-13 at the storage level: a revoked ``jti`` is reported revoked until the token could no longer be
accepted; REL-01: when the store cannot answer, :class:`StateUnavailable` (503), never "not revoked".
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from auth.errors import StateUnavailable
from auth.revocation import (
    DEFAULT_GRACE_SECONDS,
    MAX_TTL_SECONDS,
    InMemoryRevocationList,
    RedisRevocationList,
    RevocationList,
)
from tests.auth.factories import NOW


class Clock:
    """A settable monotonic clock for the in-memory list."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def revocations(request: pytest.FixtureRequest) -> RevocationList:
    """Every contract test runs against both implementations."""
    if request.param == "memory":
        return InMemoryRevocationList()
    client: redis.Redis = request.getfixturevalue("redis_client")
    prefix: str = request.getfixturevalue("redis_prefix")
    return RedisRevocationList(client, prefix=prefix)


# --- contract: runs against InMemoryRevocationList and RedisRevocationList ---------------------------


def test_revoked_jti_is_revoked_and_others_are_not(revocations: RevocationList) -> None:
    assert revocations.is_revoked("jti-1") is False
    revocations.revoke("jti-1", NOW + 300, NOW)
    assert revocations.is_revoked("jti-1") is True
    assert revocations.is_revoked("jti-2") is False


def test_revoking_twice_is_harmless(revocations: RevocationList) -> None:
    revocations.revoke("jti-1", NOW + 300, NOW)
    revocations.revoke("jti-1", NOW + 300, NOW + 10)
    assert revocations.is_revoked("jti-1") is True


def test_a_token_already_past_acceptance_is_not_stored(revocations: RevocationList) -> None:
    """Expired beyond the leeway grace: it is refused by ``exp`` anyway; storing it would only grow."""
    revocations.revoke("old", NOW - DEFAULT_GRACE_SECONDS - 1, NOW)
    assert revocations.is_revoked("old") is False


def test_a_token_just_expired_is_still_stored(revocations: RevocationList) -> None:
    """Within the grace a lenient verifier (leeway up to 300 s) could still accept it."""
    revocations.revoke("recent", NOW - 5, NOW)
    assert revocations.is_revoked("recent") is True


def test_huge_jti_is_stored_bounded(revocations: RevocationList) -> None:
    big = "x" * 10_240
    revocations.revoke(big, NOW + 60, NOW)
    assert revocations.is_revoked(big) is True
    assert revocations.is_revoked(big[:-1]) is False


@pytest.mark.parametrize(
    ("jti", "expires_at", "now"),
    [
        ("", NOW + 60, NOW),
        (None, NOW + 60, NOW),
        ("j", float("nan"), NOW),
        ("j", float("inf"), NOW),
        ("j", NOW + 60, float("nan")),
        ("j", NOW + MAX_TTL_SECONDS + 1, NOW),
    ],
)
def test_bad_arguments_are_programming_errors(
    revocations: RevocationList, jti: Any, expires_at: float, now: float
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        revocations.revoke(jti, expires_at, now)


def test_empty_jti_lookup_is_a_programming_error(revocations: RevocationList) -> None:
    with pytest.raises(ValueError, match="jti"):
        revocations.is_revoked("")


def test_concurrent_revocations_are_all_seen(revocations: RevocationList) -> None:
    barrier = threading.Barrier(20)

    def worker(i: int) -> None:
        barrier.wait()
        revocations.revoke(f"jti-{i}", NOW + 300, NOW)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert all(revocations.is_revoked(f"jti-{i}") for i in range(20))


def _dead_redis() -> redis.Redis:
    """Nothing listens on port 1; no retries, so the failure is immediate."""
    return redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )


# --- Redis specifics ---------------------------------------------------------------------------------


def test_redis_key_is_hashed_and_expires_with_the_token(redis_client: redis.Redis, redis_prefix: str) -> None:
    """The set never outgrows the live tokens: TTL = time to ``exp`` + grace, rounded up."""
    revocations = RedisRevocationList(redis_client, prefix=redis_prefix)
    revocations.revoke("jti-raw-value", NOW + 120.2, NOW)
    keys = [k.decode() for k in redis_client.scan_iter(match=f"{redis_prefix}*")]
    assert len(keys) == 1
    assert "jti-raw-value" not in keys[0]
    expected = 121 + DEFAULT_GRACE_SECONDS
    assert expected - 2 <= int(redis_client.ttl(keys[0])) <= expected


def test_redis_grace_is_configurable(redis_client: redis.Redis, redis_prefix: str) -> None:
    revocations = RedisRevocationList(redis_client, prefix=redis_prefix, grace_seconds=0)
    revocations.revoke("j", NOW + 30, NOW)
    (key,) = redis_client.scan_iter(match=f"{redis_prefix}*")
    assert 28 <= int(redis_client.ttl(key)) <= 30
    revocations.revoke("expired", NOW - 1, NOW)
    assert len(list(redis_client.scan_iter(match=f"{redis_prefix}*"))) == 1


def test_redis_unreachable_fails_closed() -> None:
    """REL-01: no Redis, no answer "not revoked": StateUnavailable (503)."""
    dead = _dead_redis()
    revocations = RedisRevocationList(dead)
    with pytest.raises(StateUnavailable) as caught:
        revocations.is_revoked("jti")
    assert caught.value.resource.status == 503
    with pytest.raises(StateUnavailable):
        revocations.revoke("jti", NOW + 60, NOW)
    dead.close()


class _BrokenRedis(redis.Redis):
    def set(self, *args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")

    def exists(self, *args: Any) -> Any:
        raise redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica.")


def test_redis_errors_fail_closed() -> None:
    """REL-02: OOM under noeviction refuses the SET; any other Redis error refuses the check."""
    revocations = RedisRevocationList(_BrokenRedis())
    with pytest.raises(StateUnavailable):
        revocations.revoke("jti", NOW + 60, NOW)
    with pytest.raises(StateUnavailable):
        revocations.is_revoked("jti")


@pytest.mark.parametrize("grace", [-1, 1.5, True])
def test_bad_grace_is_refused(grace: Any) -> None:
    with pytest.raises(ValueError, match="grace"):
        InMemoryRevocationList(grace_seconds=grace)
    with pytest.raises(ValueError, match="grace"):
        RedisRevocationList(redis.Redis(), grace_seconds=grace)


# --- in-memory specifics -----------------------------------------------------------------------------


def test_in_memory_entry_lives_until_exp_plus_grace() -> None:
    clock = Clock(1000.0)
    revocations = InMemoryRevocationList(clock=clock, grace_seconds=10)
    revocations.revoke("j", NOW + 60, NOW)  # 70 s from now on the list's own clock
    clock.now = 1069.9
    assert revocations.is_revoked("j") is True
    clock.now = 1070.0
    assert revocations.is_revoked("j") is False
    assert revocations.live_entries() == 0


def test_in_memory_list_forgets_expired_entries() -> None:
    clock = Clock()
    revocations = InMemoryRevocationList(clock=clock, grace_seconds=0)
    for i in range(100):
        revocations.revoke(str(i), NOW + 10 + i, NOW)
    assert revocations.live_entries() == 100
    clock.now = 59.5  # deadlines 10..109: 10..59 have passed
    assert revocations.live_entries() == 50
    clock.now = 110
    assert revocations.live_entries() == 0


def test_in_memory_revoking_again_sets_the_new_deadline() -> None:
    clock = Clock()
    revocations = InMemoryRevocationList(clock=clock, grace_seconds=0)
    revocations.revoke("j", NOW + 10, NOW)
    revocations.revoke("j", NOW + 30, NOW)
    clock.now = 15  # the first heap entry is popped and must not remove the entry
    assert revocations.is_revoked("j") is True
    clock.now = 30
    assert revocations.is_revoked("j") is False
