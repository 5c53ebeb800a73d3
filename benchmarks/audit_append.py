"""``python -m benchmarks.audit_append``: do audited requests wait for each other on the audit log?

Issue 12 measured a median of 37 ms per audited request waiting on ``SELECT ... FROM audit_heads ...
FOR UPDATE`` under contention, and the sequencer rewriting every entry one statement at a time. This
benchmark appends from ``--threads`` threads at once on a fresh PostgreSQL database, each append its
own durable transaction as the request path commits it (``Auditor.record``), while ``--sequencers``
background sequencers run (one per API worker), in two designs in the same run:

* ``head-lock`` (before): every append takes the tenant's head row lock first (``SELECT ... FOR
  UPDATE``, what a request path that sequences in-line does), and the sequencers update each entry
  with its own statement and queue behind one another on the head;
* ``pending`` (this code): ``AuditLog.append`` (one INSERT, no shared lock); sequencers skip a head
  that another holds (``FOR UPDATE SKIP LOCKED``) and store a batch's indexes in one set-based UPDATE.

It prints, per design, the append latency (p50, p99, max), appends per second, and how long the
sequencers took to bring the tree level with the last append; then the time one sequencer takes to
sequence a backlog of ``--backlog`` entries with per-row and with set-based updates. Every run ends by
checking the log is dense and verifies against its checkpoints (``dho-share audit verify``'s check).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection, bindparam, select, update

from benchmarks.environment import TENANT, fresh_database
from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.events import build_audit_event
from sharing_api.audit.log import AuditLog, entry_row
from sharing_api.audit.verify import verify
from sharing_api.store import audit_partitions
from sharing_api.store.engine import make_engine
from sharing_api.store.schema import audit_checkpoints, audit_entries, audit_heads, audit_seq_claims
from tests.audit.factories import T0, facts

console = Console(stderr=True)


class HeadLockedLog(AuditLog):
    """The design before: appends serialise on the head row; one UPDATE statement per sequenced entry."""

    def append(self, conn: Connection, tenant: str, event: Any) -> int:
        conn.execute(select(audit_heads.c.size).where(audit_heads.c.tenant == tenant).with_for_update())
        return super().append(conn, tenant, event)

    def sequence(self, tenant: str | None = None, max_batch: int = 1000, *, wait: bool = True) -> int:
        return super().sequence(tenant, max_batch, wait=True)

    def _store_leaves(
        self,
        conn: Connection,
        tenant: str,
        ids: list[int],
        recorded: list[int],
        leaves: list[bytes],
        first: int,
    ) -> None:
        e = audit_entries
        stmt = (
            update(e)
            .where(e.c.id == bindparam("b_id"))
            .values(seq=bindparam("b_seq"), leaf=bindparam("b_leaf"))
        )
        rows = [
            {"b_id": i, "b_seq": first + n, "b_leaf": leaf}
            for n, (i, leaf) in enumerate(zip(ids, leaves, strict=True))
        ]
        if rows:
            conn.execute(stmt, rows)


def _events(count: int) -> list[dict[str, Any]]:
    return [build_audit_event(facts(n, tenant=TENANT)) for n in range(count)]


def _appends(log: AuditLog, events: list[dict[str, Any]], threads: int) -> tuple[list[float], float]:
    """Append ``events`` from ``threads`` threads, one durable transaction each.

    Returns the latencies (seconds) and the wall time."""
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [events[i::threads] for i in range(threads)]
    start = threading.Barrier(threads + 1)

    def work(chunk: list[dict[str, Any]]) -> None:
        mine = []
        start.wait()
        for event in chunk:
            t0 = time.perf_counter()
            with log.engine.connect().execution_options(write=True) as conn, conn.begin():
                log.append(conn, TENANT, event)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return latencies, time.perf_counter() - t0


def _sequencers(log: AuditLog, count: int, stop: threading.Event) -> list[threading.Thread]:
    def loop() -> None:
        while not stop.is_set():
            if not log.sequence(TENANT, max_batch=1000, wait=False):
                stop.wait(0.01)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def _level(log: AuditLog, total: int) -> None:
    while (head := log.head(TENANT)) is None or head.size < total:
        time.sleep(0.005)


def _check(log: AuditLog, signer: AuditSigner, total: int) -> None:
    log.checkpoint(TENANT)
    report = verify(log.export(TENANT), signer.verifier)
    if not report.ok or report.entries != total:
        raise SystemExit(f"the log does not verify after the run: {report}")


def _months_of_the_events(url: str) -> None:
    """The events are recorded at ``tests.audit.factories.T0`` (2025): their months' partitions
    (``db upgrade`` makes them from the current month on)."""
    engine = make_engine(url)
    try:
        audit_partitions.ensure(engine, now=datetime.now(UTC), since=audit_partitions.Month.of(T0))
    finally:
        engine.dispose()


def _design(
    url: str, make: Callable[..., AuditLog], signer: AuditSigner, args: dict[str, int]
) -> dict[str, float]:
    engine = make_engine(url, pool_size=args["threads"] + args["sequencers"] + 2)
    log = make(engine, signer=signer, checkpoint_every=1000, checkpoint_interval=3600)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")  # a clean log per design
        for table in (audit_checkpoints, audit_entries, audit_seq_claims, audit_heads):
            conn.execute(table.delete())
    log.drain(TENANT)  # the head row exists, as in a running deployment
    events = _events(args["appends"])
    stop = threading.Event()
    seqs = _sequencers(log, args["sequencers"], stop)
    latencies, wall = _appends(log, events, args["threads"])
    t0 = time.perf_counter()
    _level(log, len(events))
    lag = time.perf_counter() - t0
    stop.set()
    for t in seqs:
        t.join()
    _check(log, signer, len(events))
    engine.dispose()
    q = statistics.quantiles(latencies, n=100)
    return {
        "p50": q[49] * 1000,
        "p99": q[98] * 1000,
        "max": max(latencies) * 1000,
        "rate": len(latencies) / wall,
        "lag": lag * 1000,
    }


def _backlog(url: str, make: Callable[..., AuditLog], signer: AuditSigner, backlog: int) -> float:
    engine = make_engine(url)
    log = make(engine, signer=signer, checkpoint_every=1000, checkpoint_interval=3600)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        for table in (audit_checkpoints, audit_entries, audit_seq_claims, audit_heads):
            conn.execute(table.delete())
        rows = [entry_row(TENANT, ev) for ev in _events(backlog)]
        conn.execute(audit_entries.insert(), rows)
    t0 = time.perf_counter()
    log.drain(TENANT, max_batch=1000)
    took = time.perf_counter() - t0
    _check(log, signer, backlog)
    engine.dispose()
    return took


@click.command()
@click.option("--threads", default=8, show_default=True, help="Appending threads (concurrent requests)")
@click.option("--appends", default=4000, show_default=True, help="Appends per design")
@click.option("--sequencers", default=2, show_default=True, help="Background sequencers (API workers)")
@click.option("--backlog", default=20000, show_default=True, help="Entries for the sequencing-cost run")
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True)
def main(threads: int, appends: int, sequencers: int, backlog: int, postgres_url: str) -> None:
    """Append contention and sequencing cost, before and after, on PostgreSQL (module docstring)."""
    signer = AuditSigner.generate()
    args = {"threads": threads, "appends": appends, "sequencers": sequencers}
    designs: list[tuple[str, Callable[..., AuditLog]]] = [("head-lock", HeadLockedLog), ("pending", AuditLog)]
    with tempfile.TemporaryDirectory() as tmp, fresh_database("postgresql", Path(tmp), postgres_url) as url:
        _months_of_the_events(url)
        table = Table(title=f"{appends} appends from {threads} threads, {sequencers} sequencers (PostgreSQL)")
        for col in ("design", "append p50 ms", "p99 ms", "max ms", "appends/s", "tree level after (ms)"):
            table.add_column(col, justify="right")
        for name, make in designs:
            r = _design(url, make, signer, args)
            table.add_row(
                name,
                f"{r['p50']:.2f}",
                f"{r['p99']:.2f}",
                f"{r['max']:.1f}",
                f"{r['rate']:.0f}",
                f"{r['lag']:.0f}",
            )
        Console().print(table)
        cost = Table(title=f"one sequencer, a backlog of {backlog} entries")
        cost.add_column("leaf updates")
        cost.add_column("seconds", justify="right")
        cost.add_column("entries/s", justify="right")
        for name, make in (("one UPDATE per entry", HeadLockedLog), ("one UPDATE per batch", AuditLog)):
            took = _backlog(url, make, signer, backlog)
            cost.add_row(name, f"{took:.2f}", f"{backlog / took:.0f}")
        Console().print(cost)


if __name__ == "__main__":
    main()
