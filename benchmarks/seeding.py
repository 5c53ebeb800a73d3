"""Synthetic observations written straight into the store in bulk (``--scale``, ``--soak``), not over HTTP.

Every observation is generated (``sharing_api.seed``), validated as the API validates it, and written
with the rows the store's own ``create_many`` writes (``ObservationStore.new_rows``): on PostgreSQL by
``COPY`` (``sharing_api.store.bulk.copy_observations``) in transactions of ``BATCH``, from
``processes`` worker processes (each its own patients: identity numbers split by remainder), with the
tables' indexes and primary keys dropped for the load and built again after it (``--seed-indexes
rebuild``, the default) or kept; on SQLite by ``create_many`` in one process. The planner's statistics
are refreshed after every load (``ANALYZE``). A rich progress bar shows the rate.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import time
import traceback
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from benchmarks.environment import TENANT, Dataset
from sharing_api.fhir.dates import LOCAL_ZONE
from sharing_api.fhir.validation import Tenant, validate_observation
from sharing_api.seed import Patient, make_patient, series
from sharing_api.store import bulk
from sharing_api.store.engine import make_engine
from sharing_api.store.observations import ObservationStore
from sharing_api.store.tenants import TenantDirectory

console = Console(stderr=True)
BATCH = 5_000
"""Observations per transaction (and per progress report)."""


def _clock() -> int:
    return time.time_ns() // 1000


@dataclass
class Part:
    """What one worker process carries from one load to the next: its random state, the identity
    numbers it has used, and its patients whose whole series is stored."""

    index: int
    rng_state: Any
    seen: set[str] = field(default_factory=set)
    whole: list[Patient] = field(default_factory=list)
    patients: int = 0


@dataclass(frozen=True)
class Job:
    url: str
    tenant: Tenant
    days: int
    end: datetime
    count: int
    parts: int
    part: Part


def _people(job: Job, rng: random.Random) -> Any:
    part = job.part
    while True:
        person = make_patient(rng)
        if int(person.fnr) % job.parts != part.index or person.fnr in part.seen:
            continue
        part.seen.add(person.fnr)
        part.patients += 1
        yield person


def _write(store: ObservationStore, batch: list[dict[str, Any]], tenant: Tenant) -> None:
    valid = [validate_observation(r, tenant) for r in batch]
    with store.writing() as conn:
        if conn.dialect.name == "postgresql":
            bulk.copy_observations(conn, store, TENANT, [(str(uuid.uuid4()), v) for v in valid], _clock())
        else:
            store.create_many(conn, TENANT, valid)


def _work(job: Job, out: Any) -> None:
    """One worker process: ``job.count`` observations of whole series of new patients (the last one
    cut short), in transactions of ``BATCH``; reports ("n", count) per batch, then ("done", part)."""
    try:
        rng = random.Random()
        rng.setstate(job.part.rng_state)
        engine = make_engine(job.url, pool_size=1)
        store = ObservationStore(engine, _clock)
        people = _people(job, rng)
        written, batch = 0, list[dict[str, Any]]()
        while written + len(batch) < job.count:
            person = next(people)
            whole = True
            for resource in series(person, TENANT, job.days, rng, job.end):
                if written + len(batch) == job.count:
                    whole = False
                    break
                batch.append(resource)
                if len(batch) == BATCH:
                    _write(store, batch, job.tenant)
                    written += len(batch)
                    out.put(("n", len(batch)))
                    batch = []
            if whole:
                job.part.whole.append(person)
        if batch:
            _write(store, batch, job.tenant)
            out.put(("n", len(batch)))
        engine.dispose()
        job.part.rng_state = rng.getstate()
        out.put(("done", job.part))
    except BaseException:
        out.put(("error", traceback.format_exc()))
        raise


@dataclass
class Seeder:
    """Streams synthetic patients' series into the store; remembers whose series are complete."""

    url: str
    days: int
    seed: int
    processes: int = 2
    rebuild_indexes: bool = True
    end: datetime = field(default_factory=lambda: datetime.now(UTC))
    stored: int = 0
    seconds: float = 0.0
    index_seconds: float = 0.0
    """Of ``seconds``: dropping and building the indexes again, and ``ANALYZE``."""
    loads: list[tuple[int, float, float]] = field(default_factory=list)
    """(stored after, seconds, of which index rebuild and ANALYZE) per ``fill``."""

    def __post_init__(self) -> None:
        self.engine = make_engine(self.url)
        self.postgres = self.engine.dialect.name == "postgresql"
        if not self.postgres:
            self.processes = 1  # COPY is PostgreSQL's; SQLite has one writer at a time anyway
        record = TenantDirectory(self.engine).get(TENANT)
        assert record is not None
        self.tenant = record.validation
        self.parts = [
            Part(k, random.Random(f"{self.seed}-{k}-{self.processes}").getstate())
            for k in range(self.processes)
        ]

    @property
    def patient_count(self) -> int:
        return sum(p.patients for p in self.parts)

    @property
    def whole(self) -> list[Patient]:
        return [person for part in self.parts for person in part.whole]

    def fill(self, target: int) -> None:
        """Store observations until ``target`` are stored, then ``ANALYZE``."""
        todo = target - self.stored
        if todo <= 0:
            return
        began = time.monotonic()
        shares = [todo // self.processes + (k < todo % self.processes) for k in range(self.processes)]
        ctx = multiprocessing.get_context("spawn")  # no inherited connections in the workers
        out = ctx.Queue()
        jobs = [
            Job(self.url, self.tenant, self.days, self.end, n, self.processes, part)
            for n, part in zip(shares, self.parts, strict=True)
        ]
        indexes = bulk.deferred_indexes(self.engine) if self.postgres and self.rebuild_indexes else None
        with indexes or nullcontext():
            loaded = self._run(jobs, out, ctx, target)
            rebuild = time.monotonic()
            console.print(f"loaded {todo:,} in {rebuild - began:.0f} s; building indexes, ANALYZE ...")
        bulk.analyze(self.engine)
        done = time.monotonic()
        self.stored += loaded
        self.seconds += done - began
        self.index_seconds += done - rebuild
        self.loads.append((self.stored, done - began, done - rebuild))

    def _run(self, jobs: list[Job], out: Any, ctx: Any, target: int) -> int:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} obs/s"),
            TimeRemainingColumn(),
        )
        procs = [ctx.Process(target=_work, args=(job, out), daemon=True) for job in jobs]
        for proc in procs:
            proc.start()
        began, loaded, finished = time.monotonic(), 0, 0
        try:
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("seeding", total=target, completed=self.stored, rate="-")
                while finished < len(procs):
                    try:
                        message = out.get(timeout=5)
                    except queue.Empty:
                        if any(p.exitcode not in (None, 0) for p in procs):
                            raise RuntimeError("a seeding process died") from None
                        continue
                    if message[0] == "error":
                        raise RuntimeError(f"a seeding process failed:\n{message[1]}")
                    if message[0] == "done":
                        part: Part = message[1]
                        self.parts[part.index] = part
                        finished += 1
                        continue
                    loaded += message[1]
                    rate = loaded / max(time.monotonic() - began, 1e-9)
                    progress.update(task, advance=message[1], rate=f"{rate:,.0f}")
        finally:
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.terminate()
        return loaded

    def dataset(self) -> Dataset:
        first_day = (
            (self.end - timedelta(days=self.days))
            .astimezone(LOCAL_ZONE)
            .replace(hour=0, minute=0, second=0, microsecond=0)
        )
        return Dataset([], self.stored, self.whole, self.patient_count, first_day, self.days, self.seed, 0)

    def dispose(self) -> None:
        self.engine.dispose()
