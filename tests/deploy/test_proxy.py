"""The nginx front in deploy/nginx/ (its own snippets, on loopback) in front of gunicorn (issue 13):
slow clients do not starve other clients, and an oversized body gets 413 at the front."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sharing_api.settings import Settings
from tests.live_server import live_server
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
