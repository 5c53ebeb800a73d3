"""Fixtures of the ``auth`` tests: replay caches (in-memory and real Redis), keys, nonces.

Redis is at ``DHO_TEST_AUTH_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``). Each test gets its own
key prefix and only that prefix is deleted afterwards; the database is never flushed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from joserfc.jwk import ECKey

from auth.keys import SigningKeySet
from auth.replay import InMemoryReplayCache, NonceSource, RedisReplayCache, ReplayCache
from tests.auth import factories
from tests.prerequisites import missing

REDIS_URL = os.environ.get("DHO_TEST_AUTH_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as err:
        missing(f"Redis not reachable at {REDIS_URL}: {err}")
    yield client
    client.close()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"dho-test-auth:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def redis_replay(redis_client: redis.Redis, redis_prefix: str) -> RedisReplayCache:
    return RedisReplayCache(redis_client, prefix=redis_prefix)


@pytest.fixture(params=["memory", "redis"])
def replay_cache(request: pytest.FixtureRequest) -> ReplayCache:
    """Every contract test runs against both implementations."""
    if request.param == "memory":
        return InMemoryReplayCache()
    cache: ReplayCache = request.getfixturevalue("redis_replay")
    return cache


@pytest.fixture
def memory_replay() -> InMemoryReplayCache:
    return InMemoryReplayCache()


@pytest.fixture(scope="session")
def keyset() -> SigningKeySet:
    return SigningKeySet.generate()


@pytest.fixture
def proof_key() -> ECKey:
    return factories.ec_key()


@pytest.fixture
def rs_nonces() -> NonceSource:
    return NonceSource(b"r" * 32, audience="resource")


@pytest.fixture
def as_nonces() -> NonceSource:
    return NonceSource(b"r" * 32, audience="token-endpoint")
