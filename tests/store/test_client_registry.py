"""The client registry's short memory for the token endpoint (issue 12): a record read by this process
is reused for at most ``max_age`` seconds; a change made through this registry is seen at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from joserfc.jwk import ECKey
from sqlalchemy import Engine, event

from sharing_api.store.clients import CLIENT_RECORD_MAX_AGE, ClientRecord, ClientRegistry
from sharing_api.store.engine import make_engine
from tests.conftest import empty_tables

ORGNR = "974760673"
SCOPES = frozenset({"dho-share/observation.read"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    empty_tables(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def worker(engine: Engine, clock: Clock) -> ClientRegistry:
    """The registry of the worker that answers token requests."""
    return ClientRegistry(engine, clock=clock)


@pytest.fixture
def elsewhere(engine: Engine) -> ClientRegistry:
    """Another process's registry: ``dho-share clients ...`` or another worker."""
    return ClientRegistry(engine)


def jwks() -> dict[str, Any]:
    return {"keys": [ECKey.generate_key("P-256", private=True).as_dict(private=False)]}


def client_queries(engine: Engine) -> list[str]:
    """Statements on the clients table run on ``engine`` from now on (did a lookup read the database?)."""
    seen: list[str] = []

    def record(*args: object) -> None:
        if "FROM clients" in str(args[2]):
            seen.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    return seen


def test_a_change_made_elsewhere_is_seen_once_the_record_is_max_age_old(
    worker: ClientRegistry, elsewhere: ClientRegistry, clock: Clock
) -> None:
    elsewhere.add("hospital", orgnr=ORGNR, jwks=jwks(), scopes=SCOPES)
    record = worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    assert record is not None
    assert record.enabled
    assert elsewhere.set_enabled("hospital", False)
    clock.now += CLIENT_RECORD_MAX_AGE
    refreshed = worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    assert refreshed is not None
    assert not refreshed.enabled


def test_a_key_rotated_elsewhere_is_seen_once_the_record_is_max_age_old(
    worker: ClientRegistry, elsewhere: ClientRegistry, clock: Clock
) -> None:
    elsewhere.add("hospital", orgnr=ORGNR, jwks=jwks(), scopes=SCOPES)
    worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    rotated = jwks()
    elsewhere.add("hospital", orgnr=ORGNR, jwks=rotated, scopes=SCOPES)
    clock.now += CLIENT_RECORD_MAX_AGE
    record = worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    assert record is not None
    assert record.jwks == rotated


def test_a_record_younger_than_max_age_is_reused_without_a_query(
    worker: ClientRegistry, engine: Engine, clock: Clock
) -> None:
    worker.add("hospital", orgnr=ORGNR, jwks=jwks(), scopes=SCOPES)
    first = worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    seen = client_queries(engine)
    clock.now += CLIENT_RECORD_MAX_AGE / 2
    assert worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE) == first
    assert seen == []
    worker.get("hospital")  # max_age 0 (the default): always read
    assert len(seen) == 1


def test_changes_through_the_same_registry_are_seen_at_once(worker: ClientRegistry) -> None:
    worker.add("hospital", orgnr=ORGNR, jwks=jwks(), scopes=SCOPES)
    worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    assert worker.set_enabled("hospital", False)
    disabled = worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    assert disabled is not None
    assert not disabled.enabled
    rotated = jwks()
    worker.add("hospital", orgnr=ORGNR, jwks=rotated, scopes=SCOPES)
    record = worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    assert record is not None
    assert record.jwks == rotated


def test_an_unknown_client_is_not_remembered(worker: ClientRegistry, elsewhere: ClientRegistry) -> None:
    assert worker.get("newcomer", max_age=CLIENT_RECORD_MAX_AGE) is None
    elsewhere.add("newcomer", orgnr=ORGNR, jwks=jwks(), scopes=SCOPES)
    assert worker.get("newcomer", max_age=CLIENT_RECORD_MAX_AGE) is not None


def test_a_read_that_raced_a_local_change_is_not_kept(engine: Engine, clock: Clock) -> None:
    """A lookup that read the row just before this registry changed it must not keep the old row."""

    class Racing(ClientRegistry):
        raced = False

        def _record(self, row: Any) -> ClientRecord:
            if not self.raced:  # the change lands after the SELECT read the old row
                self.raced = True
                self.set_enabled("hospital", False)
            return super()._record(row)

    worker = Racing(engine, clock=clock)
    worker.add("hospital", orgnr=ORGNR, jwks=jwks(), scopes=SCOPES)
    stale = worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    assert stale is not None
    assert stale.enabled
    record = worker.get("hospital", max_age=CLIENT_RECORD_MAX_AGE)
    assert record is not None
    assert not record.enabled
