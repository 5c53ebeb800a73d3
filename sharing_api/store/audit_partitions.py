"""Monthly partitions of ``audit_entries`` on PostgreSQL, created ahead (migration 0006_audit_parts).

On PostgreSQL ``audit_entries`` is ``PARTITION BY RANGE (recorded)``, one partition per calendar month
(UTC), named ``audit_entries_yYYYYmMM``, and **no DEFAULT partition**: a month can be detached
(``DETACH PARTITION ... CONCURRENTLY``, refused while a DEFAULT exists) and archived after an
``audit export``, and a query bounded in time (search, log control, console) reads only its months.
SQLite has one plain table: every function here is a no-op there, so the code above is one.

An append whose month has no partition fails (``no partition of relation "audit_entries" found for
row``); ``AuditLog.append`` turns that into ``MissingPartition``, an ``OperationalError``, so the API
answers 503 with ``Retry-After`` as for any database outage, never 500. To keep that from happening,
months are created ``AHEAD`` of time by

* ``dho-share db upgrade`` (migration 0006 and every later ``upgrade``),
* each sequencer loop (every API worker runs one; ``sequencer.run``) once an hour,
* ``dho-share audit partitions ensure`` (cron or a deploy step),

and a missing month is reported before it is an outage: ``/readyz`` says ``degraded`` (still ready)
while the next month is missing and ``unavailable`` (not ready) when the current one is; ``dho-share
audit partitions check`` exits 1 in either case (for monitoring).

Creating a partition locks the parent briefly (``ACCESS EXCLUSIVE`` on PostgreSQL 15): it waits at most
``LOCK_TIMEOUT`` for running appends and then gives up (the next attempt retries), so it never holds up
the request path for longer. Two creators serialise on an advisory lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, Engine, text

__all__ = [
    "AHEAD",
    "Month",
    "PartitionStatus",
    "ensure",
    "existing",
    "is_partition_name",
    "missing",
    "not_a_partition",
    "partitioned",
    "status",
]

AHEAD = 3
"""Months created after the current one."""

LOCK_TIMEOUT = "5s"
PARTITION_STORAGE = "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05"
"""Each month is append-mostly: analysed and vacuumed sooner than PostgreSQL's default 10 %/20 % change
(deploy/README.md "Statistics and autovacuum"; a partitioned parent takes no storage parameters)."""
_LOCK_KEY = 0x64686F5F61756474  # pg_advisory_xact_lock key of partition creation ("dho_audt")
_NAME = re.compile(r"^audit_entries_y(\d{4})m(\d{2})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_partition_name(name: str) -> bool:
    """``name`` is a monthly partition of ``audit_entries`` (not in ``schema.py``: made at run time)."""
    return _NAME.match(name) is not None


def not_a_partition(name: str | None, type_: str, _parent_names: object) -> bool:
    """Alembic's ``include_name`` hook: compare ``schema.py`` with the parent table, not with each month
    (a partition's columns and indexes are the parent's, cloned by PostgreSQL)."""
    return not (type_ == "table" and name is not None and is_partition_name(name))


@dataclass(frozen=True, slots=True, order=True)
class Month:
    """A calendar month in UTC, and the partition that holds its entries."""

    year: int
    month: int

    @classmethod
    def of(cls, when: datetime | date) -> Month:
        return cls(when.year, when.month)

    @classmethod
    def of_micros(cls, recorded: int) -> Month:
        return cls.of(datetime.fromtimestamp(recorded / 1_000_000, UTC))

    def plus(self, months: int) -> Month:
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    @property
    def name(self) -> str:
        return f"audit_entries_y{self.year:04d}m{self.month:02d}"

    @property
    def lower(self) -> int:
        """The first ``recorded`` value (µs since the epoch) of the month."""
        return int((datetime(self.year, self.month, 1, tzinfo=UTC) - _EPOCH).total_seconds()) * 1_000_000

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """What ``status`` found: ``missing`` lists the months from the current one to ``AHEAD`` ahead that
    have no partition. ``state`` is ``ok``, ``degraded`` (the current month exists, a later one does not:
    appends work, an outage is coming) or ``unavailable`` (appends of this month fail now)."""

    current: Month
    missing: tuple[Month, ...]

    @property
    def state(self) -> str:
        if not self.missing:
            return "ok"
        return "unavailable" if self.current in self.missing else "degraded"

    @property
    def detail(self) -> str:
        if not self.missing:
            return "ok"
        months = ", ".join(str(m) for m in self.missing)
        return f"{self.state}: no audit partition for {months} (dho-share audit partitions ensure)"


def partitioned(conn: Connection) -> bool:
    """``audit_entries`` is partitioned here (PostgreSQL from migration 0006 on)."""
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_entries')")
    ).scalar()
    return kind == "p"


def existing(conn: Connection) -> set[Month]:
    """The months that have a partition (empty on SQLite)."""
    if conn.dialect.name != "postgresql":
        return set()
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass('audit_entries')"
        )
    ).scalars()
    found = set()
    for name in names:
        if (match := _NAME.match(name)) is not None:
            found.add(Month(int(match[1]), int(match[2])))
    return found


def _create(conn: Connection, month: Month) -> None:
    upper = month.plus(1).lower
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {month.name} PARTITION OF audit_entries"
        f" FOR VALUES FROM ({month.lower}) TO ({upper}) WITH ({PARTITION_STORAGE})"
    )


def ensure_in(conn: Connection, months: set[Month]) -> list[Month]:
    """Create the partitions of ``months`` that do not exist, in ``conn``'s open transaction (the
    migration's); returns those created, in order. A no-op unless ``audit_entries`` is partitioned."""
    if not partitioned(conn):
        return []
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    created = sorted(months - existing(conn))
    for month in created:
        _create(conn, month)
    return created


def ensure(engine: Engine, *, now: datetime, ahead: int = AHEAD, since: Month | None = None) -> list[Month]:
    """Create the partitions of every month from ``since`` (default: the month of ``now``) to ``ahead``
    months after ``now``'s, in one short transaction that waits at most ``LOCK_TIMEOUT`` for the table
    (``OperationalError`` then: retry later). Returns the months created; none on SQLite."""
    if ahead < 0:
        raise ValueError("ahead must be >= 0")
    current = Month.of(now)
    first = min(since, current) if since is not None else current
    wanted: set[Month] = set()
    month = first
    while month <= current.plus(ahead):
        wanted.add(month)
        month = month.plus(1)
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        return ensure_in(conn, wanted)


def status(engine: Engine, *, now: datetime, ahead: int = AHEAD) -> PartitionStatus | None:
    """Which of the months from ``now``'s to ``ahead`` later lack a partition; ``None`` where the table is
    not partitioned (SQLite). One catalog query."""
    with engine.connect() as conn:
        if not partitioned(conn):
            return None
        have = existing(conn)
    current = Month.of(now)
    return PartitionStatus(
        current, tuple(m for m in (current.plus(i) for i in range(ahead + 1)) if m not in have)
    )


def missing(engine: Engine, *, now: datetime, ahead: int = AHEAD) -> list[Month]:
    """``status(...).missing`` as a list (empty on SQLite)."""
    found = status(engine, now=now, ahead=ahead)
    return list(found.missing) if found is not None else []
