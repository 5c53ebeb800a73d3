"""``python -m benchmarks.copy_indexes``: a COPY bulk load with the indexes kept, against dropped and rebuilt.

The same observations (generated and validated once, as ``seeding.py`` does) are loaded twice into
fresh databases by ``bulk.copy_observations`` in transactions of ``seeding.BATCH``: once into the
migrated tables with their primary keys and indexes (``keep``), once with ``bulk.deferred_indexes``
(``rebuild``). Reported per mode: wall time and the PostgreSQL backend's CPU time (from /proc; the
index builds run without parallel workers, so all of it is that backend's), for the load and for the
rebuild. The observations are generated and validated beforehand; building their rows and sending
them (``copy_observations``) is in the load time of both modes.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
import uuid
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from benchmarks.environment import TENANT, fresh_database
from benchmarks.seeding import BATCH
from sharing_api.fhir.validation import ValidObservation, validate_observation
from sharing_api.seed import make_patient, series
from sharing_api.store import bulk
from sharing_api.store.engine import make_engine
from sharing_api.store.observations import ObservationStore
from sharing_api.store.tenants import TenantDirectory

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _items(count: int, days: int, seed: int, url: str) -> list[tuple[str, ValidObservation]]:
    engine = make_engine(url)
    record = TenantDirectory(engine).get(TENANT)
    engine.dispose()
    assert record is not None
    rng, end, out = random.Random(seed), datetime.now(UTC), []
    while len(out) < count:
        for resource in series(make_patient(rng), TENANT, days, rng, end):
            out.append((str(uuid.uuid4()), validate_observation(resource, record.validation)))
    return out[:count]


def _load(url: str, items: list[tuple[str, ValidObservation]], rebuild: bool) -> dict[str, float]:
    engine = make_engine(url, pool_size=1)
    store = ObservationStore(engine, lambda: 0)
    out: dict[str, Any] = {}
    with engine.connect() as probe:
        backend = int(probe.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    # The pool keeps that one connection: the load and the rebuild run in the backend measured.
    with engine.connect() as conn:
        conn.exec_driver_sql("SET max_parallel_maintenance_workers = 0")  # the session keeps it
        conn.commit()
    began, cpu = time.monotonic(), _cpu_seconds(backend)
    with bulk.deferred_indexes(engine) if rebuild else nullcontext():
        for at in range(0, len(items), BATCH):
            with store.writing() as conn:
                bulk.copy_observations(conn, store, TENANT, items[at : at + BATCH], 1)
        out["load_s"], out["load_cpu_s"] = time.monotonic() - began, _cpu_seconds(backend) - cpu
        began, cpu = time.monotonic(), _cpu_seconds(backend)
    out["rebuild_s"], out["rebuild_cpu_s"] = time.monotonic() - began, _cpu_seconds(backend) - cpu
    engine.dispose()
    return out


@click.command()
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True)
@click.option("--observations", default=100_000, show_default=True, type=click.IntRange(1))
@click.option("--days", default=180, show_default=True, type=click.IntRange(10))
@click.option("--seed", default=1, show_default=True)
def main(postgres_url: str, observations: int, days: int, seed: int) -> None:
    """Load the same observations by COPY with indexes kept and with indexes rebuilt after."""
    with tempfile.TemporaryDirectory(prefix="dho-bench-") as tmp:
        with fresh_database("postgresql", Path(tmp), postgres_url) as url:
            items = _items(observations, days, seed, url)
        for mode in ("keep", "rebuild"):
            with fresh_database("postgresql", Path(tmp), postgres_url) as url:
                load = os.getloadavg()[0]
                r = _load(url, items, mode == "rebuild")
                total, cpu = r["load_s"] + r["rebuild_s"], r["load_cpu_s"] + r["rebuild_cpu_s"]
                print(
                    f"| {mode} | {observations:,} | {r['load_s']:.1f} s ({r['load_cpu_s']:.1f} s CPU) | "
                    f"{r['rebuild_s']:.1f} s ({r['rebuild_cpu_s']:.1f} s CPU) | {total:.1f} s | "
                    f"{cpu / observations * 1e6:.1f} us | {load:.1f} |"
                )


if __name__ == "__main__":
    main()
