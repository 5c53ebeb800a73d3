"""Counts behind the dashboard's tiles and its daily chart, from the indexed columns of one tenant's
audit log (the same rows ``AuditLog.search`` and ``control.log_control`` read).

Requests are every entry except the AuthZconsent record of a decision (``access.decision``), which
repeats its request (as ``control`` counts them). *Permitted* is outcome 0, *refused* any failure
outcome, *emergency* purpose ETREAT or BTG. Days are local days in ``zone`` (Europe/Oslo by default):
the database groups by UTC hour and Python adds the hours up per local day, which is exact because
Norway's UTC offsets are whole hours, also on the days daylight saving time starts and ends.

Scale (issue 10: dashboard < 2 s at 1,000,000 entries): the dashboard reads the rollup (``rollup``),
hundreds of rows; ``scan`` counts the same numbers from the entries themselves (every column it reads
is in the covering index ``ix_audit_entries_period``, migration 0005_console2) and is what the rollup
is checked against. Measured in BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select, tuple_

from sharing_api.audit.actions import EMERGENCY_PURPOSES, AuditAction, Outcome
from sharing_api.audit.terms import micros
from sharing_api.console import rollup
from sharing_api.store.schema import audit_entries

__all__ = ["OSLO", "DailyCount", "Overview", "dashboard", "scan"]

OSLO = ZoneInfo("Europe/Oslo")
_HOUR_US = 3_600_000_000
e = audit_entries


@dataclass(frozen=True, slots=True)
class DailyCount:
    day: date
    permitted: int
    refused: int
    emergency: int

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "permitted": self.permitted,
            "refused": self.refused,
            "emergency": self.emergency,
        }


@dataclass(frozen=True, slots=True)
class Overview:
    requests: int
    refused: int
    emergency: int
    patients: int
    health_workers: int
    organisations: int

    def to_json(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "refused": self.refused,
            "emergency": self.emergency,
            "patients": self.patients,
            "health_workers": self.health_workers,
            "organisations": self.organisations,
        }


def _where(tenant: str, start: datetime, end: datetime, below: int | None = None) -> list[Any]:
    where = [
        e.c.tenant == tenant,
        e.c.recorded >= micros(start),
        e.c.recorded < micros(end),
        e.c.action != AuditAction.ACCESS_DECISION.value,
    ]
    if below is not None:
        where.append(e.c.seq < below)
    return where


def _reading(engine: Engine) -> Any:
    """A read transaction; on PostgreSQL without JIT: compiling these one-pass aggregates costs more
    than it saves (measured at 1,000,000 entries, BENCHMARKS.md)."""
    conn = engine.connect()
    conn.begin()
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL jit = off")
    return conn


def _hours(
    engine: Engine, tenant: str, start: datetime, end: datetime, below: int | None = None
) -> list[tuple[int, int, int, int]]:
    """(UTC hour, requests, refused, emergency) per hour with requests: one scan of
    ``ix_audit_entries_period`` (index-only unless ``below``, an index the entries must be under)."""
    hour = (e.c.recorded // _HOUR_US).label("hour")
    with _reading(engine) as conn:
        rows = conn.execute(
            select(
                hour,
                func.count(),
                func.count().filter(e.c.outcome != Outcome.SUCCESS.value),
                func.count().filter(e.c.purpose.in_(sorted(EMERGENCY_PURPOSES))),
            )
            .where(*_where(tenant, start, end, below))
            .group_by(hour)
        ).all()
    return [(int(h), int(n), int(r or 0), int(x or 0)) for h, n, r, x in rows]


_ACTORS = (e.c.patient_value, e.c.agent_hpr, e.c.organisation)


def _distinct(
    engine: Engine, tenant: str, start: datetime, end: datetime, below: int | None = None
) -> tuple[int, int, int]:
    """Distinct patients, health workers and organisations: on PostgreSQL one index-only scan hashed by
    three grouping sets (``COUNT(DISTINCT ...)`` sorts, and spilled to disk at 1,000,000 entries); on
    SQLite ``COUNT(DISTINCT ...)`` over the covering index."""
    where = _where(tenant, start, end, below)
    with _reading(engine) as conn:
        if conn.dialect.name != "postgresql":
            row = conn.execute(select(*(func.count(c.distinct()) for c in _ACTORS)).where(*where)).one()
            return int(row[0]), int(row[1]), int(row[2])
        sets = select(func.grouping(*_ACTORS).label("g"), *_ACTORS).where(*where)
        inner = sets.group_by(func.grouping_sets(*(tuple_(c) for c in _ACTORS))).subquery()
        found = dict(
            conn.execute(
                select(inner.c.g, func.count())
                .where(
                    func.coalesce(inner.c.patient_value, inner.c.agent_hpr, inner.c.organisation).is_not(None)
                )
                .group_by(inner.c.g)
            ).all()
        )
    # GROUPING(p, a, o) is a bit mask of the columns *not* grouped: 0b011 for the set (p), and so on
    return int(found.get(0b011, 0)), int(found.get(0b101, 0)), int(found.get(0b110, 0))


def _days(
    hours: list[tuple[int, int, int, int]], start: datetime, end: datetime, zone: ZoneInfo
) -> list[DailyCount]:
    days: dict[date, list[int]] = {}
    first, last = start.astimezone(zone).date(), (end - timedelta(microseconds=1)).astimezone(zone).date()
    day = first
    while day <= last:
        days[day] = [0, 0, 0]
        day += timedelta(days=1)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for h, total, refused, emergency in hours:
        local = (epoch + timedelta(hours=h)).astimezone(zone).date()
        counts = days.setdefault(local, [0, 0, 0])
        counts[0] += total - refused
        counts[1] += refused
        counts[2] += emergency
    return [DailyCount(d, *c) for d, c in sorted(days.items())]


def scan(
    engine: Engine, tenant: str, start: datetime, end: datetime, below: int | None = None
) -> tuple[list[tuple[int, int, int, int]], dict[str, int]]:
    """The dashboard's numbers counted straight from the entries (of index < ``below`` when given):
    the reference ``rollup.check`` compares the rollup with. Reads every entry of the period."""
    patients, workers, organisations = _distinct(engine, tenant, start, end, below)
    return _hours(engine, tenant, start, end, below), {"p": patients, "h": workers, "o": organisations}


def dashboard(
    engine: Engine, tenant: str, start: datetime, end: datetime, zone: ZoneInfo = OSLO
) -> tuple[list[DailyCount], Overview]:
    """The daily chart and the tiles over ``[start, end)`` (local midnights) from the rollup, after
    folding in what is new (``rollup``: sequence the log first to include pending entries). The tiles'
    sums are added up from the chart's hours, so the two cannot disagree."""
    rollup.fold(engine, tenant, zone)
    hours = rollup.hours(engine, tenant, start, end)
    last = rollup.day_number(end - timedelta(microseconds=1), zone)
    found = rollup.actors(engine, tenant, rollup.day_number(start, zone), last)
    tiles = Overview(
        requests=sum(h[1] for h in hours),
        refused=sum(h[2] for h in hours),
        emergency=sum(h[3] for h in hours),
        patients=found["p"],
        health_workers=found["h"],
        organisations=found["o"],
    )
    return _days(hours, start, end, zone), tiles
