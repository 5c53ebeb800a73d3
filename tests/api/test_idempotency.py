"""Idempotent ingest under concurrency: 50 identical creates leave one row, and every answer names it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from auth.client import DhoClient
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.api.test_examples import count_rows
from tests.api_client import WRITE, ApiClient
from tests.conftest import TENANT_A
from tests.factories import batch, fnr, heart_rate
from tests.live_server import live_server

BASE = f"/{TENANT_A}/fhir"


def test_fifty_concurrent_identical_creates_store_one(client: ApiClient, services: Services) -> None:
    obs = heart_rate(fnr(), identifier="race-1")
    client.token(client.parties[f"publisher-{TENANT_A}"])  # one token for all fifty

    def post(_: int) -> tuple[int, Any]:
        response = client.post(f"{BASE}/Observation", json=obs)
        return response.status_code, response.get_json()["id"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(post, range(50)))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] * 49 + [201]
    assert len({i for _, i in results}) == 1
    assert count_rows(services) == 1


def test_concurrent_identical_batches_store_each_entry_once(client: ApiClient, services: Services) -> None:
    patient = fnr()
    bundle = batch(*[heart_rate(patient, identifier=f"rb-{i}") for i in range(10)])
    client.token(client.parties[f"publisher-{TENANT_A}"])

    def post(_: int) -> list[str]:
        body = client.post(BASE, json=bundle).get_json()
        return [e["response"]["location"] for e in body["entry"]]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(post, range(8)))
    assert all(r == results[0] for r in results)
    assert count_rows(services) == 10


@pytest.mark.slow
def test_fifty_concurrent_creates_across_server_workers(
    client: ApiClient, settings: Settings, services: Services, tmp_path: Path
) -> None:
    """The same race across processes: `dho-share serve` (granian), two workers, the session's database,
    real Redis."""
    env = {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
    }
    publisher = client.parties[f"publisher-{TENANT_A}"]
    obs = heart_rate(fnr(), identifier="race-workers")
    with live_server(env, workers=2, log=tmp_path / "server.log") as base:
        http = DhoClient(issuer=base, client_id=publisher.client_id, client_key=publisher.key, scope=WRITE)
        http.access_token()

        def post(_: int) -> tuple[int, str]:
            response = http.request("POST", f"{base}{BASE}/Observation", json=obs)
            return response.status_code, response.json()["id"]

        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(post, range(50)))
    assert sorted(s for s, _ in results) == [200] * 49 + [201]
    assert len({i for _, i in results}) == 1
    assert count_rows(services) == 1
