"""``python -m benchmarks --diagnose``: what each request did, counted, beside the CPU it took.

CPU per request moves with the host's speed and with crowding (``cpu.reference_loop``); counts do not.
Per measured phase (PostgreSQL only) this prints, per request: PostgreSQL's transactions and rows
(``pg_stat_database`` of the benchmark's database: three transactions per read, the decision, the read
and the audit INSERT), the sessions opened, autovacuum and autoanalyze runs on its tables, and the
context switches and moves to the other core of the server's and the database's threads; then the CPU
milliseconds per request of each server worker and each PostgreSQL and Redis process. Two runs' lists
side by side say whether a slower run did more work or the same work more slowly (BENCHMARKS.md, the
read's two levels).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg

from benchmarks.cpu import CpuProbe, Sample

_DATABASE = (
    "sessions",
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
)
_DATABASE_SQL = (
    "SELECT sessions, xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated "
    "FROM pg_stat_database WHERE datname = current_database()"
)
_TABLES_SQL = (
    "SELECT coalesce(sum(autovacuum_count), 0), coalesce(sum(autoanalyze_count), 0) FROM pg_stat_user_tables"
)


_STATE = re.compile(r"\s+(idle|active|SELECT|INSERT|UPDATE|COMMIT|BEGIN|SET)\b.*$")
_DIRECTORY = re.compile(r"^/\S*/")


@dataclass(frozen=True)
class Counts:
    values: dict[str, int]
    cpu: Sample | None
    scheduling: dict[tuple[str, str, str], int] = field(default_factory=dict)


def _scheduling(probe: CpuProbe, cpu: Sample | None) -> dict[tuple[str, str, str], int]:
    """(group, thread id, what) -> count so far, for every thread of the server's and the database's
    processes: context switches, and moves to the other core (``se.nr_migrations``: a thread that
    moves finds that core's caches cold). By thread, so that a thread that ends (granian's idle ones
    do) does not make a sum go backwards; what it did in the window before it ended is not counted."""
    counts: dict[tuple[str, str, str], int] = {}
    for pid in cpu.per_process if cpu else ():
        group = probe.group(pid, cpu.per_process) if cpu else ""
        if group not in ("server", "storage"):
            continue
        try:
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"{task.path}/sched") as f:
                    for line in f:
                        name, _, value = line.partition(":")
                        what = _SCHED.get(name.strip())
                        if what is not None:
                            counts[group, task.name, what] = int(value)
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return counts


_SCHED = {"nr_switches": "context switches", "se.nr_migrations": "moves to another core"}


def take(url: str, probe: CpuProbe) -> Counts:
    """The counters now (the statistics flushed first, so the last requests' counts are in)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(_DATABASE_SQL).fetchone()
        autovacuum, autoanalyze = conn.execute(_TABLES_SQL).fetchone() or (0, 0)
    values = dict(zip(_DATABASE, row or (), strict=False))
    values |= {"autovacuum runs": int(autovacuum), "autoanalyze runs": int(autoanalyze)}
    cpu = probe.sample()
    return Counts(values, cpu, _scheduling(probe, cpu))


def report(name: str, before: Counts, after: Counts, requests: int, probe: CpuProbe) -> list[str]:
    """Lines: each count per request between ``before`` and ``after``, then each process's CPU ms per
    request (server workers, PostgreSQL processes by pid and kind, Redis) above 0.005 ms."""
    per = max(1, requests)
    lines = [f"{name}, per request ({requests:,} requests in the measured window):"]
    lines += [
        f"  {key:30} {(after.values[key] - before.values.get(key, 0)) / per:9.3f}" for key in after.values
    ]
    scheduling: dict[str, int] = defaultdict(int)
    for (group, task, what), count in after.scheduling.items():
        scheduling[f"{group} {what}"] += count - before.scheduling.get((group, task, what), 0)
    lines += [f"  {key:30} {count / per:9.3f}" for key, count in sorted(scheduling.items())]
    if before.cpu is None or after.cpu is None:
        return lines
    spent: dict[str, float] = defaultdict(float)
    for pid, (_, command, _, _) in after.cpu.per_process.items():
        if probe.group(pid, after.cpu.per_process) in ("server", "storage"):
            kind = _STATE.sub("", _DIRECTORY.sub("", command))[:44]  # a backend's state changes: cut off
            spent[f"{pid} {kind}"] += after.cpu.spent_since(before.cpu, pid)[0]
    for key, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        if seconds * 1000 / per >= 0.005:
            lines.append(f"  {key:52} {seconds * 1000 / per:7.3f} ms CPU")
    return lines
