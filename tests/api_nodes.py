"""API nodes as separate processes (``dho-share serve``, granian unless told) for proxy and failover tests:
unlike tests/live_server.py the caller chooses ``DHO_PUBLIC_URL`` (the proxy's address) and may kill the
whole node (own session: master and workers at once)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import requests

from tests.live_server import serve_command


def start_api(
    env: dict[str, str], port: int, log: Path, options: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """``dho-share serve`` with two workers on ``port`` (and ``options``, e.g. ``--server gunicorn``)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            serve_command(port, 2, options),
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
            start_new_session=True,  # the whole node (master and workers) can be killed at once
        )


def wait_ready(url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} did not become ready: {log.read_text()[-3000:]}"
        time.sleep(0.2)
