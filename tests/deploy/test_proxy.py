"""The nginx front in deploy/nginx/ (its own snippets, on loopback) in front of gunicorn (issue 13):
slow clients do not starve other clients, and an oversized body gets 413 at the front."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from requests.adapters import HTTPAdapter
from sqlalchemy import select

from auth.client import ASSERTION_TYPE, attestation, client_assertion, dpop_proof
from auth.server import TOKEN_PATH
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store.schema import audit_entries
from tests.api_client import ApiClient
from tests.api_nodes import start_api, wait_ready
from tests.auth import factories
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import free_port, live_server
from tests.nginx_front import NginxFront

pytestmark = pytest.mark.slow  # runs gunicorn and nginx

SLOW_CLIENTS = 20
OTHER_REQUESTS = 10
PATIENCE = 5  # seconds an ordinary client waits for each answer


@pytest.fixture
def front(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, NginxFront]]:
    env = {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
        "DHO_AUDIT_KEY_PATH": str(settings.audit_key_path),
    }
    # One worker, as `dho-share serve --workers 1` runs it: 4 threads, fewer than the slow clients.
    with live_server(env, workers=1, log=tmp_path / "server.log") as base:
        nginx = NginxFront([int(base.rsplit(":", 1)[1])]).start()
        try:
            yield base, nginx
        finally:
            nginx.stop()


CLIENT_ADDRESS = "127.0.0.2"
"""The address the tests' client connects from: another loopback address than the proxy's, so the audit
log can tell the client from the proxy."""


class FromAddress(HTTPAdapter):
    """Connections from :data:`CLIENT_ADDRESS`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (CLIENT_ADDRESS, 0)
        super().init_poolmanager(*args, **kwargs)


def client_session() -> requests.Session:
    session = requests.Session()
    session.mount("http://", FromAddress())
    return session


def audited_source(services: Services, correlation_id: str) -> str:
    """The client agent's network address of the one audit event of request ``correlation_id``."""
    with services.engine.connect() as conn:
        events = [orjson.loads(e) for (e,) in conn.execute(select(audit_entries.c.event))]
    mine = [e for e in events if correlation_id in orjson.dumps(e).decode()]
    assert len(mine) == 1, f"{len(mine)} audit events for one request"
    (address,) = [
        a["network"]["address"] for a in mine[0]["agent"] if a.get("network", {}).get("type") == "2"
    ]
    return str(address)


def test_slow_clients_do_not_starve_others_behind_the_front(
    app: object, front: tuple[str, NginxFront]
) -> None:
    _, nginx = front
    stop = threading.Event()
    sockets = []
    for _ in range(SLOW_CLIENTS):
        s = socket.create_connection(("127.0.0.1", nginx.port), timeout=PATIENCE)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sockets.append(s)

    def dribble() -> None:
        while not stop.wait(0.5):
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.sendall(b"X-Slow: 1\r\n")

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    try:
        answers = [
            requests.get(nginx.url + "/healthz", timeout=PATIENCE).status_code for _ in range(OTHER_REQUESTS)
        ]
    finally:
        stop.set()
        thread.join()
        for s in sockets:
            s.close()
    assert answers == [200] * OTHER_REQUESTS


def test_oversized_body_is_refused_at_the_front(app: object, front: tuple[str, NginxFront]) -> None:
    _, nginx = front
    response = requests.post(
        nginx.url + "/921234562/fhir/Observation",
        data=b"x" * (6 * 1024 * 1024),
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert response.status_code == 413


@pytest.fixture
def fronted_node(settings: Settings, app: object, tmp_path: Path) -> Iterator[NginxFront]:
    """One API node whose DHO_PUBLIC_URL is the nginx front's address, as deployed."""
    port = free_port()
    nginx = NginxFront([port])
    env = {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
        "DHO_AUDIT_KEY_PATH": str(settings.audit_key_path),
        "DHO_PUBLIC_URL": nginx.url,
        "DHO_TRUSTED_PROXIES": "127.0.0.1/32",  # nginx reaches the node from 127.0.0.1
    }
    log = tmp_path / "api.log"
    node = start_api(env, port, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", log)
        yield nginx.start()
    finally:
        nginx.stop()
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=20)


def test_forwarding_headers_cannot_choose_the_dpop_htu(client: ApiClient, fronted_node: NginxFront) -> None:
    """DPOP-17 through the deployed front: a proof made for a URL the client names in Host /
    X-Forwarded-* / Forwarded is refused; only the configured public URL counts."""
    patient = fnr()
    created = client.post(f"/{TENANT_A}/fhir/Observation", json=heart_rate(patient))
    assert created.status_code == 201
    public = fronted_node.url
    party = client.parties["hospital"]
    form = {
        "grant_type": "client_credentials",
        "scope": " ".join(sorted(party.scopes)),
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(
            party.key,
            client_id=party.client_id,
            issuer=public,
            assertion_details=attestation(
                legal_entity=party.orgnr,
                point_of_care=party.point_of_care or party.orgnr,
                patient=(FNR, patient),
            ),
        ),
    }
    proof = dpop_proof(client.dpop_key, method="POST", url=public + TOKEN_PATH)
    issued = requests.post(public + TOKEN_PATH, data=form, headers={"DPoP": proof}, timeout=20)
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    path = f"/{TENANT_A}/fhir/Observation/{created.get_json()['id']}"
    evil = "https://evil.example"
    chosen = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
        "Forwarded": "host=evil.example;proto=https",
    }

    def read(htu: str) -> requests.Response:
        proof = factories.make_proof(
            client.dpop_key, method="GET", url=htu + path, iat=int(time.time()), access_token=token
        )
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof, **chosen}
        return requests.get(public + path, headers=headers, timeout=20)

    refused = read(evil)
    assert refused.status_code == 401, refused.text
    assert "htu" in refused.headers.get("WWW-Authenticate", "")
    assert read(public).status_code == 200  # the same headers, a proof for the configured URL

    # The audit log names the client, not the proxy, and no client chooses what it names: nginx
    # overwrites X-Forwarded-For, and the node believes it only from the proxy (DHO_TRUSTED_PROXIES).
    session = client_session()
    spoofed = {**chosen, "X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}
    for base in (public, f"http://127.0.0.1:{fronted_node.upstreams[0]}"):  # the front, then the node
        cid = uuid.uuid4().hex
        proof = factories.make_proof(
            client.dpop_key, method="GET", url=public + path, iat=int(time.time()), access_token=token
        )
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof, "X-Request-ID": cid, **spoofed}
        answer = session.get(base + path, headers=headers, timeout=20)
        assert answer.status_code == 200, answer.text
        assert audited_source(client.services, cid) == CLIENT_ADDRESS, base
