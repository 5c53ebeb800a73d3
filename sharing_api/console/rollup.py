"""The dashboard's rollup: its counts kept per tenant in small tables, so the dashboard reads hundreds of
rows instead of every entry of 30 days (issue 10: < 2 s at 1,000,000 entries; BENCHMARKS.md).

**What it holds.** ``console_rollup_hours``: per UTC hour, the requests, the refused and the emergency
ones (``aggregates`` says what each means). ``console_rollup_actors``: who was active on which Oslo day,
for patients (``p``), health workers (``h``, HPR) and organisations (``o``), as one row per value and
32-day bucket with a bit per day. Distinct actors over a period of whole days are then one
``COUNT(DISTINCT value)`` over at most two buckets' rows: exact, not an estimate.

**Where it comes from.** Only from the sequenced entries' columns (``recorded``, ``action``,
``outcome``, ``purpose``, ``patient_value``, ``agent_hpr``, ``organisation``), which are derived from
the signed event at append and checked against it (docs/audit-store.md). ``fold`` adds the entries
from index ``console_rollup_state.folded`` on, in index order, and moves ``folded`` in the same
transaction, holding the state row (``FOR UPDATE``; SQLite's write lock), so each entry is counted
exactly once whoever folds concurrently. The dashboard sequences and folds before it reads, so it shows
every entry committed before the request.

**Rebuildable and checked.** ``rebuild`` empties a tenant's rollup and folds the whole log again.
``check`` recomputes a period's counts straight from the entries (the covering index
``ix_audit_entries_period``) and names the first hour or tile that differs; "verify now" runs it over
the last 30 days, so an edited rollup row turns the integrity badge red like a tampered entry.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sharing_api.audit.actions import EMERGENCY_PURPOSES, AuditAction, Outcome
from sharing_api.store.schema import (
    audit_entries,
    console_rollup_actors,
    console_rollup_hours,
    console_rollup_state,
)

__all__ = ["BUCKET_DAYS", "RollupMismatch", "actors", "check", "day_number", "fold", "hours", "rebuild"]

BUCKET_DAYS = 32
_HOUR_US = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_KINDS = {
    "p": audit_entries.c.patient_value,
    "h": audit_entries.c.agent_hpr,
    "o": audit_entries.c.organisation,
}
e = audit_entries
s = console_rollup_state
hr = console_rollup_hours
ac = console_rollup_actors


@dataclass(frozen=True, slots=True)
class RollupMismatch:
    """Where the rollup and the entries disagree: an hour (``hour``) or a tile (``what``)."""

    what: str
    rollup: object
    entries: object


def day_number(when: datetime, zone: ZoneInfo) -> int:
    """Days since 1970-01-01 of ``when``'s local date in ``zone``."""
    return when.astimezone(zone).date().toordinal() - _EPOCH_DAY


def _dialect(conn: Connection) -> Any:
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def _state(conn: Connection, tenant: str) -> int:
    conn.execute(_dialect(conn).insert(s).values(tenant=tenant, folded=0).on_conflict_do_nothing())
    folded: int = conn.execute(select(s.c.folded).where(s.c.tenant == tenant).with_for_update()).scalar_one()
    return folded


def fold(engine: Engine, tenant: str, zone: ZoneInfo, batch: int = 20_000) -> int:
    """Add ``tenant``'s sequenced entries not yet in the rollup; returns how many (module docstring)."""
    total = 0
    while True:
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            folded = _state(conn, tenant)
            rows = conn.execute(
                select(
                    e.c.seq,
                    e.c.recorded,
                    e.c.action,
                    e.c.outcome,
                    e.c.purpose,
                    e.c.patient_value,
                    e.c.agent_hpr,
                    e.c.organisation,
                )
                .where(e.c.tenant == tenant, e.c.seq >= folded)
                .order_by(e.c.seq)
                .limit(batch)
            ).all()
            if not rows:
                return total
            if rows[0].seq != folded or rows[-1].seq != folded + len(rows) - 1:
                raise RuntimeError(f"rollup of {tenant}: the entries from index {folded} are not dense")
            counts: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
            masks: dict[tuple[str, int, str], int] = defaultdict(int)
            for r in rows:
                if r.action == AuditAction.ACCESS_DECISION.value:
                    continue
                cell = counts[r.recorded // _HOUR_US]
                cell[0] += 1
                cell[1] += r.outcome != Outcome.SUCCESS.value
                cell[2] += r.purpose in EMERGENCY_PURPOSES
                day = day_number(_EPOCH + timedelta(microseconds=r.recorded), zone)
                bucket, bit = divmod(day, BUCKET_DAYS)
                for kind, value in (("p", r.patient_value), ("h", r.agent_hpr), ("o", r.organisation)):
                    if value is not None:
                        masks[(kind, bucket, value)] |= 1 << bit
            insert = _dialect(conn).insert
            if counts:
                stmt = insert(hr)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["tenant", "hour"],
                        set_={
                            "requests": hr.c.requests + stmt.excluded.requests,
                            "refused": hr.c.refused + stmt.excluded.refused,
                            "emergency": hr.c.emergency + stmt.excluded.emergency,
                        },
                    ),
                    [
                        {"tenant": tenant, "hour": h, "requests": c[0], "refused": c[1], "emergency": c[2]}
                        for h, c in counts.items()
                    ],
                )
            if masks:
                stmt = insert(ac)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["tenant", "kind", "bucket", "value"],
                        set_={"days": ac.c.days.op("|")(stmt.excluded.days)},
                    ),
                    [
                        {"tenant": tenant, "kind": k, "bucket": b, "value": v, "days": m}
                        for (k, b, v), m in masks.items()
                    ],
                )
            conn.execute(update(s).where(s.c.tenant == tenant).values(folded=rows[-1].seq + 1))
        total += len(rows)


def rebuild(engine: Engine, tenant: str, zone: ZoneInfo) -> int:
    """Empty ``tenant``'s rollup and fold its whole log again; returns the entries folded."""
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        _state(conn, tenant)
        conn.execute(delete(hr).where(hr.c.tenant == tenant))
        conn.execute(delete(ac).where(ac.c.tenant == tenant))
        conn.execute(update(s).where(s.c.tenant == tenant).values(folded=0))
    return fold(engine, tenant, zone)


def hours(engine: Engine, tenant: str, start: datetime, end: datetime) -> list[tuple[int, int, int, int]]:
    """(UTC hour, requests, refused, emergency) of the hours in ``[start, end)`` (whole hours)."""
    first, stop = int(start.timestamp()) // 3600, int(end.timestamp()) // 3600
    with engine.connect() as conn:
        rows = conn.execute(
            select(hr.c.hour, hr.c.requests, hr.c.refused, hr.c.emergency)
            .where(hr.c.tenant == tenant, hr.c.hour >= first, hr.c.hour < stop)
            .order_by(hr.c.hour)
        ).all()
    return [(int(h), int(n), int(r), int(x)) for h, n, r, x in rows]


def actors(engine: Engine, tenant: str, first: int, last: int) -> dict[str, int]:
    """Distinct values per kind (``p``, ``h``, ``o``) active on Oslo day numbers ``first .. last``."""
    wanted: dict[int, int] = defaultdict(int)
    for day in range(first, last + 1):
        bucket, bit = divmod(day, BUCKET_DAYS)
        wanted[bucket] |= 1 << bit
    matches = or_(*(and_(ac.c.bucket == b, ac.c.days.op("&")(m) != 0) for b, m in wanted.items()))
    with engine.connect() as conn:
        rows = conn.execute(
            select(ac.c.kind, func.count(ac.c.value.distinct()))
            .where(ac.c.tenant == tenant, ac.c.bucket.in_(sorted(wanted)), matches)
            .group_by(ac.c.kind)
        ).all()
    found = {kind: 0 for kind in _KINDS}
    found.update({str(k): int(n) for k, n in rows})
    return found


def check(
    engine: Engine,
    tenant: str,
    start: datetime,
    end: datetime,
    reference_hours: list[tuple[int, int, int, int]],
    reference_actors: dict[str, int],
    zone: ZoneInfo,
) -> RollupMismatch | None:
    """The first difference between the rollup over ``[start, end)`` (local midnights; entries up to the
    folded index) and the same counts computed from the entries (``reference_*``), or None."""
    mine = {h: (n, r, x) for h, n, r, x in hours(engine, tenant, start, end)}
    theirs = {h: (n, r, x) for h, n, r, x in reference_hours}
    for hour in sorted(set(mine) | set(theirs)):
        if mine.get(hour) != theirs.get(hour):
            when = (_EPOCH + timedelta(hours=hour)).isoformat()
            return RollupMismatch(f"hour {when}", mine.get(hour), theirs.get(hour))
    last = day_number(end - timedelta(microseconds=1), zone)
    counted = actors(engine, tenant, day_number(start, zone), last)
    for kind in _KINDS:
        if counted[kind] != reference_actors[kind]:
            return RollupMismatch(f"distinct {kind}", counted[kind], reference_actors[kind])
    return None


def folded(engine: Engine, tenant: str) -> int:
    """The index up to which (exclusive) ``tenant``'s entries are in the rollup."""
    with engine.connect() as conn:
        found = conn.execute(select(s.c.folded).where(s.c.tenant == tenant)).scalar()
    return int(found or 0)
