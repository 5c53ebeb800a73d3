"""Stopping a node as deploy/ does (SIGTERM to ``dho-share serve``'s main process: systemd with
``KillMode=mixed``, ``docker stop``): granian stops accepting at once, and a request already in flight
is still answered, its audit record committed, before the node exits."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select, text

from auth.client import DhoClient, dpop_proof
from sharing_api.services import Services
from sharing_api.serving import GRACE_SECONDS
from sharing_api.settings import Settings
from sharing_api.store.schema import audit_entries
from tests.api_client import WRITE, ApiClient
from tests.api_nodes import start_api, wait_ready
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import free_port
from tests.security.helpers import server_env

pytestmark = pytest.mark.slow  # runs granian


def refuses_connections(port: int) -> bool:
    """Whether the port is closed: refused, or reset while the listener was closing under the
    handshake (the connection was half made when the listening socket went)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def audit_events_naming(services: Services, correlation_id: str) -> list[dict[str, object]]:
    with services.engine.connect() as conn:
        events = [orjson.loads(e) for (e,) in conn.execute(select(audit_entries.c.event))]
    return [e for e in events if correlation_id in orjson.dumps(e).decode()]


def test_sigterm_lets_a_request_in_flight_finish_and_its_audit_commit(
    client: ApiClient, settings: Settings, services: Services, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**server_env(settings), "DHO_PUBLIC_URL": base}
    node = start_api(env, port, log, options=("--server", "granian"))
    try:
        wait_ready(base, log)
        publisher = client.parties[f"publisher-{TENANT_A}"]
        writer = DhoClient(base, publisher.client_id, publisher.key, WRITE)
        token = writer.access_token()
        path = f"/{TENANT_A}/fhir/Observation"
        proof = dpop_proof(writer.dpop_key, method="POST", url=base + path, access_token=token)
        body = orjson.dumps(heart_rate(fnr(), value=71))
        cid = uuid.uuid4().hex
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: DPoP {token}\r\n"
            f"DPoP: {proof}\r\nX-Request-ID: {cid}\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head.encode())
            # The server asks for the body only once the app reads it: the request is in a worker's thread.
            assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue"), log.read_text()[-3000:]
            node.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while not refuses_connections(port):  # the node has begun to stop
                assert time.monotonic() < deadline, "still accepting 10 s after SIGTERM"
                time.sleep(0.02)
            sock.sendall(body)
            answer = read_response(sock)
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 201 Created", answer[:500]
        assert b"connection: close" in rest.lower()  # answered while stopping
        assert node.wait(timeout=30) == 0
        created = orjson.loads(rest.split(b"\r\n\r\n", 1)[1])
        (event,) = audit_events_naming(services, cid)  # committed before the 201 left
        assert created["id"] in orjson.dumps(event).decode()
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=20)


def backends_waiting_on_a_lock(services: Services) -> int:
    with services.engine.connect() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(conn.execute(query).scalar_one())


def test_sigterm_stops_workers_still_loading_the_app_without_waiting_out_the_grace(
    settings: Settings, services: Services, tmp_path: Path
) -> None:
    """A node stopped while its workers still load the app (as after a deploy, or a respawn) stops at
    once: before, such a worker kept the main process's signal handler until it served, so the SIGTERM
    went nowhere and granian killed it only after the grace, saying so in its log."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("the workers are held in their start by a PostgreSQL table lock")
    port = free_port()
    log = tmp_path / "server.log"
    env = {**server_env(settings), "DHO_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    # Each worker checks the migration (alembic_version) while it builds the app: held here, as a
    # migration running while a node starts would hold it.
    with services.engine.connect() as lock:
        lock.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
        node = start_api(env, port, log, options=("--server", "granian"))
        try:
            deadline = time.monotonic() + 60
            while backends_waiting_on_a_lock(services) < 2:  # both workers are loading the app
                assert node.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            node.send_signal(signal.SIGTERM)
            assert node.wait(timeout=GRACE_SECONDS + 20) == 0
        finally:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=20)
        lock.rollback()
    assert "refused to gracefully stop" not in log.read_text()  # granian's words when it kills a worker
    # The workers' sessions end with them: a backend waiting on the lock notices its client gone only
    # when the lock is granted (the rollback above), so it may show as waiting a moment longer.
    deadline = time.monotonic() + 10
    while (waiting := backends_waiting_on_a_lock(services)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiting == 0, f"{waiting} backends still wait on the lock after the node stopped"
