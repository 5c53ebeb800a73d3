"""A private PostgreSQL cluster on a free loopback port, for tests that stop, crash or promote it.

Never the shared server on 5432: the cluster lives in its own temporary directory and is removed
afterwards. The binaries come from ``/usr/lib/postgresql/<version>/bin`` (``pg_config --bindir``);
``initdb`` and ``postgres`` refuse to run as root, so as root every command runs via ``runuser -u
postgres`` in a directory owned by that user (``../shared/spec/scaleout.md`` §1).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.live_server import free_port
from tests.prerequisites import require


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PrivatePostgres:
    """One cluster: ``start()``, ``stop(mode)``, ``url(db)``; ``standby_of(primary)`` makes a streaming
    replica with ``pg_basebackup -R``; ``promote()`` turns a standby into a primary."""

    def __init__(self, root: Path | None = None, *, port: int | None = None) -> None:
        bindir = postgres_bindir()
        require(
            bindir is not None, "PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin)"
        )
        assert bindir is not None
        self.bin = bindir
        self.root = root or Path(tempfile.mkdtemp(prefix="dho-pg-"))
        self.owns_root = root is None
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / f"data-{id(self)}"
        self.port = port or free_port()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            _as_postgres([str(self.bin / args[0]), *args[1:]]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )

    def init(self, *settings: str) -> PrivatePostgres:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.root}'",
            "fsync = on",
            "wal_level = replica",
            "max_wal_senders = 5",
            *settings,
        ]
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n".join(conf) + "\n")
        with (self.data / "pg_hba.conf").open("a") as f:
            f.write("host replication postgres 127.0.0.1/32 trust\n")
        return self

    def standby_of(self, primary: PrivatePostgres) -> PrivatePostgres:
        self._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(self.data), "-R", "-X", "stream", "-c", "fast",
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(f"port = {self.port}\ncluster_name = 'standby{self.port}'\n")
        return self

    def start(self) -> PrivatePostgres:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / f"log-{self.port}"), "-w", "start")
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop("immediate")
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
