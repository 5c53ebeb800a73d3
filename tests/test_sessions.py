"""Search-session stores: the same contract for Redis and the in-process store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from sharing_api import redis_connection
from sharing_api.errors import ServiceUnavailable
from sharing_api.sessions import LocalSessions, RedisSessions, SearchSessions
from tests.conftest import REDIS_URL


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[SearchSessions]:
    if request.param == "local":
        yield LocalSessions(ttl=60, max_entries=3)
    else:
        client = redis.Redis.from_url(REDIS_URL)
        prefix = f"dho:test-sessions:{uuid.uuid4().hex}:"  # this test's own keys (parallel workers)
        yield RedisSessions(client, ttl=60, prefix=prefix)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_put_then_get_round_trips(store: SearchSessions) -> None:
    cursor = store.put({"tenant": "921234562", "params": [["code", "x"]]})
    assert store.get(cursor) == {"tenant": "921234562", "params": [["code", "x"]]}


def test_cursors_are_unguessable_and_unknown_ones_are_none(store: SearchSessions) -> None:
    cursors = {store.put({"n": i}) for i in range(3)}
    assert len(cursors) == 3
    assert all(len(c) >= 22 for c in cursors)  # 128 random bits, base64url
    assert store.get("not-a-cursor") is None


def test_local_store_is_bounded() -> None:
    store = LocalSessions(ttl=60, max_entries=2)
    first = store.put({"n": 1})
    store.put({"n": 2})
    store.put({"n": 3})
    assert store.get(first) is None


def test_local_store_drops_expired_records_as_new_ones_come() -> None:
    """A server that searches all day keeps the cursors of the last ``ttl`` seconds, not the last
    ``max_entries`` (issue 12: memory); a live cursor still answers, an expired one is None."""
    now = [0.0]
    store = LocalSessions(ttl=60, max_entries=100_000, clock=lambda: now[0])
    cursors = []
    for n in range(2_000):  # one search a second for 2,000 s
        now[0] = float(n)
        cursors.append(store.put({"n": n}))
        assert store.held() <= 62
    assert store.get(cursors[-1]) == {"n": 1_999}
    assert store.get(cursors[-60]) == {"n": 1_940}
    assert store.get(cursors[0]) is None
    assert store.get(cursors[1_000]) is None


def test_redis_records_expire() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    store = RedisSessions(client, ttl=30, prefix="dho:test-sessions:")
    cursor = store.put({"n": 1})
    assert 0 < int(client.ttl(f"dho:test-sessions:{cursor}")) <= 30  # type: ignore[arg-type]
    client.delete(f"dho:test-sessions:{cursor}")


def test_redis_down_is_a_clear_503() -> None:
    # The client the app makes (its timeouts and retries): redis-py's default retries a refused
    # connection ten times with backoff, 8 s of sleeping in this test.
    dead = redis_connection.connect("redis://127.0.0.1:1/0")
    store = RedisSessions(dead, ttl=30)
    with pytest.raises(ServiceUnavailable):
        store.put({"n": 1})
    with pytest.raises(ServiceUnavailable):
        store.get("x")


def test_put_many_stores_each_record_under_its_own_cursor(store: SearchSessions) -> None:
    records = [{"n": 1, "anchor": None}, {"n": 2, "anchor": ["a", "b", False]}, {"n": 3}]
    cursors = store.put_many(records)
    assert len(set(cursors)) == 3
    assert [store.get(c) for c in cursors] == records


def test_put_many_with_redis_down_is_a_clear_503() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(ServiceUnavailable):
        RedisSessions(dead, ttl=30).put_many([{"n": 1}, {"n": 2}])
