"""Fault injection: PostgreSQL stopped (immediate) under concurrent load (issue 13).

The API must answer 503 with ``Retry-After`` while the database is away (never 500), recover by itself
when it is back, and every 2xx answered around the outage must be durable: the observation a 201
created is stored, and every 2xx has its audit event (found by the request's correlation id).

The cluster is private (tests/private_postgres.py, a free port, a temporary directory); the shared
server on 5432 is never touched.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from flask import Flask
from sqlalchemy import select

from consent.model import PurposeOfUse
from sharing_api.app import create_app
from sharing_api.settings import Settings
from sharing_api.store.engine import upgrade
from sharing_api.store.schema import audit_entries, observation_identifiers
from tests.api_client import HOSPITAL, OTHER_HOSPITAL, ApiClient
from tests.conftest import TENANT_A, TENANT_B
from tests.private_postgres import PrivatePostgres
from tests.security.helpers import Probe, make_scene

pytestmark = pytest.mark.slow  # starts and stops a PostgreSQL cluster

THREADS = 4
BEFORE, DURING, AFTER = 8, 6, 8  # requests per thread in each phase


@pytest.fixture
def cluster() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().init()
    pg.start()
    yield pg
    pg.remove()


@pytest.fixture
def pg_app(settings: Settings, cluster: PrivatePostgres) -> Iterator[Flask]:
    url = cluster.create_database("dho")
    upgrade(url)
    app = create_app(settings.model_copy(update={"database_url": url}))
    svc = app.extensions["dho"]
    svc.tenants.add(TENANT_A, "Kommune A")
    svc.tenants.add(TENANT_B, "Kommune B")
    for consumer in (HOSPITAL, OTHER_HOSPITAL):
        svc.policy.add_agreement(
            controller=TENANT_A,
            consumer=consumer,
            categories=frozenset({"vital-signs", "survey"}),
            purposes=frozenset(PurposeOfUse),
            valid_from=datetime(2020, 1, 1, tzinfo=UTC),
        )
    yield app
    svc.engine.dispose()


def test_postgres_outage_answers_503_and_every_2xx_is_durable_and_audited(
    pg_app: Flask, cluster: PrivatePostgres
) -> None:
    services = pg_app.extensions["dho"]
    scene = make_scene(ApiClient(pg_app.test_client(), services), services)
    results: list[tuple[str, int, str, str | None, str]] = []  # phase, status, cid, identifier, retry
    lock = threading.Lock()
    phase = ["before"]
    barrier = threading.Barrier(THREADS + 1)

    def one(probe: Probe) -> None:
        cid = uuid.uuid4().hex
        headers = {**probe.headers(), "X-Request-ID": cid}
        identifier = None
        if probe.kind == "write":
            body = probe.fresh_body()
            identifier = body["identifier"][0]["value"]
            response = probe.send(headers, json=body)
        else:
            response = probe.send(headers)
        with lock:
            results.append(
                (phase[0], response.status_code, cid, identifier, response.headers.get("Retry-After", ""))
            )

    def worker(n: int) -> None:
        probe = scene.write if n % 2 else scene.read
        for count in (BEFORE, DURING, AFTER):
            for _ in range(count):
                one(probe)
            barrier.wait(timeout=120)  # the main thread changes the phase between the rounds
            barrier.wait(timeout=120)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    # Requests of the first round race the stop: the outage begins while they are in flight.
    cluster.stop("immediate")
    barrier.wait(timeout=120)
    phase[0] = "down"
    barrier.wait(timeout=120)
    barrier.wait(timeout=120)
    cluster.start()
    phase[0] = "after"
    barrier.wait(timeout=120)
    barrier.wait(timeout=120)
    phase[0] = "done"
    barrier.wait(timeout=120)
    for t in threads:
        t.join(timeout=120)

    statuses = {status for _, status, *_ in results}
    assert statuses <= {200, 201, 503}, f"unexpected statuses {sorted(statuses)}"
    assert all(int(retry) >= 1 for _, status, _, _, retry in results if status == 503)
    assert {s for p, s, *_ in results if p == "down"} == {503}, "requests while PostgreSQL was down"
    assert any(p == "after" and s in (200, 201) for p, s, *_ in results), "no recovery"

    ok = [r for r in results if r[1] in (200, 201)]
    with services.engine.connect() as conn:
        events = [bytes(e) for (e,) in conn.execute(select(audit_entries.c.event))]
        stored = {v for (v,) in conn.execute(select(observation_identifiers.c.value))}
    for _, status, cid, identifier, _ in ok:
        assert sum(cid.encode() in e for e in events) == 1, f"a {status} has no single audit event"
        if identifier is not None:
            assert identifier in stored, "a 201 write was lost"
