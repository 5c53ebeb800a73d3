"""Shared fixtures: every API test runs against SQLite and against PostgreSQL (real servers on loopback).

PostgreSQL is reached at ``DHO_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
each test session creates its own database and drops it afterwards. Redis is at ``DHO_TEST_REDIS_URL``
(default ``redis://127.0.0.1:6379/14``). Set ``DHO_TEST_BACKENDS=sqlite`` to run one backend only.

Parallel runs (``make test`` uses pytest-xdist): every worker is a session of its own, so it has its own
SQLite files and PostgreSQL databases (named after the worker), its own private ``redis-server`` for
the security tests, and servers on free ports; tests touch only Redis keys they made up at random (or
under a random prefix), never flush the shared databases 14/15, and signing-key files are created
atomically (``os.link``), so workers never disturb each other.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import redis
from flask import Flask

from consent.model import PurposeOfUse
from sharing_api.app import create_app
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store import audit_partitions
from sharing_api.store.engine import make_engine, upgrade
from sharing_api.store.schema import metadata
from tests import construction_cache, hypothesis_budget
from tests.api_client import HOSPITAL, OTHER_HOSPITAL, ApiClient
from tests.prerequisites import require

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
POSTGRES_ADMIN = os.environ.get("DHO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DHO_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
BACKENDS = [b for b in os.environ.get("DHO_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]

hypothesis_budget.load()  # the suite's example budgets, or HYPOTHESIS_PROFILE=long's

TENANT_A = "921234562"
TENANT_B = "923456783"


# Backend order of the tests scheduled first: PostgreSQL, then neither, then SQLite, which the rest of
# the collection starts with, so a worker changes its session database (re-migrating it) at most twice.
_BACKEND_ORDER = {"postgresql": 0, None: 1, "sqlite": 2}


def _schedule_rank(item: pytest.Item) -> tuple[int, int]:
    if item.get_closest_marker("long") or item.get_closest_marker("multinode"):
        weight = 0
    elif item.get_closest_marker("slow"):
        weight = 1
    else:
        return (2, 0)
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("database_url") if callspec is not None else None
    return (weight, _BACKEND_ORDER.get(backend, 1))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that take longest first (``long``/``multinode``, then ``slow``: each takes seconds
    to a minute), so that under pytest-xdist none of them starts near the end of the run while the
    other worker has nothing left to do. Every worker collects the same order; the order of all
    other tests is unchanged (a stable sort)."""
    items.sort(key=_schedule_rank)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Exempt what exists once the tests are collected (modules, plugins, the collected items: several
    hundred thousand objects that live all session) from the garbage collector's full collections
    (``gc.freeze``). Each test leaves cyclic garbage (an app, its services) that only a full collection
    frees; each such collection traversed all of those long-lived objects again."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def _app_construction_cached() -> Iterator[None]:
    """Build each test's app without recompiling what never changes in a run (tests/construction_cache.py)."""
    with pytest.MonkeyPatch.context() as patch:
        construction_cache.install(patch)
        yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    require(SHARED.is_dir(), f"the reference pack is missing: expected {SHARED} beside the checkout")
    return SHARED


AUDIT_MONTHS_SINCE = audit_partitions.Month(2025, 1)
"""The first month the tests record audit events in: ``tests/audit/factories.T0`` (2025-03) and the
console's fixed periods (2025-01 to 2025-06). ``db upgrade`` creates partitions from the current month on."""


def migrate(url: str) -> None:
    """``db upgrade``, and on PostgreSQL the audit partitions of every month since ``AUDIT_MONTHS_SINCE``."""
    upgrade(url)
    engine = make_engine(url)
    try:
        audit_partitions.ensure(engine, now=datetime.now(UTC), since=AUDIT_MONTHS_SINCE)
    finally:
        engine.dispose()


def _postgres_database() -> Iterator[str]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")  # gw0, gw1, ... under pytest-xdist
    name = f"dho_test_{worker}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        # A commit returns without waiting for its WAL flush (4-6 ms on this disk, several per request):
        # every session sees committed rows exactly as before; only a crash of the PostgreSQL server
        # itself could lose the last commits, and no test crashes the shared server. Set on this test
        # database only (servers the tests start connect to it and inherit it), never server-wide.
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
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
        migrate(url)
        construction_cache.share(url)
        yield url
        construction_cache.dispose(url)
    else:
        gen = _postgres_database()
        url = next(gen)
        migrate(url)
        construction_cache.share(url)
        yield url
        construction_cache.dispose(url)
        gen.close()


_DELETES: dict[str, str] = {}


def empty_tables(url: str) -> None:
    """Delete every row of every table in one round trip (27 statements sent as one), on a pooled
    connection of the session database's shared engine (tests/construction_cache.py)."""
    with construction_cache.engine_for(url).connect() as conn:
        deletes = _DELETES.get(conn.dialect.name)
        if deletes is None:
            tables = reversed(metadata.sorted_tables)
            deletes = _DELETES[conn.dialect.name] = " ".join(f"{t.delete().compile(conn)};" for t in tables)
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        if conn.dialect.name == "postgresql":  # past the audit tables' append-only triggers (0004)
            with dbapi.cursor() as cur:  # statements without parameters: one simple query
                cur.execute(f"SET LOCAL session_replication_role = replica; {deletes}")
            dbapi.commit()
        else:
            dbapi.executescript(f"BEGIN IMMEDIATE; {deletes} COMMIT;")  # type: ignore[attr-defined]


def empty_observations(services: Services) -> None:
    """Remove every observation (not the tenants), for tests that reset data between examples."""
    from sharing_api.store import schema

    with services.engine.begin() as conn:
        for table in (schema.observations, schema.observation_history, schema.observation_tokens):
            conn.execute(table.delete())
        conn.execute(schema.observation_identifiers.delete())


@pytest.fixture
def redis_url() -> str:
    """The tests' Redis database. Not flushed: every key the app writes is random (cursors, jtis) or
    expires within minutes, so concurrent test runs on one machine cannot disturb each other."""
    redis.Redis.from_url(REDIS_URL).ping()
    return REDIS_URL


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One signing-key file for the session (generated by the app on first use)."""
    return tmp_path_factory.mktemp("keys") / "signing-keys.json"


@pytest.fixture
def settings(database_url: str, redis_url: str, signing_keys: Path) -> Settings:
    empty_tables(database_url)
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        public_url="https://dho.example.test",  # type: ignore[arg-type]
        signing_keys_path=signing_keys,
        rate_limit=100_000,  # the rate limiter has its own tests; the suite must not trip it
        audit_key_path=signing_keys.parent / "audit-key.pem",
        audit_self_access_key_path=signing_keys.parent / "audit-self-access.key",
        audit_sequencer_interval=0,  # tests sequence explicitly (services.audit_log.drain())
        subscription_delivery_interval=0,  # tests deliver explicitly (services.delivery.step(now))
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    svc: Services = app.extensions["dho"]
    svc.tenants.add(TENANT_A, "Kommune A")
    svc.tenants.add(TENANT_B, "Kommune B")
    for controller in (TENANT_A, TENANT_B):
        for consumer in (HOSPITAL, OTHER_HOSPITAL):
            svc.policy.add_agreement(
                controller=controller,
                consumer=consumer,
                categories=frozenset({"vital-signs", "survey"}),
                purposes=frozenset(PurposeOfUse),
                valid_from=datetime(2020, 1, 1, tzinfo=UTC),
            )
    yield app
    if not construction_cache.is_shared(svc.engine):
        svc.engine.dispose()


@pytest.fixture
def services(app: Flask) -> Services:
    svc: Services = app.extensions["dho"]
    return svc


@pytest.fixture
def client(app: Flask, services: Services) -> ApiClient:
    """The API as a real client system sees it: tokens from the token endpoint, a DPoP proof per request."""
    return ApiClient(app.test_client(), services)
