"""``dho-share auditors add|list|disable`` (console accounts) and ``dho-share seed-audit`` (a synthetic
month of audit events, with the false-positive rate of the log-control rules measured on it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Engine

from sharing_api.settings import Settings

console = Console(stderr=True)


@contextmanager
def _engine() -> Iterator[Engine]:
    """The configured database, its connections closed afterwards."""
    from sharing_api.store.engine import make_engine

    engine = make_engine(Settings().database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@click.group()
def auditors() -> None:
    """Auditor accounts of the browser console (one tenant each; argon2id password hashes)."""


@auditors.command(name="add")
@click.argument("username")
@click.option("--tenant", required=True, help="The data controller's org.nr this auditor may see")
@click.option("--name", required=True, help="The auditor's name (shown in the console and the log)")
@click.password_option(help="The password (prompted twice when not given)")
def auditors_add(username: str, tenant: str, name: str, password: str) -> None:
    from sharing_api.console.accounts import AccountError, AuditorAccounts
    from sharing_api.store.tenants import TenantDirectory

    with _engine() as engine:
        if TenantDirectory(engine).get(tenant) is None:
            raise click.BadParameter(
                f"tenant {tenant} is not registered (dho-share tenants add)", param_hint="--tenant"
            )
        try:
            AuditorAccounts(engine).add(username, tenant, name, password)
        except AccountError as exc:
            raise click.BadParameter(str(exc)) from exc
    console.print(f"auditor {username} added for tenant {tenant}")


@auditors.command(name="list")
@click.option("--tenant", help="Only this tenant's auditors")
def auditors_list(tenant: str | None) -> None:
    from sharing_api.console.accounts import AuditorAccounts

    table = Table("username", "tenant", "name", "enabled")
    with _engine() as engine:
        found = AuditorAccounts(engine).list(tenant)
    for a in found:
        table.add_row(a.username, a.tenant, a.name, "yes" if a.enabled else "no")
    Console().print(table)


@auditors.command(name="disable")
@click.argument("username")
def auditors_disable(username: str) -> None:
    from sharing_api.console.accounts import AuditorAccounts

    with _engine() as engine:
        done = AuditorAccounts(engine).set_enabled(username, False)
    if not done:
        raise click.BadParameter(f"no auditor {username!r}")
    console.print(f"auditor {username} disabled (their sessions end at the next request)")


def register_path(settings: Settings) -> Path:
    """Where the seeded patients' family names go: ``DHO_PERSON_REGISTER``, else ``person-register.json``
    beside the signing keys (then printed, for the console to be started with it)."""
    return settings.person_register or settings.signing_keys_path.parent / "person-register.json"


def seed_and_measure(settings: Settings, tenant: str, days: int, seed: int) -> dict[str, float]:
    """Seed ``days`` of audit events and the seeded patients' family names (the stand-in person register,
    ``register_path``), and measure the rules, R9 included, on them; returns the figures printed."""
    import dataclasses

    from sharing_api.app import build_services
    from sharing_api.console import rules
    from sharing_api.console.persons import FileRegister, RegisterError, write_register
    from sharing_api.console.seeding import CONSUMERS, planted_flag, seed_month

    register = register_path(settings)
    try:
        write_register(register, {})  # made now if missing (0600), so that the services can read it
    except RegisterError as exc:
        raise click.ClickException(str(exc)) from exc
    svc = build_services(settings)
    try:
        if svc.tenants.get(tenant) is None:
            raise click.BadParameter(
                f"tenant {tenant} is not registered (dho-share tenants add)", param_hint="--tenant"
            )
        known = {a.consumer for a in svc.policy.agreements(controller=tenant)}
        for consumer in CONSUMERS:
            if consumer[0] not in known:
                svc.policy.add_agreement(
                    controller=tenant,
                    consumer=consumer[0],
                    categories=frozenset({"vital-signs"}),
                    purposes=frozenset({"TREAT", "COC", "ETREAT"}),  # type: ignore[arg-type]
                    valid_from=datetime.now(UTC) - timedelta(days=days + 400),
                )
        end = datetime.now(UTC)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("seeding audit events", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            hasher = svc.auditor.pid_hash
            result = seed_month(
                svc.audit_log, tenant, days, seed=seed, end=end, progress=advance, pid_hash=hasher
            )
        try:
            persons = write_register(register, result.surnames)
            svc = dataclasses.replace(svc, person_register=FileRegister.load(register))
        except RegisterError as exc:
            raise click.ClickException(str(exc)) from exc
        run = rules.run(svc, tenant, end - timedelta(days=days + 1), end + timedelta(days=1))
        false = [f for f in run.flags if not any(planted_flag(v) for v in _tags(svc, tenant, f.seqs))]
        detected = {t for f in run.flags for t in _tags(svc, tenant, f.seqs) if planted_flag(t)}
    finally:
        svc.engine.dispose()
    figures = {
        "events": result.events,
        "accesses": run.accesses,
        "explained": run.explained,
        "flags": len(run.flags),
        "false_positives": len(false),
        "false_positive_per_1000": 1000 * len(false) / run.accesses if run.accesses else 0.0,
        "planted": result.planted,
        "planted_flagged": len(detected),
        "r9_flags": run.counts.get("R9", 0),
        "r9_false_positives": sum(1 for f in false if "R9" in f.rules),
    }
    console.print(
        f"{result.events} audit events ({run.accesses} accesses, {run.explained} explained) over {days} days "
        f"in tenant {tenant}; {len(run.flags)} rule hits, {len(false)} not on a planted access: "
        f"false-positive rate {figures['false_positive_per_1000']:.2f} per 1,000 accesses; "
        f"{len(detected)} of {result.planted} planted accesses flagged"
    )
    console.print(
        f"R9 (same surname) on the person register {register} ({persons} persons): "
        f"{figures['r9_flags']} hits, {figures['r9_false_positives']} not on a planted access"
        + ("" if settings.person_register else "; set DHO_PERSON_REGISTER to it for the console to run R9")
    )
    for rid, lacking in run.needs.items():
        console.print(f"{rid} not run: {lacking}")
    return figures


def _tags(svc: object, tenant: str, seqs: list[int]) -> list[str | None]:
    from sharing_api.console.reading import view_of
    from sharing_api.services import Services

    assert isinstance(svc, Services)
    found = []
    for seq in seqs:
        for entry in svc.audit_log.search(tenant, after_seq=seq - 1, count=1, sequence_first=False):
            found.append(view_of(entry).correlation_id)
    return found


@click.command(name="seed-audit")
@click.option("--tenant", required=True, help="The tenant's org.nr")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 400))
@click.option("--seed", default=1, show_default=True, help="Random seed (same seed, same events)")
def seed_audit(tenant: str, days: int, seed: int) -> None:
    """Seed a synthetic month of audit events (with a few planted inappropriate accesses) and print the
    false-positive rate of the log-control rules on it."""
    seed_and_measure(Settings(), tenant, days, seed)


DEMO_AUDITOR = "demo-revisor"


def demo_console(settings: Settings, tenant: str, days: int) -> tuple[str, str]:
    """``make demo``: a month of audit events in ``tenant``'s log and a demo auditor with a fresh random
    password (printed once; a rerun sets a new one). Returns (username, password)."""
    import secrets

    from sharing_api.console.accounts import AuditorAccounts
    from sharing_api.store.engine import make_engine

    seed_and_measure(settings, tenant, days, seed=1)
    engine = make_engine(settings.database_url)
    try:
        accounts = AuditorAccounts(engine)
        password = secrets.token_urlsafe(12)
        if not accounts.set_password(DEMO_AUDITOR, password):
            accounts.add(DEMO_AUDITOR, tenant, "Demo Revisor", password)
        accounts.set_enabled(DEMO_AUDITOR, True)
    finally:
        engine.dispose()
    return DEMO_AUDITOR, password


@click.group(name="audit-rules")
def audit_rules() -> None:
    """The console's log-control rules R1-R14 per tenant: on/off and thresholds."""


@audit_rules.command(name="list")
@click.option("--tenant", required=True, help="The tenant's org.nr")
def audit_rules_list(tenant: str) -> None:
    from sharing_api.console import rules

    table = Table("rule", "title", "severity", "on", "threshold", "needs")
    with _engine() as engine:
        settings = rules.settings_of(engine, tenant)
    lacking = dict(rules.NEEDS)
    lacking.pop("R8")  # the API and the console always have the self-access secret
    if Settings().person_register is not None:
        lacking.pop("R9")
    for rid, setting in settings.items():
        rule = rules.RULES[rid]
        threshold = "-" if setting.threshold is None else str(setting.threshold)
        on = "yes" if setting.enabled else "no"
        table.add_row(rid, rule.title, rule.severity, on, threshold, lacking.get(rid, ""))
    Console().print(table)


@audit_rules.command(name="set")
@click.option("--tenant", required=True, help="The tenant's org.nr")
@click.argument("rule")
@click.option("--on/--off", "enabled", default=True, show_default=True)
@click.option("--threshold", type=click.IntRange(1), help="The rule's threshold (R3, R5, R11, R14)")
def audit_rules_set(tenant: str, rule: str, enabled: bool, threshold: int | None) -> None:
    from sharing_api.console import rules

    if rule not in rules.RULES:
        raise click.BadParameter(f"one of {', '.join(rules.RULES)}", param_hint="RULE")
    if threshold is not None and rules.RULES[rule].threshold is None:
        raise click.BadParameter(f"{rule} has no threshold", param_hint="--threshold")
    with _engine() as engine:
        rules.set_rule(engine, tenant, rule, enabled, threshold)
    console.print(f"{rule} for {tenant}: {'on' if enabled else 'off'}, threshold {threshold or 'default'}")


@click.command(name="console-rollup")
@click.option("--tenant", required=True, help="The tenant's org.nr")
@click.option("--rebuild", is_flag=True, help="Empty the tenant's rollup and fold the whole log again")
def console_rollup(tenant: str, rebuild: bool) -> None:
    """Fold the tenant's sequenced audit entries into the dashboard's rollup (the dashboard does this
    itself on each view; run it after a bulk import, or with --rebuild after "verify now" found the
    rollup wrong)."""
    from sharing_api.console import rollup
    from sharing_api.console.aggregates import OSLO

    with _engine() as engine:
        done = rollup.rebuild(engine, tenant, OSLO) if rebuild else rollup.fold(engine, tenant, OSLO)
        upto = rollup.folded(engine, tenant)
    console.print(f"{tenant}: {done} entries folded; the rollup holds the entries below index {upto}")


@audit_rules.command(name="watch")
@click.option("--tenant", required=True, help="The tenant's org.nr")
@click.argument("patient")
@click.option("--reason", required=True, help="Why the patient is watched (shown in R10's hits)")
def audit_rules_watch(tenant: str, patient: str, reason: str) -> None:
    """Put a patient (identifier value) on the tenant's watch list: rule R10 flags every unexplained
    access to them."""
    import getpass

    from sharing_api.console import rules

    try:
        with _engine() as engine:
            rules.watch(engine, tenant, patient, reason, f"cli:{getpass.getuser()}")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    console.print(f"watch list of {tenant}: 1 patient added ({reason})")


@audit_rules.command(name="unwatch")
@click.option("--tenant", required=True, help="The tenant's org.nr")
@click.argument("patient")
def audit_rules_unwatch(tenant: str, patient: str) -> None:
    """Take a patient off the tenant's watch list."""
    from sharing_api.console import rules

    with _engine() as engine:
        removed = rules.unwatch(engine, tenant, patient)
    if not removed:
        raise click.ClickException("that patient is not on the watch list")
    console.print(f"watch list of {tenant}: 1 patient removed")


@audit_rules.command(name="watched")
@click.option("--tenant", required=True, help="The tenant's org.nr")
def audit_rules_watched(tenant: str) -> None:
    """The tenant's watch list (identifiers masked to their last three digits)."""
    from sharing_api.console import rules

    with _engine() as engine:
        found = rules.watched(engine, tenant)
    table = Table("patient", "reason")
    for patient, reason in sorted(found.items()):
        table.add_row("*" * 8 + patient[-3:], reason)
    Console().print(table)
