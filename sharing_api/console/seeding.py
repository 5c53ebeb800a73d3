"""A synthetic month of audit events for one tenant (``dho-share seed-audit``): the console's demo data
and the "normal month" on which the false-positive rate of the log-control rules is measured
(console.md §5.2 "false-positive budget").

Normal work: health workers at three consuming organisations (with sharing agreements) look up their
own small panels of patients on weekdays in working hours, for treatment or coordination of care; a
few look-ups in the evening, a few self-selected care relations, now and then a refusal. Planted
inappropriate accesses (each with ``correlation_id`` ``planted-<rule>-<n>``, so the measurement can tell
them apart; the rules never read it): an emergency access (R1), a hit on a patient's block (R2),
repeated refusals (R3), a read by an organisation without an agreement (R4), a night of snooping on
many patients (R5, R7), two legal entities within minutes (R13), a search with many results (R14),
and a health worker looking up themself (R8: the patient's identifier is the worker's own identity
number; the event records only the keyed hash ``pid_hash`` makes of it), and a health worker trying to
look up a relative (R6 first contact with R9 same surname: refused, in working hours, so no other rule
surfaces it). All identity numbers are synthetic (month + 80, as the project's other synthetic data);
the health workers' own numbers come from a range no seeded patient uses, so only the planted look-up
is a self-access.

``SeedResult.surnames`` gives every seeded patient a family name, for the stand-in person register R9
reads (``persons.write_register``; the log never holds them): most from the 50 commonest in Norway
(``persons.common_surnames``' list, which R9 ignores), some from rarer ones, among them a health
worker's own (Nordmann), so that a coincidence in a normal month can count as a false positive.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import Engine

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import AuditFacts, Coded, DecisionRef, SharingDecision, build_audit_events
from sharing_api.audit.log import AuditLog
from sharing_api.console.aggregates import OSLO
from sharing_api.console.persons import common_surnames
from sharing_api.store import audit_partitions

__all__ = ["CONSUMERS", "SeedResult", "planted_flag", "seed_month"]

FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
CONSUMERS = (
    ("993467049", "Oslo universitetssykehus HF", "874716782", "S03", "Indremedisin"),
    ("983974899", "Helse Bergen HF", "974557746", "S10", "Hjertesykdommer"),
    ("974633574", "Legesenteret Nord", "974633574", "S34", "Allmennlegetjeneste"),
)
NO_AGREEMENT = ("912345678", "Privatklinikken AS", "912345678", "S34", "Allmennlegetjeneste")
FIRST = ("Kari", "Ola", "Ingrid", "Per", "Sofie", "Lars", "Nora", "Emil", "Ida", "Jonas", "Maja", "Aksel")
LAST = ("Nordmann", "Hansen", "Johansen", "Olsen", "Larsen", "Berg", "Dahl", "Lie", "Moen", "Haugen")
RARER = ("Nordmann", "Fjellheim", "Skjærvø", "Aamodt", "Rustad", "Tveiten", "Grønli", "Kvam", "Sunde")
"""Family names of some seeded patients beyond the commonest (none of them on SSB's top 50)."""
RELATIVE = "planted-R9-1"


def _fnr(n: int) -> str:
    return f"{(n % 28) + 1:02d}{81 + n % 12:02d}{70 + n // 10000 % 30:02d}{n % 10000:05d}"


@dataclass(frozen=True, slots=True)
class SeedResult:
    events: int
    planted: int
    patients: list[str]
    surnames: dict[str, str]
    """patient identifier -> family name, for the stand-in person register (module docstring)."""


@dataclass(frozen=True, slots=True)
class _Worker:
    hpr: str
    name: str
    consumer: tuple[str, str, str, str, str]
    panel: list[str]
    client: str
    pid: str = ""


_RELATIVE_PID = _fnr(60_000)


def _surnames(patients: list[str], seed: int) -> dict[str, str]:
    """A family name for each patient (module docstring); the planted relative shares worker 0's."""
    rng = random.Random(seed + 1)  # noqa: S311 (synthetic data, apart from the events' own sequence)
    common = sorted(common_surnames())
    found = {}
    for patient in patients:
        name = rng.choice(RARER) if rng.random() < 0.15 else rng.choice(common)
        found[patient] = name[:1].upper() + name[1:]
    if _RELATIVE_PID in found:
        found[_RELATIVE_PID] = LAST[0]
    return found


def planted_flag(correlation_id: str | None) -> bool:
    return bool(correlation_id and correlation_id.startswith("planted-"))


def _facts(
    tenant: str,
    when: datetime,
    worker: _Worker,
    patient: str,
    *,
    purpose: str = "TREAT",
    permit: bool = True,
    reasons: tuple[str, ...] = ("permit-agreement",),
    consumer: tuple[str, str, str, str, str] | None = None,
    user_selected: bool = False,
    results: int = 1,
    tag: str,
    n: int,
    pid_hash: Callable[[str], str] | None = None,
) -> AuditFacts:
    org, org_name, unit, service, service_name = consumer or worker.consumer
    return AuditFacts(
        action=AuditAction.OBSERVATION_SEARCH if permit else AuditAction.REQUEST_REFUSED,
        outcome=Outcome.SUCCESS if permit else Outcome.MINOR_FAILURE,
        recorded=when,
        tenant=tenant,
        client_id=worker.client if consumer is None else f"{org}-epj",
        organisation=org,
        organisation_name=org_name,
        point_of_care=unit,
        practitioner_hpr=worker.hpr,
        practitioner_pid_hash=pid_hash(worker.pid) if pid_hash and worker.pid else None,
        practitioner_name=worker.name,
        purpose_of_use=purpose,
        healthcare_service=Coded(
            system="urn:oid:2.16.578.1.12.4.1.1.8655", code=service, display=service_name
        ),
        decision_ref=DecisionRef(id=f"d-{n}", user_selected=user_selected),
        attested_at=when,
        patient=(FNR, patient),
        data_categories=("vital-signs",),
        decision=SharingDecision(permit=permit, reasons=reasons),
        token_jti=f"jti-{n}",
        correlation_id=tag,
        description=f"search with {results} result{'s' if results != 1 else ''}"
        if permit
        else "403: refused",
        server="https://dho.kommune.example",
    )


def _month(
    tenant: str, days: int, end: datetime, rng: random.Random, pid_hash: Callable[[str], str] | None
) -> Iterator[AuditFacts]:
    workers = []
    n_patient = 0
    for i in range(12):
        consumer = CONSUMERS[i % len(CONSUMERS)]
        panel = [_fnr(n_patient + k) for k in range(25)]
        n_patient += 25
        name = f"{FIRST[i]} {LAST[i % len(LAST)]}"
        hpr = f"9{100000 + i * 7919:06d}"
        workers.append(_Worker(hpr, name, consumer, panel, f"{consumer[0]}-epj", _fnr(50_000 + i)))
    n = 0
    start_day = (end - timedelta(days=days)).astimezone(OSLO).date()
    for d in range(days):
        day = start_day + timedelta(days=d)
        for w in workers:
            weekend = day.weekday() >= 5
            look_ups = rng.randint(0, 2) if weekend else rng.randint(5, 12)
            for _ in range(look_ups):
                hour = rng.randint(8, 15) if not weekend else rng.randint(10, 14)
                if rng.random() < 0.03:
                    hour = rng.choice((19, 20, 21, 22))
                when = datetime.combine(day, time(hour, rng.randint(0, 59), rng.randint(0, 59)), OSLO)
                patient = rng.choice(w.panel[:15]) if rng.random() < 0.9 else rng.choice(w.panel)
                n += 1
                if rng.random() < 0.01:
                    yield _facts(
                        tenant,
                        when,
                        w,
                        patient,
                        permit=False,
                        reasons=("no-consent",),
                        tag=f"n-{n}",
                        n=n,
                        pid_hash=pid_hash,
                    )
                    continue
                yield _facts(
                    tenant,
                    when,
                    w,
                    patient,
                    purpose="TREAT" if rng.random() < 0.85 else "COC",
                    user_selected=rng.random() < 0.05,
                    results=rng.randint(1, 12),
                    tag=f"n-{n}",
                    n=n,
                    pid_hash=pid_hash,
                )
    if days >= 7:  # the planted accesses fall in the last week of the period
        yield from _planted(tenant, workers, start_day, days, n, pid_hash)


def _planted(
    tenant: str,
    workers: list[_Worker],
    start_day: object,
    days: int,
    n: int,
    pid_hash: Callable[[str], str] | None,
) -> Iterator[AuditFacts]:
    assert isinstance(start_day, type(datetime.now().date()))
    mid = start_day + timedelta(days=days - 7)

    def at(day_offset: int, hour: int, minute: int = 0) -> datetime:
        return datetime.combine(mid + timedelta(days=day_offset), time(hour, minute), OSLO)

    facts = functools.partial(_facts, pid_hash=pid_hash)
    w0, w1, w2, w3 = workers[0], workers[1], workers[2], workers[3]
    n += 1
    yield facts(tenant, at(0, 10), w0, w0.panel[20], purpose="ETREAT", tag="planted-R1-1", n=n)
    n += 1
    yield facts(
        tenant,
        at(1, 11),
        w1,
        w1.panel[3],
        permit=False,
        reasons=("blocked-practitioner",),
        tag="planted-R2-1",
        n=n,
    )
    for k in range(4):
        n += 1
        yield facts(
            tenant,
            at(2, 9, 10 * k),
            w2,
            w0.panel[k],
            permit=False,
            reasons=("no-consent",),
            tag=f"planted-R3-{k}",
            n=n,
        )
    n += 1
    yield facts(tenant, at(3, 13), w3, w3.panel[1], consumer=NO_AGREEMENT, tag="planted-R4-1", n=n)
    snoop = workers[4]
    others = [p for w in workers[5:] for p in w.panel]
    for k in range(25):
        n += 1
        yield facts(
            tenant, at(4, 23, 2 * k) - timedelta(hours=1), snoop, others[k], tag=f"planted-R5-{k}", n=n
        )
    n += 1
    yield facts(tenant, at(5, 10, 0), w1, w1.panel[2], tag="planted-R13-a", n=n)
    n += 1
    yield facts(tenant, at(5, 10, 5), w1, w1.panel[2], consumer=CONSUMERS[2], tag="planted-R13-b", n=n)
    n += 1
    yield facts(tenant, at(6, 14), w2, w2.panel[0], results=80, tag="planted-R14-1", n=n)
    n += 1  # Kari Nordmann tries her brother's measurements: a first contact, refused for want of consent
    yield facts(
        tenant, at(3, 10, 15), w0, _RELATIVE_PID, permit=False, reasons=("no-consent",), tag=RELATIVE, n=n
    )
    if pid_hash is not None:  # a nurse looks up her own measurements, in working hours, for "treatment"
        me = workers[6]
        n += 1
        yield facts(tenant, at(2, 13, 30), me, me.pid, tag="planted-R8-1", n=n)


def seed_month(
    log: AuditLog,
    tenant: str,
    days: int,
    *,
    seed: int = 1,
    end: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    pid_hash: Callable[[str], str] | None = None,
) -> SeedResult:
    """Append a synthetic ``days`` of look-ups (module docstring) to ``tenant``'s log, ending at ``end``
    (default now), in batches of 500 events per transaction; then sequence them. ``progress(done,
    total)`` is called after each batch. ``pid_hash`` (the deployment's ``Auditor.pid_hash``) records
    the health workers' identity numbers as the API does, and plants the self-access (R8)."""
    rng = random.Random(seed)  # noqa: S311 (reproducible synthetic data, not secrets)
    all_facts = list(_month(tenant, days, end or datetime.now(UTC), rng, pid_hash))
    engine: Engine = log.engine
    if all_facts:  # PostgreSQL: the months of the period need their partitions (store.audit_partitions)
        first = audit_partitions.Month.of(min(f.recorded for f in all_facts))
        audit_partitions.ensure(engine, now=datetime.now(UTC), since=first)
    patients = sorted({f.patient[1] for f in all_facts if f.patient})
    events = 0
    for i in range(0, len(all_facts), 500):
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            for facts in all_facts[i : i + 500]:
                for event in build_audit_events(facts):
                    log.append(conn, tenant, event)
                    events += 1
        if progress:
            progress(min(i + 500, len(all_facts)), len(all_facts))
    log.drain(tenant)
    planted = sum(1 for f in all_facts if planted_flag(f.correlation_id))
    return SeedResult(events, planted, patients, _surnames(patients, seed))
