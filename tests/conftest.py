"""Shared fixtures: every API test runs against SQLite and against PostgreSQL (real servers on loopback).

PostgreSQL is reached at ``DHO_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
each test session creates its own database and drops it afterwards. Redis is at ``DHO_TEST_REDIS_URL``
(default ``redis://127.0.0.1:6379/14``). Set ``DHO_TEST_BACKENDS=sqlite`` to run one backend only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from sharing_api.app import create_app
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store.engine import make_engine, upgrade
from sharing_api.store.schema import metadata

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
POSTGRES_ADMIN = os.environ.get("DHO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DHO_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
BACKENDS = [b for b in os.environ.get("DHO_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]

TENANT_A = "921234562"
TENANT_B = "923456783"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the reference pack is missing: expected {SHARED} beside the checkout")
    return SHARED


def _postgres_database() -> Iterator[str]:
    name = f"dho_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database of each backend, shared by the session (tables are emptied per test)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'dho.sqlite3'}"
        upgrade(url)
        yield url
    else:
        gen = _postgres_database()
        url = next(gen)
        upgrade(url)
        yield url
        gen.close()


def empty_tables(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


def empty_observations(services: Services) -> None:
    """Remove every observation (not the tenants), for tests that reset data between examples."""
    from sharing_api.store import schema

    with services.engine.begin() as conn:
        for table in (schema.observations, schema.observation_history, schema.observation_tokens):
            conn.execute(table.delete())
        conn.execute(schema.observation_identifiers.delete())


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    empty_tables(database_url)
    return Settings(database_url=database_url, redis_url=redis_url, public_url="https://dho.example.test")  # type: ignore[arg-type]


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    svc: Services = app.extensions["dho"]
    svc.tenants.add(TENANT_A, "Kommune A")
    svc.tenants.add(TENANT_B, "Kommune B")
    yield app
    svc.engine.dispose()


@pytest.fixture
def services(app: Flask) -> Services:
    svc: Services = app.extensions["dho"]
    return svc


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
