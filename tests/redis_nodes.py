"""Private ``redis-server`` processes (data nodes, sentinels, cluster nodes) on free loopback ports,
configured per test under a temporary directory; never the shared Redis."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.live_server import free_port
from tests.prerequisites import require

RECOVERY_SECONDS = 30


def eventually(check: Callable[[], Any], seconds: float = RECOVERY_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


class Node:
    """A ``redis-server`` (data node or sentinel) on a free port, config written under ``tmp``."""

    def __init__(
        self, tmp: Path, lines: list[str], *, sentinel: bool = False, port: int | None = None
    ) -> None:
        require(shutil.which("redis-server"), "redis-server is not installed")
        self.port = port or free_port()
        self.dir = tmp / str(self.port)
        self.dir.mkdir(exist_ok=True)
        conf = self.dir / "redis.conf"
        base = [f"port {self.port}", "bind 127.0.0.1", "protected-mode no", f"dir {self.dir}", 'save ""']
        if not sentinel:
            base += ["appendonly no", "repl-diskless-sync-delay 0", "maxmemory-policy noeviction"]
        conf.write_text("\n".join(base + lines) + "\n")
        cmd = ["redis-server", str(conf)] + (["--sentinel"] if sentinel else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=0.5)
        if not eventually(self._ping, 30):
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"redis-server did not start on {self.port}")

    def _ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
