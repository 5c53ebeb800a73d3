"""The nginx front in deploy/nginx/ (its own snippets, on loopback) in front of ``dho-share serve``
(issue 13), under each HTTP server it offers (granian, which deploy/ runs, and gunicorn): slow clients,
trickling headers or a body, do not starve other clients; an oversized body gets 413 at the front;
forwarding headers cannot choose the DPoP ``htu`` or the audited address.

Without the front, granian (hyper) reads headers in its Rust event loop, so trickled headers hold no
Python thread (tested below), but a trickled *body* is read by the app's thread: 6 such clients held both
threads of a 2-thread granian for 40 s and more (granian has no body timeout). That, and that the API
beyond loopback needs TLS in front (``require_safe_bind``), is why deploy/ puts nginx before it."""

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
from sharing_api.serving import SERVERS
from sharing_api.settings import Settings
from sharing_api.store.schema import audit_entries
from tests.api_client import ApiClient
from tests.api_nodes import start_api, wait_ready
from tests.auth import factories
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import free_port, live_server
from tests.nginx_front import NginxFront

pytestmark = pytest.mark.slow  # runs the API server and nginx

SLOW_CLIENTS = 20
OTHER_REQUESTS = 10
PATIENCE = 5  # seconds an ordinary client waits for each answer


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    """The HTTP server ``dho-share serve --server`` runs behind the front."""
    return str(request.param)


def node_env(settings: Settings) -> dict[str, str]:
    return {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
        "DHO_AUDIT_KEY_PATH": str(settings.audit_key_path),
    }


@pytest.fixture
def front(settings: Settings, server: str, tmp_path: Path) -> Iterator[tuple[str, NginxFront]]:
    # One worker, as `dho-share serve --workers 1` runs it: 4 threads, fewer than the slow clients.
    options = ("--server", server)
    with live_server(node_env(settings), workers=1, log=tmp_path / "server.log", options=options) as base:
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


HEADERS_TRICKLED = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: 1\r\n")
"""A slowloris client: a request line, then one more header line every half second, never the end."""

BODY_TRICKLED = (
    b"POST /connect/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\ngrant_type=",
    b"x",
)
"""A slow body: complete headers of a token request announcing 100,000 bytes, then one byte every half
second. The token endpoint reads its form before it answers, so a server that passed this on at once
would hold a thread per client until the body ends."""


def others_answered_while_slow_clients_trickle(
    port: int, url: str, trickle: tuple[bytes, bytes]
) -> list[int]:
    """Open :data:`SLOW_CLIENTS` connections to ``port`` that send ``trickle[0]``, then ``trickle[1]``
    every half second; meanwhile ask ``url`` :data:`OTHER_REQUESTS` times. The answers' statuses (a
    timed-out request counts as 0)."""
    stop = threading.Event()
    sockets = []
    for _ in range(SLOW_CLIENTS):
        s = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
        s.sendall(trickle[0])
        sockets.append(s)

    def dribble() -> None:
        while not stop.wait(0.5):
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.sendall(trickle[1])

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    answers = []
    try:
        for _ in range(OTHER_REQUESTS):
            try:
                answers.append(requests.get(url, timeout=PATIENCE).status_code)
            except requests.Timeout:
                answers.append(0)
    finally:
        stop.set()
        thread.join()
        for s in sockets:
            s.close()
    return answers


def test_slow_clients_do_not_starve_others_behind_the_front(
    app: object, front: tuple[str, NginxFront]
) -> None:
    _, nginx = front
    answers = others_answered_while_slow_clients_trickle(nginx.port, nginx.url + "/healthz", HEADERS_TRICKLED)
    assert answers == [200] * OTHER_REQUESTS


def test_slow_bodies_do_not_starve_others_behind_the_front(
    app: object, front: tuple[str, NginxFront]
) -> None:
    """nginx reads a whole body before it opens an upstream request (proxy_request_buffering), so a
    body sent a byte at a time holds none of the server's threads."""
    _, nginx = front
    answers = others_answered_while_slow_clients_trickle(nginx.port, nginx.url + "/healthz", BODY_TRICKLED)
    assert answers == [200] * OTHER_REQUESTS


def test_trickled_headers_hold_no_granian_thread_without_the_front(
    app: object, settings: Settings, tmp_path: Path
) -> None:
    """granian parses headers in its Rust event loop: 20 clients trickling headers straight at a node
    of 1 worker x 4 threads leave the threads free. gunicorn reads headers in its threads: run so, it
    answered none of the 10 (deploy/README.md, "The HTTP server")."""
    options = ("--server", "granian")
    with live_server(node_env(settings), workers=1, log=tmp_path / "server.log", options=options) as base:
        port = int(base.rsplit(":", 1)[1])
        answers = others_answered_while_slow_clients_trickle(port, base + "/healthz", HEADERS_TRICKLED)
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
def fronted_node(settings: Settings, server: str, app: object, tmp_path: Path) -> Iterator[NginxFront]:
    """One API node (under ``server``) whose DHO_PUBLIC_URL is the nginx front's address, as deployed."""
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
    node = start_api(env, port, log, options=("--server", server))
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
