"""The health-worker view and the organisation flows (console.md §5.1 pages 5 and 6), computed from the
console's view of the entries in a period (``rules.views_in``).

Health worker: distinct patients per Oslo day against the peers at the same organisation (median and
95th percentile of the peers' active days), an hour-of-day × weekday table of accesses, the purposes,
refusals, the rate of self-selected care relations, and the patients seen, masked (the last three
digits only). No performance metric is derived (the HSØ rule).

Organisation flows: consuming organisation × data category, with how many of those accesses no
agreement covered (shown in red with the words "utenfor avtale", never by colour alone).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date

from sharing_api.audit.actions import READ_ACTIONS, AuditAction
from sharing_api.console.aggregates import OSLO
from sharing_api.console.reading import EntryView
from sharing_api.console.rules import Cover, covered

__all__ = ["Flow", "WorkerProfile", "WorkerRow", "flows", "worker_profile", "workers"]

WEEKDAYS = ("man", "tir", "ons", "tor", "fre", "lør", "søn")


def _accesses(views: list[EntryView]) -> list[EntryView]:
    return [v for v in views if v.action in READ_ACTIONS or v.action == AuditAction.REQUEST_REFUSED]


def _daily_patients(views: list[EntryView]) -> dict[date, int]:
    days: dict[date, set[str]] = defaultdict(set)
    for v in views:
        if v.permitted and v.patient_value:
            days[v.recorded.astimezone(OSLO).date()].add(v.patient_value)
    return {d: len(p) for d, p in days.items()}


@dataclass(frozen=True, slots=True)
class WorkerRow:
    hpr: str
    name: str
    organisation: str
    accesses: int
    max_patients_per_day: int
    refused: int
    emergency: int
    self_selected: int


def workers(views: list[EntryView]) -> list[WorkerRow]:
    """One row per health worker, most distinct patients on one day first (the "radar")."""
    by_hpr: dict[str, list[EntryView]] = defaultdict(list)
    for v in _accesses(views):
        if v.agent_hpr:
            by_hpr[v.agent_hpr].append(v)
    rows = []
    for hpr, items in by_hpr.items():
        rows.append(
            WorkerRow(
                hpr=hpr,
                name=next((v.practitioner_name for v in items if v.practitioner_name), hpr),
                organisation=next((v.organisation_name or v.organisation or "" for v in items), ""),
                accesses=len(items),
                max_patients_per_day=max(_daily_patients(items).values(), default=0),
                refused=sum(1 for v in items if not v.permitted),
                emergency=sum(1 for v in items if v.emergency),
                self_selected=sum(1 for v in items if v.user_selected),
            )
        )
    return sorted(rows, key=lambda r: (-r.max_patients_per_day, r.hpr))


@dataclass(slots=True)
class WorkerProfile:
    hpr: str
    name: str
    days: list[tuple[date, int, float, float]]  # day, own distinct patients, peer median, peer p95
    heat: list[list[int]]  # [weekday][hour]
    purposes: dict[str, int]
    refused: list[EntryView]
    patients: list[str]
    self_selected: int
    accesses: int
    heat_max: int = field(default=1)


def worker_profile(views: list[EntryView], hpr: str) -> WorkerProfile | None:
    """The profile of ``hpr``, or None when they made no access in the period."""
    accesses = _accesses(views)
    own = [v for v in accesses if v.agent_hpr == hpr]
    if not own:
        return None
    organisation = own[0].organisation
    peers: dict[str, list[EntryView]] = defaultdict(list)
    for v in accesses:
        if v.agent_hpr and v.agent_hpr != hpr and v.organisation == organisation:
            peers[v.agent_hpr].append(v)
    peer_days: dict[date, list[int]] = defaultdict(list)
    for items in peers.values():
        for d, n in _daily_patients(items).items():
            peer_days[d].append(n)
    own_days = _daily_patients(own)
    days = []
    for d in sorted(set(own_days) | set(peer_days)):
        values = sorted(peer_days.get(d, []))
        median = statistics.median(values) if values else 0.0
        p95 = values[min(len(values) - 1, int(0.95 * len(values)))] if values else 0
        days.append((d, own_days.get(d, 0), float(median), float(p95)))
    heat = [[0] * 24 for _ in range(7)]
    for v in own:
        local = v.recorded.astimezone(OSLO)
        heat[local.weekday()][local.hour] += 1
    return WorkerProfile(
        hpr=hpr,
        name=next((v.practitioner_name for v in own if v.practitioner_name), hpr),
        days=days,
        heat=heat,
        purposes=dict(Counter(v.purpose or "?" for v in own)),
        refused=[v for v in own if not v.permitted],
        patients=sorted({"*" * 8 + v.patient_value[-3:] for v in own if v.patient_value}),
        self_selected=sum(1 for v in own if v.user_selected),
        accesses=len(own),
        heat_max=max(max(row) for row in heat) or 1,
    )


@dataclass(frozen=True, slots=True)
class Flow:
    organisation: str
    name: str
    category: str
    accesses: int
    outside: int


def flows(views: list[EntryView], tenant: str, agreements: list[Cover]) -> list[Flow]:
    """Reads by other organisations per data category, with how many no agreement covered."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    names: dict[str, str] = {}
    for v in views:
        if v.action not in READ_ACTIONS or not v.organisation or v.organisation == tenant:
            continue
        names.setdefault(v.organisation, v.organisation_name or v.organisation)
        inside = covered(v, tenant, agreements)
        for category in v.categories or ("ukjent",):
            cell = counts[(v.organisation, category)]
            cell[0] += 1
            cell[1] += 0 if inside else 1
    return [
        Flow(org, names[org], category, n, outside)
        for (org, category), (n, outside) in sorted(counts.items())
    ]
