"""DPOP-12 and CLA-05 under real concurrency: one DPoP proof, and one client assertion, each sent 50 times
at once to gunicorn with two workers sharing one Redis. Exactly one of each may succeed: the replay check
is one atomic ``SET NX EX`` in Redis, not a per-process cache and not a read-then-write.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from joserfc.jwk import ECKey

from auth.client import ASSERTION_TYPE, DhoClient, attestation, client_assertion, dpop_proof
from sharing_api.fhir.identifiers import FNR
from sharing_api.settings import Settings
from tests.api_client import READ, ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import live_server
from tests.security.helpers import server_env

pytestmark = pytest.mark.slow

COPIES = 50
WORKERS = 2


def gunicorn_processes(base: str) -> int:
    """How many processes serve ``base`` (the gunicorn master and its workers share the command line)."""
    marker = f"--port\x00{base.rsplit(':', 1)[1]}\x00".encode()
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    count += 1
            except OSError:
                continue
    return count


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with live_server(server_env(settings), workers=WORKERS, log=tmp_path / "server.log") as base:
        assert gunicorn_processes(base) >= 1 + WORKERS
        yield base


def all_at_once(send: Any) -> list[requests.Response]:
    """Call ``send()`` from 50 threads released together by a barrier."""
    barrier = threading.Barrier(COPIES)

    def one(_: int) -> requests.Response:
        barrier.wait(timeout=30)
        response: requests.Response = send()
        return response

    with ThreadPoolExecutor(max_workers=COPIES) as pool:
        return list(pool.map(one, range(COPIES)))


def test_dpop_12_same_proof_50_times_concurrently_across_workers_succeeds_once(
    client: ApiClient, server: str
) -> None:
    patient = fnr()
    created = client.post(f"/{TENANT_A}/fhir/Observation", json=heart_rate(patient, value=71.5))
    assert created.status_code == 201
    url = f"{server}/{TENANT_A}/fhir/Observation/{created.get_json()['id']}"
    hospital = client.parties["hospital"]
    http = DhoClient(
        issuer=server,
        client_id=hospital.client_id,
        client_key=hospital.key,
        scope=READ,
        attestation=attestation(
            legal_entity=hospital.orgnr, point_of_care=hospital.point_of_care or "", patient=(FNR, patient)
        ),
    )
    token = http.access_token()
    proof = dpop_proof(http.dpop_key, method="GET", url=url, access_token=token)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}

    responses = all_at_once(lambda: requests.get(url, headers=headers, timeout=30))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 401: COPIES - 1}, statuses
    for response in responses:
        if response.status_code == 401:
            assert 'error="invalid_dpop_proof"' in response.headers["WWW-Authenticate"]
            assert patient not in response.text
    # Sanity: the same token with a fresh proof still works.
    assert http.request("GET", url).status_code == 200


def test_cla_05_same_assertion_50_times_concurrently_across_workers_succeeds_once(
    client: ApiClient, server: str
) -> None:
    hospital = client.parties["hospital"]
    token_url = f"{server}/connect/token"
    assertion = client_assertion(hospital.key, client_id=hospital.client_id, issuer=server)
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    dpop_key = ECKey.generate_key("P-256", private=True)
    # A distinct, valid proof per copy: only the assertion is replayed.
    proofs = iter([dpop_proof(dpop_key, method="POST", url=token_url) for _ in range(COPIES)])
    lock = threading.Lock()

    def send() -> requests.Response:
        with lock:
            proof = next(proofs)
        return requests.post(token_url, data=form, headers={"DPoP": proof}, timeout=30)

    started = time.monotonic()
    responses = all_at_once(send)
    assert time.monotonic() - started < 30  # the assertion (30 s life) was live for every copy

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 401: COPIES - 1}, statuses
    errors = Counter(r.json().get("error") for r in responses if r.status_code != 200)
    assert errors == {"invalid_client": COPIES - 1}
    # Sanity: a fresh assertion works.
    fresh = {**form, "client_assertion": client_assertion(hospital.key, client_id="hospital", issuer=server)}
    assert (
        requests.post(
            token_url,
            data=fresh,
            headers={"DPoP": dpop_proof(dpop_key, method="POST", url=token_url)},
            timeout=30,
        ).status_code
        == 200
    )
