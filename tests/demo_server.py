"""``dho-share demo`` set up in a fresh directory and served on a free port, for tests that run the
client side (the command line, the README's Python) against it. Import ``demo`` into a test module to
use the module-scoped fixture."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.live_server import free_port, live_server

CLI = [sys.executable, "-m", "sharing_api.cli"]
DEMO_TENANT = "921234562"


@dataclass(frozen=True)
class Demo:
    directory: Path
    hospital: Path  # the hospital's profile (reads)
    municipality: Path  # the municipality's profile (publishes)
    patient: str  # a demo patient whose data the hospital may read
    database_url: str
    url: str  # the server's base URL
    printed: list[str]  # the commands the demo printed


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``dho-share demo --no-serve`` in a fresh directory, then its server on a free port."""
    directory = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DHO_DATABASE_URL"}
    env["DHO_REDIS_URL"] = REDIS_URL
    setup = subprocess.run(
        [*CLI, "demo", "--no-serve", "--patients", "3", "--days", "1", "--port", str(port)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    first_query = next(line for line in setup.stdout.splitlines() if line.startswith("dho-share query"))
    patient = first_query.split("--patient ")[1].split()[0]
    printed = [line for line in setup.stdout.splitlines() if line.startswith("dho-share ")]
    with live_server({"DHO_REDIS_URL": REDIS_URL}, workers=1, cwd=directory, port=port) as url:
        yield Demo(
            directory,
            directory / "var" / "demo" / "hospital.json",
            directory / "var" / "demo" / "municipality.json",
            patient,
            f"sqlite:///{directory / 'var' / 'dho-share.sqlite3'}",
            str(url),
            printed,
        )
