"""What a benchmark runs against: a fresh database, the API (``dho-share serve``), and synthetic data."""

from __future__ import annotations

import http.client
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import psycopg

from sharing_api.fhir.dates import LOCAL_ZONE
from sharing_api.fhir.identifiers import FNR
from sharing_api.seed import Patient, batches, make_patient, series
from sharing_api.serving import SERVERS
from sharing_api.store.engine import make_engine, upgrade
from sharing_api.store.tenants import TenantDirectory

TENANT = "921234562"  # synthetic org.nr with a valid control digit
HEART_RATE = "http://loinc.org|8867-4"  # measured morning and evening: two a day for every patient
HEART_RATE_CODE_ALONE = "8867-4"
"""The same searches' code without its system: a shape the patient token index does not lead, so its
page is planned with its values (``store.observations``, ``generic_plan``)."""
SEARCH_DAYS = 6  # so a search finds 12 heart rates
REDIS_URL = "redis://127.0.0.1:6379/13"


@contextmanager
def fresh_database(kind: str, workdir: Path, admin_url: str) -> Iterator[str]:
    """A new, migrated database with the benchmark tenant; a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'bench.sqlite3'}"
        _prepare(url)
        yield url
        return
    with private_database(admin_url) as url:
        yield url


@contextmanager
def private_database(admin_url: str, prefix: str = "dho_bench", digits: int = 12) -> Iterator[str]:
    """A new, migrated PostgreSQL database ``<prefix>_<hex>`` with the benchmark tenant, dropped
    afterwards (also when the run fails)."""
    name = f"{prefix}_{uuid.uuid4().hex[:digits]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"{admin_url.rsplit('/', 1)[0]}/{name}"
        _prepare(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _prepare(url: str) -> None:
    upgrade(url)
    engine = make_engine(url)
    TenantDirectory(engine).add(TENANT, "Benchmark kommune")
    engine.dispose()


def database_version(url: str) -> str:
    engine = make_engine(url)
    sqlite = url.startswith("sqlite")
    with engine.connect() as conn:
        version = conn.exec_driver_sql(
            "SELECT sqlite_version()" if sqlite else "SHOW server_version"
        ).scalar()
    engine.dispose()
    return f"{'SQLite' if sqlite else 'PostgreSQL'} {str(version).split()[0]}"


def analyze(url: str) -> None:
    """Refresh the planner's statistics after the bulk load (autovacuum would, a minute later)."""
    engine = make_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@dataclass(frozen=True)
class Server:
    port: int
    pid: int
    """The server's main process (gunicorn's master, granian's main); the workers are its children."""


@contextmanager
def api_server(
    database_url: str,
    workers: int,
    log: Path,
    threads: int = 4,
    reuse_port: bool = False,
    server: str = SERVERS[0],
) -> Iterator[Server]:
    """``dho-share serve --server <server>`` on a free loopback port; stopped afterwards."""
    port = _free_port()
    env = {
        **os.environ,
        "DHO_DATABASE_URL": database_url,
        "DHO_REDIS_URL": REDIS_URL,
        "DHO_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DHO_SEARCH_SESSION_TTL": "60",  # every search stores a cursor; let them expire soon
        "DHO_SIGNING_KEYS_PATH": str(log.parent / "signing-keys.json"),
        "DHO_AUDIT_KEY_PATH": str(log.parent / "audit-key.pem"),
        "DHO_RATE_LIMIT": "100000000",  # the load generator is one client; do not measure the 429s
    }
    command = [sys.executable, "-m", "sharing_api.cli", "serve", "--port", str(port)]
    with open(log, "wb") as out:
        argv = [*command, "--workers", str(workers), "--threads", str(threads), "--server", server]
        argv += ["--reuse-port"] if reuse_port else []
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 120
            while not _ready(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode} (its log is printed below)")
                if time.monotonic() > deadline:
                    raise RuntimeError("the server was not ready within 120 s (its log is printed below)")
                time.sleep(0.1)
            yield Server(port, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class Dataset:
    bundles: list[bytes]
    """Encoded batch Bundles."""
    observations: int
    patients: list[Patient]
    """Only patients whose whole series was published (the last one may have been cut short)."""
    patient_count: int
    first_day: datetime
    days: int
    seed: int
    bundle_size: int


def make_dataset(observations: int, bundle_size: int, days: int, seed: int) -> Dataset:
    """``observations`` measurements: whole series of ``days`` days for as many patients as it takes."""
    rng = random.Random(seed)
    end = datetime.now(UTC)
    people: list[Patient] = []
    seen: set[str] = set()

    def everyone() -> Iterator[dict[str, Any]]:
        while True:
            person = make_patient(rng)
            if person.fnr in seen:
                continue
            seen.add(person.fnr)
            people.append(person)
            yield from series(person, TENANT, days, rng, end)

    resources = list(islice(everyone(), observations))
    bundles = [orjson.dumps(b) for b in batches(iter(resources), bundle_size)]
    last = resources[-1]["subject"]["identifier"]["value"]
    whole = [p for p in people if p.fnr != last]
    if not whole:
        raise ValueError(
            f"{observations} observations do not fill one patient's {days} days: use fewer --days"
        )
    first_day = (
        (end - timedelta(days=days)).astimezone(LOCAL_ZONE).replace(hour=0, minute=0, second=0, microsecond=0)
    )
    return Dataset(bundles, len(resources), whole, len(people), first_day, days, seed, bundle_size)


def search_forms(data: Dataset, how_many: int, seed: int, code: str = HEART_RATE) -> list[bytes]:
    """Form bodies of ``how_many`` searches: a seeded patient, heart rate, a 6-day period (12 hits).

    ``code``: how the heart rate is named (``HEART_RATE_CODE_ALONE``: without its system)."""
    rng = random.Random(seed)
    forms = []
    for i in range(how_many):
        patient = data.patients[i % len(data.patients)]
        start = data.first_day + timedelta(days=rng.randrange(0, data.days - SEARCH_DAYS - 1))
        end = start + timedelta(days=SEARCH_DAYS)
        forms.append(
            urlencode(
                [
                    ("patient.identifier", f"{FNR}|{patient.fnr}"),
                    ("code", code),
                    ("date", f"ge{start:%Y-%m-%d}"),
                    ("date", f"lt{end:%Y-%m-%d}"),
                ]
            ).encode()
        )
    return forms
