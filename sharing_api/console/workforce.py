"""The health-worker list and one health worker's profile (console.md §5.1 page 5) counted in SQL over
the entries' indexed columns, the same rows and the same definitions as ``actors.workers`` and
``actors.worker_profile`` (which compute them from parsed events and are the reference the tests
compare these with).

What a column holds is what the signed event says: ``AuditLog.search`` checks it on every row it
returns, and "verify now" checks every row (docs/audit-store.md). Only what the columns do not hold
is read from the events, and only from the few that need it: the health worker's name and
organisation name (the first access of each health worker, one event per row shown), the refused
accesses a profile lists, and the self-selected care relations, whose candidates SQL narrows to the
events whose canonical bytes contain ``"valueBoolean":true`` (every event with a self-selected
relation does: RFC 8785 writes that member exactly so) before each candidate is parsed.

Local days (Europe/Oslo) are numbered in SQL by comparing ``recorded`` with the period's local
midnights, so "distinct patients per day" is counted by the database on every dialect, and the
hour-of-day × weekday table is grouped by UTC hour and converted in Python (exact: Norway's offsets
are whole hours).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, ColumnElement, LargeBinary, case, func, literal, select

from sharing_api.audit.actions import EMERGENCY_PURPOSES, READ_ACTIONS, AuditAction, Outcome
from sharing_api.audit.terms import micros
from sharing_api.console.actors import WorkerProfile, WorkerRow
from sharing_api.console.aggregates import OSLO
from sharing_api.console.reading import EntryView, view_of
from sharing_api.store.schema import audit_entries

if TYPE_CHECKING:
    from sharing_api.services import Services

__all__ = ["ACCESS_ACTIONS", "SELF_SELECTED_BYTES", "profile", "rows"]

e = audit_entries
_HOUR_US = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACCESS_ACTIONS = sorted({*(a.value for a in READ_ACTIONS), AuditAction.REQUEST_REFUSED.value})
"""The actions the health-worker view counts (``actors._accesses``)."""
SELF_SELECTED_BYTES = b'"valueBoolean":true'
"""In the canonical bytes of every event with a self-selected care relation (``reading.view_of``)."""


def _contains(dialect: str, fragment: bytes) -> ColumnElement[bool]:
    """The event's bytes contain ``fragment``: ``bytea LIKE`` on PostgreSQL (no ``%`` or ``_`` in the
    fragment), ``instr`` on a BLOB elsewhere (SQLite)."""
    if dialect == "postgresql":
        return e.c.event.op("LIKE", return_type=Boolean)(literal(b"%" + fragment + b"%", LargeBinary))
    return func.instr(e.c.event, literal(fragment, LargeBinary)) > 0


def _base(tenant: str, start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    return [
        e.c.tenant == tenant,
        e.c.seq.is_not(None),
        e.c.recorded >= micros(start),
        e.c.recorded < micros(end),
        e.c.action.in_(ACCESS_ACTIONS),
    ]


def _days(start: datetime, end: datetime) -> tuple[list[date], Any]:
    """The local days of ``[start, end)`` and a SQL expression giving an entry's index among them."""
    first = start.astimezone(OSLO).date()
    last = (end - timedelta(microseconds=1)).astimezone(OSLO).date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    bounds = [micros(datetime.combine(d + timedelta(days=1), datetime.min.time(), OSLO)) for d in days]
    expr = case(*((e.c.recorded < b, i) for i, b in enumerate(bounds[:-1])), else_=len(days) - 1)
    return days, expr


def _daily_patients(services: Services, where: list[Any], start: datetime, end: datetime) -> Any:
    """(hpr, day index, distinct patients) of the permitted accesses matching ``where``."""
    days, day = _days(start, end)
    stmt = (
        select(e.c.agent_hpr, day.label("day"), func.count(e.c.patient_value.distinct()))
        .where(*where, e.c.outcome == Outcome.SUCCESS.value, e.c.patient_value.is_not(None))
        .group_by(e.c.agent_hpr, day)
    )
    with services.engine.connect() as conn:
        return days, conn.execute(stmt).all()


def _self_selected(services: Services, tenant: str, where: list[Any]) -> Counter[str]:
    """Accesses with a self-selected care relation per HPR: SQL's candidates, each parsed."""
    with services.engine.connect() as conn:
        seqs = conn.execute(
            select(e.c.seq).where(*where, _contains(conn.dialect.name, SELF_SELECTED_BYTES))
        ).scalars()
        candidates = list(seqs)
    found: Counter[str] = Counter()
    for entry in services.audit_log.entries_at(tenant, candidates):
        view = view_of(entry)
        if view.user_selected and view.agent_hpr:
            found[view.agent_hpr] += 1
    return found


def _firsts(services: Services, tenant: str, first: dict[str, int]) -> dict[str, EntryView]:
    """Per HPR the view of its first access (index ``first[hpr]``), read in batches."""
    return {
        v.agent_hpr: v
        for v in map(view_of, services.audit_log.entries_at(tenant, first.values()))
        if v.agent_hpr is not None
    }


def _named(services: Services, tenant: str, firsts: dict[str, EntryView], where: list[Any]) -> dict[str, str]:
    """Per HPR the practitioner name of its first access that has one (``actors.workers``): the first
    access answers for nearly all; later ones are read, 100 at a time, only for those it leaves unnamed."""
    found: dict[str, str] = {}
    for hpr, view in firsts.items():
        if view.practitioner_name:
            found[hpr] = view.practitioner_name
            continue
        after = view.seq if view.seq is not None else -1
        while hpr not in found:
            with services.engine.connect() as conn:
                seqs = list(
                    conn.execute(
                        select(e.c.seq)
                        .where(*where, e.c.agent_hpr == hpr, e.c.seq > after)
                        .order_by(e.c.seq)
                        .limit(100)
                    ).scalars()
                )
            if not seqs:
                break
            for later in map(view_of, services.audit_log.entries_at(tenant, seqs)):
                if later.practitioner_name:
                    found[hpr] = later.practitioner_name
                    break
            after = seqs[-1]
    return found


def rows(services: Services, tenant: str, start: datetime, end: datetime) -> list[WorkerRow]:
    """``actors.workers`` of the period's entries, counted in SQL (module docstring)."""
    services.audit_log.drain(tenant)
    where = [*_base(tenant, start, end), e.c.agent_hpr.is_not(None), e.c.agent_hpr != ""]
    with services.engine.connect() as conn:
        counted = conn.execute(
            select(
                e.c.agent_hpr,
                func.count(),
                func.count().filter(e.c.outcome != Outcome.SUCCESS.value),
                func.count().filter(e.c.purpose.in_(sorted(EMERGENCY_PURPOSES))),
                func.min(e.c.seq),
            )
            .where(*where)
            .group_by(e.c.agent_hpr)
        ).all()
    _, daily = _daily_patients(services, where, start, end)
    most: dict[str, int] = defaultdict(int)
    for hpr, _day, n in daily:
        most[hpr] = max(most[hpr], int(n))
    firsts = _firsts(services, tenant, {hpr: int(seq) for hpr, _n, _r, _x, seq in counted})
    named = _named(services, tenant, firsts, where)
    chosen = _self_selected(services, tenant, where)
    found = []
    for hpr, n, refused, emergency, _seq in counted:
        first = firsts.get(hpr)
        found.append(
            WorkerRow(
                hpr=hpr,
                name=named.get(hpr, hpr),
                organisation=(first.organisation_name or first.organisation or "") if first else "",
                accesses=int(n),
                max_patients_per_day=most.get(hpr, 0),
                refused=int(refused or 0),
                emergency=int(emergency or 0),
                self_selected=chosen.get(hpr, 0),
            )
        )
    return sorted(found, key=lambda r: (-r.max_patients_per_day, r.hpr))


def profile(
    services: Services, tenant: str, start: datetime, end: datetime, hpr: str
) -> WorkerProfile | None:
    """``actors.worker_profile`` of the period's entries, counted in SQL; None when ``hpr`` made no
    access in the period."""
    services.audit_log.drain(tenant)
    base = _base(tenant, start, end)
    own = [*base, e.c.agent_hpr == hpr]
    with services.engine.connect() as conn:
        first = conn.execute(select(func.min(e.c.seq)).where(*own)).scalar()
        if first is None:
            return None
        organisation = conn.execute(
            select(e.c.organisation).where(e.c.tenant == tenant, e.c.seq == first)
        ).scalar()
        hour = (e.c.recorded // _HOUR_US).label("hour")
        hours = conn.execute(select(hour, func.count()).where(*own).group_by(hour)).all()
        purposes = conn.execute(select(e.c.purpose, func.count()).where(*own).group_by(e.c.purpose)).all()
        patients = conn.execute(
            select(e.c.patient_value).where(*own, e.c.patient_value.is_not(None)).distinct()
        ).scalars()
        masked = sorted({"*" * 8 + p[-3:] for p in patients if p})
        refused_seqs = list(
            conn.execute(
                select(e.c.seq).where(*own, e.c.outcome != Outcome.SUCCESS.value).order_by(e.c.seq)
            ).scalars()
        )
    same_org = e.c.organisation.is_(None) if organisation is None else e.c.organisation == organisation
    peers_where = [*base, e.c.agent_hpr.is_not(None), e.c.agent_hpr != "", e.c.agent_hpr != hpr, same_org]
    days, own_daily = _daily_patients(services, own, start, end)
    _, peer_daily = _daily_patients(services, peers_where, start, end)
    own_days = {days[int(d)]: int(n) for _h, d, n in own_daily}
    peer_days: dict[date, list[int]] = defaultdict(list)
    for _h, d, n in peer_daily:
        peer_days[days[int(d)]].append(int(n))
    series = []
    for d in sorted(set(own_days) | set(peer_days)):
        values = sorted(peer_days.get(d, []))
        median = statistics.median(values) if values else 0.0
        p95 = values[min(len(values) - 1, int(0.95 * len(values)))] if values else 0
        series.append((d, own_days.get(d, 0), float(median), float(p95)))
    heat = [[0] * 24 for _ in range(7)]
    for h, n in hours:
        local = (_EPOCH + timedelta(hours=int(h))).astimezone(OSLO)
        heat[local.weekday()][local.hour] += int(n)
    accesses = sum(int(n) for _h, n in hours)
    name = _named(services, tenant, _firsts(services, tenant, {hpr: int(first)}), own).get(hpr, hpr)
    counted: Counter[str] = Counter()
    for p, n in purposes:
        counted[p or "?"] += int(n)
    return WorkerProfile(
        hpr=hpr,
        name=name,
        days=series,
        heat=heat,
        purposes=dict(counted),
        refused=[view_of(x) for x in services.audit_log.entries_at(tenant, refused_seqs)],
        patients=masked,
        self_selected=_self_selected(services, tenant, own).get(hpr, 0),
        accesses=accesses,
        heat_max=max(max(row) for row in heat) or 1,
    )
