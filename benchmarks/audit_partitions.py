"""``python -m benchmarks.audit_partitions``: what monthly partitions cost an append and the sequencer.

Migration 0006_audit_parts makes ``audit_entries`` a table partitioned by month on PostgreSQL, and
moves the unique index on ``(tenant, seq)`` to ``audit_seq_claims``, filled by the append-only trigger
when the sequencer gives an entry its index. This benchmark measures both schemas with the same code in
the same run: a database migrated to ``0005_subs`` (one table, the unique index) and one migrated to
the head (partitioned, claims). Each round appends ``--appends`` events from one thread, each in its
own transaction as the request path commits it (``AuditLog.append``), then sequences them with one
sequencer (``drain``). Rounds alternate between the schemas (``--rounds`` each), so that a change in
the machine's load hits both alike.

``--migrate N`` first times migration 0006 up and down over a table of N entries.

CPU is what counts on a shared 2-core machine: this process's CPU (``time.process_time``) plus the
CPU of its one PostgreSQL backend (``/proc/<pid>/stat``; the database runs on this machine), per
event. Wall time is printed too, but it moves with everybody else's load.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import psycopg
from alembic import command
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, text

from sharing_api.audit.events import build_audit_event
from sharing_api.audit.log import AuditLog
from sharing_api.store.engine import alembic_config, make_engine, upgrade
from tests.audit.factories import TENANT, facts

_TICK = os.sysconf("SC_CLK_TCK")


def _backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@contextmanager
def _database(admin_url: str, revision: str) -> Iterator[str]:
    name = f"dho_bench_parts_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin_url.rsplit('/', 1)[0]}/{name}"
    try:
        if revision == "head":
            upgrade(url)
        else:
            command.upgrade(alembic_config(url), revision)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _measure(engine: Engine, log: AuditLog, events: list[dict[str, Any]]) -> dict[str, float]:
    """Append ``events`` one transaction each, then sequence them: CPU and wall seconds of each step."""
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()  # the pool's one connection
    out: dict[str, float] = {}
    cpu0, db0, wall0 = time.process_time(), _backend_cpu(pid), time.perf_counter()
    for ev in events:
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            log.append(conn, TENANT, ev)
    cpu1, db1, wall1 = time.process_time(), _backend_cpu(pid), time.perf_counter()
    log.drain(TENANT)
    cpu2, db2, wall2 = time.process_time(), _backend_cpu(pid), time.perf_counter()
    out["append_client"], out["append_db"], out["append_wall"] = cpu1 - cpu0, db1 - db0, wall1 - wall0
    out["seq_client"], out["seq_db"], out["seq_wall"] = cpu2 - cpu1, db2 - db1, wall2 - wall1
    return out


def _migration(admin_url: str, entries: int) -> str:
    """How long 0006 takes up and down over ``entries`` entries spread over a year (copies of one real
    event, each with its own index; enough to time the copy, not a log that verifies)."""
    with _database(admin_url, "0005_subs") as url:
        engine = make_engine(url)
        log = AuditLog(engine)
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            log.append(conn, TENANT, build_audit_event(facts(0, recorded=datetime.now(UTC))))
        log.drain(TENANT)
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")  # past the triggers
            conn.execute(
                text(
                    "INSERT INTO audit_entries (tenant, seq, leaf, recorded, action, outcome, purpose,"
                    " patient_system, patient_value, agent_hpr, organisation, client_id, event)"
                    " SELECT tenant, g, leaf, recorded - g::bigint * 31536000000000 / :n, action, outcome,"
                    " purpose, patient_system, patient_value, agent_hpr, organisation, client_id, event"
                    " FROM audit_entries, generate_series(1, :n) g"
                ),
                {"n": entries},
            )
            size = conn.execute(
                text("SELECT pg_size_pretty(pg_total_relation_size('audit_entries'))")
            ).scalar()
        engine.dispose()
        t0 = time.perf_counter()
        upgrade(url)
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        command.downgrade(alembic_config(url), "0005_subs")
        down = time.perf_counter() - t0
    return (
        f"0006 over {entries + 1} entries ({size}, 13 months): upgrade {up:.1f} s, downgrade {down:.1f} s"
        f" (load {os.getloadavg()[0]:.1f})"
    )


@click.command()
@click.option("--appends", default=5000, show_default=True, help="Appends per round")
@click.option("--rounds", default=3, show_default=True, help="Rounds per schema (alternating)")
@click.option(
    "--migrate", default=0, show_default=True, help="Also time migration 0006 over this many entries"
)
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True)
def main(appends: int, rounds: int, migrate: int, postgres_url: str) -> None:
    """Append and sequencing CPU per event, one table (0005) against monthly partitions (0006)."""
    if migrate:
        Console().print(_migration(postgres_url, migrate))
    now = datetime.now(UTC)
    events = [build_audit_event(facts(n, recorded=now + timedelta(microseconds=n))) for n in range(appends)]
    schemas = {"one table (0005_subs)": "0005_subs", "partitioned (0006_audit_parts)": "head"}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in schemas}
    with _database(postgres_url, "0005_subs") as flat, _database(postgres_url, "head") as parts:
        urls = {"one table (0005_subs)": flat, "partitioned (0006_audit_parts)": parts}
        engines = {name: make_engine(url, pool_size=1) for name, url in urls.items()}
        try:
            for engine in engines.values():  # warm up: connections, caches, prepared statements
                _measure(engine, AuditLog(engine), events[:200])
            for _ in range(rounds):
                for name, engine in engines.items():
                    results[name].append(_measure(engine, AuditLog(engine), events))
        finally:
            for engine in engines.values():
                engine.dispose()
    load = os.getloadavg()
    table = Table(
        title=f"{appends} appends per round, {rounds} rounds per schema (median; load {load[0]:.1f})"
    )
    for col in (
        "schema",
        "append CPU µs/event (client + db)",
        "client",
        "db",
        "append wall µs",
        "sequence CPU µs/event",
        "sequence db",
    ):
        table.add_column(col, justify="right")
    for name, runs in results.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs) / appends * 1e6

        table.add_row(
            name,
            f"{med('append_client') + med('append_db'):.0f}",
            f"{med('append_client'):.0f}",
            f"{med('append_db'):.0f}",
            f"{med('append_wall'):.0f}",
            f"{med('seq_client') + med('seq_db'):.0f}",
            f"{med('seq_db'):.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
