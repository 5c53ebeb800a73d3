"""Counts behind the dashboard's tiles and its daily chart, from the indexed columns of one tenant's
audit log (the same rows ``AuditLog.search`` and ``control.log_control`` read).

Requests are every entry except the AuthZconsent record of a decision (``access.decision``), which
repeats its request (as ``control`` counts them). *Permitted* is outcome 0, *refused* any failure
outcome, *emergency* purpose ETREAT or BTG. Days are local days in ``zone`` (Europe/Oslo by default):
the database groups by UTC hour and Python adds the hours up per local day, which is exact because
Norway's UTC offsets are whole hours, also on the days daylight saving time starts and ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, case, func, select

from sharing_api.audit.actions import EMERGENCY_PURPOSES, AuditAction, Outcome
from sharing_api.audit.terms import micros
from sharing_api.store.schema import audit_entries

__all__ = ["OSLO", "DailyCount", "Overview", "daily_counts", "overview"]

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


def _where(tenant: str, start: datetime, end: datetime) -> list[Any]:
    return [
        e.c.tenant == tenant,
        e.c.recorded >= micros(start),
        e.c.recorded < micros(end),
        e.c.action != AuditAction.ACCESS_DECISION.value,
    ]


def _refused() -> Any:
    return func.sum(case((e.c.outcome != Outcome.SUCCESS.value, 1), else_=0))


def _emergency() -> Any:
    return func.sum(case((e.c.purpose.in_(sorted(EMERGENCY_PURPOSES)), 1), else_=0))


def overview(engine: Engine, tenant: str, start: datetime, end: datetime) -> Overview:
    """The dashboard's tiles over ``[start, end)``."""
    with engine.connect() as conn:
        row = conn.execute(
            select(
                func.count(),
                _refused(),
                _emergency(),
                func.count(e.c.patient_value.distinct()),
                func.count(e.c.agent_hpr.distinct()),
                func.count(e.c.organisation.distinct()),
            ).where(*_where(tenant, start, end))
        ).one()
    return Overview(*(int(v or 0) for v in row))


def daily_counts(
    engine: Engine, tenant: str, start: datetime, end: datetime, zone: ZoneInfo = OSLO
) -> list[DailyCount]:
    """One ``DailyCount`` per local day from ``start`` up to ``end`` (days without requests count 0)."""
    hour = (e.c.recorded // _HOUR_US).label("hour")
    with engine.connect() as conn:
        rows = conn.execute(
            select(hour, func.count(), _refused(), _emergency())
            .where(*_where(tenant, start, end))
            .group_by(hour)
        ).all()
    days: dict[date, list[int]] = {}
    first, last = start.astimezone(zone).date(), (end - timedelta(microseconds=1)).astimezone(zone).date()
    day = first
    while day <= last:
        days[day] = [0, 0, 0]
        day += timedelta(days=1)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for h, total, refused, emergency in rows:
        local = (epoch + timedelta(hours=int(h))).astimezone(zone).date()
        counts = days.setdefault(local, [0, 0, 0])
        counts[0] += int(total) - int(refused or 0)
        counts[1] += int(refused or 0)
        counts[2] += int(emergency or 0)
    return [DailyCount(d, *c) for d, c in sorted(days.items())]
