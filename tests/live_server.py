"""A real server for tests that need several processes: ``dho-share serve`` on a free port, under its
default HTTP server (granian; ``DHO_SERVER`` or ``options=("--server", ...)`` choose another)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from sharing_api.serving import GRACE_SECONDS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(port: int, workers: int, options: tuple[str, ...] = ()) -> list[str]:
    """The command line of ``dho-share serve`` on ``port`` of 127.0.0.1 with ``workers`` workers."""
    return [
        sys.executable,
        "-m",
        "sharing_api.cli",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        *options,
    ]


class LiveUrl(str):
    """The server's base URL; ``pid`` is the server's main process (granian's, gunicorn's master)."""

    pid: int


@contextmanager
def live_server(
    env: dict[str, str],
    *,
    workers: int = 2,
    log: Path | None = None,
    cwd: Path | None = None,
    port: int | None = None,
    options: tuple[str, ...] = (),
) -> Iterator[LiveUrl]:
    """Start ``dho-share serve`` with ``workers`` workers (and ``options``); yield its base URL; stop it
    afterwards."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, **env, "DHO_PUBLIC_URL": base}
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        serve_command(port, workers, options),
        env=full_env,
        stdout=out,
        stderr=out,
        cwd=cwd,
        start_new_session=True,  # if it will not stop, its workers are killed with it (no orphans)
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or workers still booting
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in 30 s")
            time.sleep(0.1)
        url = LiveUrl(base)
        url.pid = proc.pid
        yield url
    finally:
        proc.terminate()
        try:
            # The server lets requests in flight finish for GRACE_SECONDS, then kills its workers itself.
            # A granian worker stopped while it still loaded the app took all of it until serve reset its
            # stop signals (deploy/README.md, "Stopping"); past it, the whole session is killed.
            proc.wait(timeout=GRACE_SECONDS + 10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)  # reaped: no "subprocess is still running" warning later
        if log and out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]
