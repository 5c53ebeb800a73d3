"""Log-control rules R1-R14 (console.md §5.2), run over one tenant's log for a period, explanation first.

An access is *explained*, and no rule looks at it, when all of these hold: it was permitted, its purpose
is TREAT or COC, and it is the controller's own organisation or an agreement covers the consumer, the
data categories and the purpose at that moment. The rest goes through the rules. R1, R2, R4 and R13
fire on their own; R6, R7, R9 and R12 are *weak* signals that only surface together (two or more on
one access), following the OUS weighted-score design and Hedda et al.'s finding that single weak rules
over-fire. R10 fires on every unexplained access to a patient on the tenant's watch list
(``console_watchlist``, kept with ``dho-share audit-rules watch``). Each rule can be switched off and
its threshold changed per tenant (``console_rule_settings``). A rule that lacks its data is listed as
such (``RuleRun.needs``), never silently "passing": R9 when no person register is configured (the log
holds no patient names), and R8 when no self-access key is given. R9 (same surname) asks the person
register (``persons``) for the surnames of the patients of the accesses that already carry R6 or R7,
when the queue is built; the names are never stored or shown, only that the surnames matched. Accesses
R9 could not judge (the register does not know the patient) are counted (``RuleRun.no_surname``).
R8 (self-access) fires on its own on *every* access, explained or not: it compares the keyed hash of
the health worker's identity number the event records (``audit.pseudonym``) with the same hash of the
patient's identifier, and never shows either number (docs/console-rules.md); accesses hashed under
another secret (another key id) are counted (``RuleRun.other_key``: "secret changed"), not passed.

``run`` reads the accesses as ``access_rows`` cuts them out of the event bytes (no JSON parsing) and
builds sentences only for the hits shown (``explain_shown``); ``run_views`` is the same rules over any
views (the tests feed it synthetic ones, and ``views_in``'s fully parsed ones as the reference).

A hit is a ``Flag`` with one sentence saying why it needs review ("krever vurdering": never proof).
Triage (explained with a note, escalated, reopened) is stored in ``console_triage`` and recorded in
the audit log by the console (``AuditAction.AUDIT_TRIAGE``).
"""

from __future__ import annotations

import bisect
import hmac
import itertools
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, delete, insert, select

from sharing_api.audit.actions import READ_ACTIONS, AuditAction
from sharing_api.audit.control import AgreementPeriod
from sharing_api.audit.pseudonym import PidHasher, key_tag_of
from sharing_api.console.aggregates import OSLO
from sharing_api.console.persons import RegisterUnavailable, SurnameCheck
from sharing_api.console.reading import EntryView, view_of
from sharing_api.store.schema import console_rule_settings, console_triage, console_watchlist

if TYPE_CHECKING:
    from sharing_api.services import Services

__all__ = ["RULES", "TRIAGE_STATES", "Flag", "Rule", "RuleRun", "run", "run_views"]

TRIAGE_STATES = ("explained", "escalated", "open")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RESULTS = re.compile(r"with (\d+) results?")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    title: str
    severity: str
    threshold: int | None
    weak: bool = False
    needs: str = ""  # what data the rule lacks, when it cannot run on this log


RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule("R1", "Nødrett (akutt tilgang)", "high", None),
        Rule("R2", "Treff på sperre", "high", None),
        Rule("R3", "Gjentatte avvisninger (per 24 t)", "medium", 3),
        Rule("R4", "Utenfor avtale", "medium", None),
        Rule("R5", "Uvanlig mange pasienter per dag", "medium", 20),
        Rule("R6", "Første kontakt uten tidligere relasjon", "low", None, weak=True),
        Rule("R7", "Utenfor arbeidstid (23-06, helg)", "low", None, weak=True),
        Rule("R8", "Oppslag på seg selv", "high", None),
        Rule(
            "R9",
            "Samme etternavn",
            "low",
            None,
            weak=True,
            needs="patients' surnames: no person register (DHO_PERSON_REGISTER; docs/console-rules.md)",
        ),
        Rule("R10", "Overvåkingsliste", "medium", None),
        Rule("R11", "Leting (mange søk uten treff per time)", "medium", 20),
        Rule("R12", "Selvautorisasjon", "low", None, weak=True),
        Rule("R13", "Avvikende legitimasjon (to virksomheter på 10 min)", "high", None),
        Rule("R14", "Masseuttrekk (søk med mange treff)", "medium", 50),
    )
}

NEEDS: dict[str, str] = {
    **{rid: r.needs for rid, r in RULES.items() if r.needs},
    "R8": "the deployment's self-access key (no PidHasher given; docs/console-rules.md)",
}
"""Rules that cannot run, and what they lack; R8 runs whenever the deployment's key is given, R9 whenever a
person register is."""

SameSurname = Callable[[list[EntryView]], list[bool | None]]
"""R9's question for a list of accesses (``persons.SurnameCheck`` over the accesses' names)."""


@dataclass(frozen=True, slots=True)
class Setting:
    enabled: bool
    threshold: int | None


@dataclass(slots=True)
class Flag:
    key: str
    rules: tuple[str, ...]
    severity: str
    sentence: str
    when: datetime
    hpr: str | None
    organisation: str | None
    seqs: list[int] = field(default_factory=list)
    say: Callable[[EntryView], str] | None = field(default=None, repr=False, compare=False)
    """Builds ``sentence`` from the full view of ``named`` (``explain``): names only for hits shown."""
    named: EntryView | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class RuleRun:
    accesses: int
    explained: int
    flags: list[Flag]
    counts: dict[str, int]
    settings: dict[str, Setting]
    needs: dict[str, str] = field(default_factory=dict)
    """Rules that could not run on this log, and what they lack."""
    other_key: int = 0
    """Accesses whose identity-number hash was made under another secret than today's: R8 cannot compare
    them (the secret changed; the key id in each hash says so)."""
    no_surname: int = 0
    """Accesses R9 looked at whose patient the person register does not know (or no name in the event)."""

    @property
    def per_thousand(self) -> float:
        return 1000 * len(self.flags) / self.accesses if self.accesses else 0.0


# -- settings and triage -----------------------------------------------------------------------------


def settings_of(engine: Engine, tenant: str) -> dict[str, Setting]:
    found = {rid: Setting(True, rule.threshold) for rid, rule in RULES.items()}
    with engine.connect() as conn:
        for row in conn.execute(
            select(console_rule_settings).where(console_rule_settings.c.tenant == tenant)
        ):
            if row.rule in found:
                found[row.rule] = Setting(bool(row.enabled), row.threshold)
    return found


def set_rule(engine: Engine, tenant: str, rule: str, enabled: bool, threshold: int | None) -> None:
    if rule not in RULES:
        raise ValueError(f"rule: one of {', '.join(RULES)}")
    t = console_rule_settings
    with engine.begin() as conn:
        conn.execute(delete(t).where(t.c.tenant == tenant, t.c.rule == rule))
        conn.execute(
            insert(t).values(
                tenant=tenant, rule=rule, enabled=enabled, threshold=threshold, updated=time.time_ns() // 1000
            )
        )


def triage_states(engine: Engine, tenant: str) -> dict[str, tuple[str, str, str]]:
    """flag key -> (state, note, auditor)."""
    t = console_triage
    with engine.connect() as conn:
        return {
            r.flag: (r.state, r.note, r.auditor) for r in conn.execute(select(t).where(t.c.tenant == tenant))
        }


def set_triage(engine: Engine, tenant: str, flag: str, state: str, note: str, auditor: str) -> None:
    t = console_triage
    with engine.begin() as conn:
        conn.execute(delete(t).where(t.c.tenant == tenant, t.c.flag == flag))
        conn.execute(
            insert(t).values(
                tenant=tenant,
                flag=flag,
                state=state,
                note=note[:1000],
                auditor=auditor,
                updated=time.time_ns() // 1000,
            )
        )


# -- the watch list (R10) ---------------------------------------------------------------------------


def watch(engine: Engine, tenant: str, patient: str, reason: str, added_by: str) -> None:
    """Put ``patient`` (the identifier value, as logged) on ``tenant``'s watch list, or change its reason."""
    if not patient.strip() or len(patient) > 64:
        raise ValueError("patient: the patient's identifier value (at most 64 characters)")
    if not reason.strip():
        raise ValueError("reason: why the patient is watched is required")
    t = console_watchlist
    with engine.begin() as conn:
        conn.execute(delete(t).where(t.c.tenant == tenant, t.c.patient_value == patient.strip()))
        conn.execute(
            insert(t).values(
                tenant=tenant,
                patient_value=patient.strip(),
                reason=reason.strip()[:500],
                added_by=added_by,
                added=time.time_ns() // 1000,
            )
        )


def unwatch(engine: Engine, tenant: str, patient: str) -> bool:
    t = console_watchlist
    with engine.begin() as conn:
        done = conn.execute(delete(t).where(t.c.tenant == tenant, t.c.patient_value == patient.strip()))
    return done.rowcount == 1


def watched(engine: Engine, tenant: str) -> dict[str, str]:
    """patient identifier value -> reason, of ``tenant``'s watch list."""
    t = console_watchlist
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.patient_value, t.c.reason).where(t.c.tenant == tenant)).all()
    return {r.patient_value: r.reason for r in rows}


# -- agreements ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cover:
    consumer: str
    categories: frozenset[str]
    purposes: frozenset[str]
    start: datetime
    end: datetime | None


def covers(services: Services, tenant: str) -> list[Cover]:
    found = []
    for a in services.policy.agreements(controller=tenant):
        found.append(
            Cover(
                a.consumer,
                frozenset(a.categories),
                frozenset(str(p) for p in a.purposes),
                a.period.start or _EPOCH,
                a.period.end,
            )
        )
    return found


def agreement_periods(services: Services, tenant: str) -> list[AgreementPeriod]:
    """The tenant's agreements as ``control.log_control`` takes them (as ``dho-share audit report``)."""
    return [(c.consumer, c.start, c.end) for c in covers(services, tenant)]


def covered(view: EntryView, tenant: str, agreements: list[Cover]) -> bool:
    if view.organisation in (None, tenant):
        return True
    return any(
        c.consumer == view.organisation
        and c.start <= view.recorded
        and (c.end is None or view.recorded < c.end)
        and (view.purpose or "") in c.purposes
        and set(view.categories) <= c.categories
        for c in agreements
    )


# -- running -----------------------------------------------------------------------------------------


def views_in(services: Services, tenant: str, start: datetime, end: datetime) -> Iterator[EntryView]:
    """Every entry of ``[start, end)`` but the decision records, through the API's search (pending
    entries sequenced once first, not before each page)."""
    services.audit_log.drain(tenant)
    after = None
    while True:
        page = services.audit_log.search(
            tenant, date_from=start, date_to=end, count=1000, after_seq=after, sequence_first=False
        )
        for entry in page:
            if entry.action != AuditAction.ACCESS_DECISION.value:
                yield view_of(entry)
        if len(page) < 1000:
            return
        after = page[-1].seq


def run(
    services: Services, tenant: str, start: datetime, end: datetime, *, explain_all: bool = True
) -> RuleRun:
    """Every enabled rule over ``tenant``'s log in ``[start, end)``, on the accesses as
    ``access_rows`` cuts them out of the event bytes. Without ``explain_all`` the hits have no sentence yet:
    ``explain_shown`` gives them to the hits a page shows (reading only those events whole)."""
    from sharing_api.console.access_rows import access_views

    result = run_views(
        access_views(services, tenant, start, end),
        tenant,
        covers(services, tenant),
        settings_of(services.engine, tenant),
        watched(services.engine, tenant),
        services.auditor.pid_hash,
        same_surname=surname_check(services, tenant),
        explain_all=False,
    )
    if explain_all:
        explain_shown(services, tenant, result.flags)
    return result


def surname_check(services: Services, tenant: str) -> SameSurname | None:
    """R9's question over the person register the deployment configured (None: there is none), naming
    the health workers of the thin views from their full events."""
    from sharing_api.console.access_rows import full_views

    register = services.person_register
    if register is None:
        return None
    check = SurnameCheck(register)

    def same_surname(views: list[EntryView]) -> list[bool | None]:
        thin = [v.seq for v in views if v.seq is not None and v.practitioner_name is None]
        full = full_views(services, tenant, thin) if thin else {}
        named = [full.get(v.seq, v) if v.seq is not None else v for v in views]
        return check([(n.practitioner_name, n.patient_value) for n in named])

    return same_surname


def explain_shown(services: Services, tenant: str, flags: list[Flag]) -> list[Flag]:
    """Sentences for ``flags``, naming health workers and organisations from their full events."""
    from sharing_api.console.access_rows import full_views

    full = full_views(services, tenant, [f.named.seq for f in flags if f.named and f.named.seq is not None])
    return explain(flags, lambda v: full.get(v.seq, v) if v.seq is not None else v)


def _window(items: list[EntryView], i: int, span: timedelta) -> list[EntryView]:
    """``items[i]`` and the items after it within ``span`` of it (``items`` sorted by time)."""
    until = items[i].recorded + span
    return items[i : bisect.bisect_right(items, until, lo=i, key=lambda x: x.recorded)]


def _results(view: EntryView) -> int | None:
    found = _RESULTS.search(view.description or "")
    return int(found.group(1)) if found else None


def run_views(
    views: list[EntryView],
    tenant: str,
    agreements: list[Cover],
    settings: dict[str, Setting],
    watch_list: dict[str, str] | None = None,
    pid_hash: PidHasher | None = None,
    *,
    same_surname: SameSurname | None = None,
    explain_all: bool = True,
) -> RuleRun:
    """The rules over already read entries (pure: tests feed synthetic entries). With ``explain_all``
    every hit gets its sentence now; without, ``explain`` gives them for the hits shown (the views may
    then be the thin ones of ``access_rows``, without names)."""
    needs = dict(NEEDS)
    if pid_hash is not None:
        del needs["R8"]
    if same_surname is not None:
        del needs["R9"]
    on = {rid for rid, s in settings.items() if s.enabled and rid not in needs}

    def limit(rid: str) -> int:
        return settings[rid].threshold or RULES[rid].threshold or 1

    accesses = [v for v in views if v.action in READ_ACTIONS or v.action == AuditAction.REQUEST_REFUSED]
    explained = [
        v
        for v in accesses
        if v.permitted and v.purpose in ("TREAT", "COC") and covered(v, tenant, agreements)
    ]
    explained_ids = {id(v) for v in explained}
    rest = [v for v in accesses if id(v) not in explained_ids]
    per_event: dict[int, list[str]] = defaultdict(list)
    flags: list[Flag] = []

    def add(
        rids: tuple[str, ...],
        say: Callable[[EntryView], str],
        evidence: list[EntryView],
        severity: str,
    ) -> None:
        first = evidence[0]
        key = f"{'+'.join(rids)}:{first.seq if first.seq is not None else int(first.recorded.timestamp())}"
        flags.append(
            Flag(
                key,
                rids,
                severity,
                "",
                first.recorded,
                first.agent_hpr,
                first.organisation,
                [v.seq for v in evidence if v.seq is not None],
                say=say,
                named=first,
            )
        )

    def who(n: EntryView) -> str:
        return n.practitioner_name or n.agent_hpr or n.client_id or "ukjent"

    def org(n: EntryView) -> str:
        return n.organisation_name or n.organisation or "ukjent virksomhet"

    other_key = 0
    if "R8" in on and pid_hash is not None:
        # Every access, explained or not: an agreement and a treatment purpose are exactly what a health
        # worker looking themself up would claim. The identity number is never in the sentence.
        hashed: dict[str, str] = {}
        for v in accesses:
            if not (v.pid_hash and v.patient_value):
                continue
            if key_tag_of(v.pid_hash) != pid_hash.key_tag:
                other_key += 1
                continue
            mine = hashed.get(v.patient_value)
            if mine is None:
                mine = hashed[v.patient_value] = pid_hash(v.patient_value)
            if hmac.compare_digest(v.pid_hash, mine):
                add(
                    ("R8",),
                    lambda n: f"{who(n)} ({org(n)}) slo opp seg selv: samme fødselsnummer som pasienten.",
                    [v],
                    "high",
                )
    for v in rest:
        if "R1" in on and v.emergency:
            add(
                ("R1",),
                lambda n: (
                    f"{who(n)} ({org(n)}) brukte nødrett ({n.purpose}); krever vurdering innen 7 dager."
                ),
                [v],
                "high",
            )
        if "R2" in on and not v.permitted and "blocked-practitioner" in v.reasons:
            add(
                ("R2",),
                lambda n: (
                    f"{who(n)} ({org(n)}) ble stoppet av pasientens sperre mot navngitt helsepersonell."
                ),
                [v],
                "high",
            )
        if "R10" in on and v.patient_value and v.patient_value in (watch_list or {}):
            reason = (watch_list or {})[v.patient_value]
            add(
                ("R10",),
                lambda n, reason=reason: (
                    f"{who(n)} ({org(n)}) slo opp en pasient på overvåkingslisten"  # type: ignore[misc]
                    f" ({reason}) uten at avtale og formål forklarer det."
                ),
                [v],
                "medium",
            )
        # Emergency access is R1's; R4 asks whether an agreement covers the consumer and the data.
        plain = replace(v, purpose="TREAT") if v.emergency else v
        if "R4" in on and v.action in READ_ACTIONS and not covered(plain, tenant, agreements):
            severity = "critical" if v.permitted else "medium"
            what = "fikk data" if v.permitted else "prøvde å hente data"
            add(
                ("R4",),
                lambda n, what=what: (  # type: ignore[misc]
                    f"{org(n)} {what} uten en gyldig avtale som dekker formål og datakategori."
                ),
                [v],
                severity,
            )
        local = v.recorded.astimezone(OSLO)
        if "R7" in on and (local.hour >= 23 or local.hour < 6 or local.weekday() >= 5):
            per_event[id(v)].append("R7")
        if "R12" in on and v.user_selected:
            per_event[id(v)].append("R12")

    # R6: first contact of a health worker with a patient, no earlier contact from the same place.
    if "R6" in on:
        seen: set[tuple[str | None, str | None]] = set()
        for v in sorted(accesses, key=lambda x: x.recorded):
            key = (v.point_of_care or v.organisation, v.patient_value)
            if key not in seen and id(v) not in explained_ids:
                per_event[id(v)].append("R6")
            seen.add(key)

    by_id = {id(v): v for v in rest}
    # R9: only where R6 or R7 already holds (a weak family signal on its own), asked of the register once.
    no_surname = 0
    if "R9" in on and same_surname is not None:
        asked = [by_id[vid] for vid, weak in per_event.items() if vid in by_id and {"R6", "R7"} & set(weak)]
        try:
            answers = same_surname(asked) if asked else []
        except RegisterUnavailable as exc:
            needs["R9"] = f"the person register did not answer ({exc})"
            asked, answers = [], []
        for v, same in zip(asked, answers, strict=True):
            if same:
                per_event[id(v)].append("R9")
            elif same is None:
                no_surname += 1
    words = {
        "R6": "første kontakt",
        "R7": "utenfor arbeidstid",
        "R9": "samme etternavn som pasienten",
        "R12": "selvautorisert",
    }
    for vid, weak in per_event.items():
        if len(weak) >= 2 and vid in by_id:
            said = " og ".join(words[w] for w in sorted(weak))
            add(
                tuple(sorted(weak)),
                lambda n, said=said: f"{n.practitioner_name or n.agent_hpr}: {said} i samme oppslag.",  # type: ignore[misc]
                [by_id[vid]],
                "medium",
            )

    by_hpr: dict[str, list[EntryView]] = defaultdict(list)
    for v in accesses:
        if v.agent_hpr:
            by_hpr[v.agent_hpr].append(v)
    for hpr, items in by_hpr.items():
        items.sort(key=lambda x: x.recorded)

        def name(n: EntryView, hpr: str = hpr) -> str:
            return n.practitioner_name or hpr

        if "R3" in on:
            refused = [v for v in items if not v.permitted]
            flagged_until = None
            for i, v in enumerate(refused):
                window = _window(refused, i, timedelta(hours=24))
                if len(window) >= limit("R3") and (flagged_until is None or v.recorded > flagged_until):
                    count = len(window)
                    add(
                        ("R3",),
                        lambda n, count=count, name=name: (  # type: ignore[misc]
                            f"{name(n)} ble avvist {count} ganger innen 24 timer."
                        ),
                        window,
                        "medium",
                    )
                    flagged_until = window[-1].recorded
        if "R5" in on:
            per_day: dict[object, list[EntryView]] = defaultdict(list)
            for v in items:
                if v.permitted and v.action in READ_ACTIONS:
                    per_day[v.recorded.astimezone(OSLO).date()].append(v)
            for day, day_items in sorted(per_day.items(), key=lambda kv: str(kv[0])):
                patients = {v.patient_value for v in day_items if v.patient_value}
                if len(patients) > limit("R5"):
                    seen_n, most = len(patients), limit("R5")
                    add(
                        ("R5",),
                        lambda n, seen_n=seen_n, day=day, most=most, name=name: (  # type: ignore[misc]
                            f"{name(n)} så {seen_n} ulike pasienter {day} (grense {most})."
                        ),
                        day_items,
                        "medium",
                    )
        if "R13" in on:
            for a, b in itertools.pairwise(items):
                if (
                    a.organisation
                    and b.organisation
                    and a.organisation != b.organisation
                    and b.recorded - a.recorded <= timedelta(minutes=10)
                ):
                    add(
                        ("R13",),
                        lambda n, name=name: f"{name(n)} var aktiv fra to virksomheter innen 10 minutter.",  # type: ignore[misc]
                        [a, b],
                        "high",
                    )
                    break
    if "R13" in on:
        clients_of: dict[str, set[str]] = defaultdict(set)
        first_of: dict[str, EntryView] = {}
        for v in accesses:
            if v.jti and v.client_id:
                clients_of[v.jti].add(v.client_id)
                first_of.setdefault(v.jti, v)
        for jti, clients in clients_of.items():
            if len(clients) > 1:
                add(("R13",), _same_jti, [first_of[jti]], "high")
    if "R11" in on or "R14" in on:
        results = [(v, _results(v)) for v in accesses if v.description]
        for v, found in results:
            if "R14" in on and found is not None and found >= limit("R14") and v.action in READ_ACTIONS:
                add(
                    ("R14",),
                    lambda n, found=found: (  # type: ignore[misc]
                        f"Et søk fra {n.organisation_name or n.organisation} ga {found} treff."
                    ),
                    [v],
                    "medium",
                )
        empty: dict[str, list[EntryView]] = defaultdict(list)
        for v, found in results:
            if found == 0:
                empty[v.agent_hpr or v.client_id or "?"].append(v)
        if "R11" in on:
            for searcher, items in empty.items():
                items.sort(key=lambda x: x.recorded)
                for i in range(len(items)):
                    window = _window(items, i, timedelta(hours=1))
                    if len({w.patient_value for w in window}) >= limit("R11"):
                        count = len(window)
                        add(
                            ("R11",),
                            lambda n, searcher=searcher, count=count: (  # type: ignore[misc]
                                f"{searcher} søkte på {count} pasienter uten treff innen en time."
                            ),
                            window,
                            "medium",
                        )
                        break
    counts: dict[str, int] = defaultdict(int)
    for f in flags:
        for r in f.rules:
            counts[r] += 1
    flags.sort(key=lambda f: ({"critical": 0, "high": 1, "medium": 2, "low": 3}[f.severity], f.when))
    if explain_all:
        explain(flags, lambda v: v)
    return RuleRun(len(accesses), len(explained), flags, dict(counts), settings, needs, other_key, no_surname)


def _same_jti(_: EntryView) -> str:
    return "Samme token (jti) ble brukt av to klienter."


def explain(flags: list[Flag], look: Callable[[EntryView], EntryView]) -> list[Flag]:
    """Give ``flags`` their sentences, naming through ``look`` (a thin view -> the full view)."""
    for f in flags:
        if f.say is not None and f.named is not None:
            f.sentence = f.say(look(f.named))
    return flags
