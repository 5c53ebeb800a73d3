"""``dho-share serve --reuse-port``: a listening socket per worker, so that the kernel, rather than
whichever worker wakes first, hands new connections to the workers (BENCHMARKS.md, "Worker shapes")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from sharing_api.settings import Settings
from tests.live_server import free_port, live_server
from tests.security.helpers import server_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp"),
]

LISTEN = "0A"  # a listening socket's state in /proc/net/tcp


def listening_sockets(port: int) -> int:
    """How many IPv4 sockets listen on ``port`` (with SO_REUSEPORT, one per member of the group)."""
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return sum(1 for row in rows if row[3] == LISTEN and int(row[1].rsplit(":", 1)[1], 16) == port)


@pytest.mark.parametrize(("options", "sockets"), [((), 1), (("--reuse-port",), 2)])
def test_each_worker_has_its_own_listening_socket_with_reuse_port(
    settings: Settings, tmp_path: Path, options: tuple[str, ...], sockets: int
) -> None:
    port = free_port()
    options = (*options, "--server", "gunicorn")  # whatever DHO_SERVER says
    with live_server(server_env(settings), workers=2, port=port, options=options) as base:
        assert listening_sockets(port) == sockets
        for _ in range(20):  # a new connection each, answered on whichever socket it reached
            answer = requests.get(f"{base}/healthz", headers={"Connection": "close"}, timeout=10)
            assert answer.status_code == 200


def test_granian_refuses_reuse_port_rather_than_ignoring_it(settings: Settings) -> None:
    """granian's workers share one socket: ``--reuse-port`` with it is refused, naming the option."""
    env = {**os.environ, **server_env(settings), "DHO_PUBLIC_URL": "http://127.0.0.1:1"}
    command = [sys.executable, "-m", "sharing_api.cli", "serve", "--port", str(free_port())]
    done = subprocess.run(
        [*command, "--server", "granian", "--reuse-port"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "--reuse-port is a gunicorn option" in done.stderr


def test_granian_refuses_a_port_another_server_listens_on(settings: Settings) -> None:
    """granian binds its socket with ``SO_REUSEPORT``, so a second granian on a port in use would start
    and take a share of its connections; ``serve`` refuses instead, as gunicorn does."""
    env = {**os.environ, **server_env(settings)}
    port = free_port()
    with live_server(server_env(settings), workers=1, port=port, options=("--server", "granian")) as base:
        command = [sys.executable, "-m", "sharing_api.cli", "serve", "--port", str(port)]
        command += ["--server", "granian"]
        done = subprocess.run(
            command, env={**env, "DHO_PUBLIC_URL": base}, capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0
        assert f"127.0.0.1:{port} is in use" in done.stderr
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
