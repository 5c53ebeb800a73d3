"""Fixtures of the security tests (tests/security): a published measurement and probes to attack it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from sharing_api.services import Services
from tests.api_client import ApiClient
from tests.security.helpers import Probe, RedisServer, Scene, make_scene


@pytest.fixture(scope="session")
def security_redis_url() -> Iterator[str]:
    """A Redis of the security tests' own: a private ``redis-server`` on a free port for the session
    (or ``DHO_TEST_SECURITY_REDIS_URL``). Not the shared database 14, which other test runs on this
    machine use (and some flush) at the same time: these tests count Redis keys, read their TTLs and
    rely on a replay entry surviving between two requests."""
    configured = os.environ.get("DHO_TEST_SECURITY_REDIS_URL")
    if configured:
        yield configured
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(security_redis_url: str) -> Iterator[str]:
    """Overrides ``tests/conftest.py``'s: an empty Redis for each test."""
    client = redis.Redis.from_url(security_redis_url)
    client.flushdb()
    yield security_redis_url
    client.flushdb()
    client.close()


@pytest.fixture
def scene(client: ApiClient, services: Services) -> Scene:
    return make_scene(client, services)


@pytest.fixture
def reader(scene: Scene) -> Probe:
    """A hospital's read of the published observation, with a token bound to that patient."""
    return scene.read


@pytest.fixture(params=["read", "write"])
def probe(request: pytest.FixtureRequest, scene: Scene) -> Probe:
    """Each negative token test runs against a read (PHI must not leak) and a write (nothing stored)."""
    return scene.probe(request.param)
