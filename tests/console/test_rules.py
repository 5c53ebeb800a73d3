"""Log-control rules R1-R14 on a seeded synthetic month (console.md §5.2): every planted inappropriate
access is flagged, the false-positive rate stays within the budget (< 1 flag per 1,000 accesses),
explained accesses never reach the rules, and a rule switched off for a tenant stays silent."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import extract_parameters, profiles
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from sharing_api.app import create_app
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import build_audit_event
from sharing_api.cli import main
from sharing_api.console import rules
from sharing_api.console.access_rows import access_views
from sharing_api.console.accounts import AuditorAccounts
from sharing_api.console.cli import demo_console, seed_and_measure
from sharing_api.console.persons import (
    FileRegister,
    RegisterError,
    RegisterUnavailable,
    SurnameCheck,
    write_register,
)
from sharing_api.console.reading import EntryView, view_of
from sharing_api.console.seeding import CONSUMERS, RARER, RELATIVE, planted_flag, seed_month
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.conftest import TENANT_A
from tests.console.conftest import FNR, PRODUCT_DUMMY, PRODUCT_HASHER, access, login

COMMON_SURNAMES = Path(rules.__file__).parent / "data" / "common-surnames.csv"

END = datetime(2025, 6, 1, tzinfo=UTC)
DAYS = 14


@pytest.fixture
def seeded(services: Services, tmp_path: Path) -> Services:
    """A seeded fortnight, with the seeded patients' family names in a stand-in person register (R9)."""
    for consumer in CONSUMERS:
        services.policy.add_agreement(
            controller=TENANT_A,
            consumer=consumer[0],
            categories=frozenset({"vital-signs"}),
            purposes=frozenset({"TREAT", "COC", "ETREAT"}),  # type: ignore[arg-type]
            valid_from=datetime(2020, 1, 1, tzinfo=UTC),
        )
    seeded = seed_month(services.audit_log, TENANT_A, DAYS, end=END, pid_hash=services.auditor.pid_hash)
    write_register(tmp_path / "person-register.json", seeded.surnames)
    return dataclasses.replace(services, person_register=FileRegister.load(tmp_path / "person-register.json"))


def _run(services: Services) -> tuple[rules.RuleRun, dict[int, str | None]]:
    run = rules.run(services, TENANT_A, END - timedelta(days=DAYS + 1), END + timedelta(days=1))
    tags = {
        e.seq: view_of(e).correlation_id for e in services.audit_log.entries(TENANT_A) if e.seq is not None
    }
    return run, tags


def test_every_planted_access_is_flagged_and_false_positives_stay_in_budget(seeded: Services) -> None:
    run, tags = _run(seeded)
    planted = {t for t in tags.values() if planted_flag(t)}
    flagged = {tags[s] for f in run.flags for s in f.seqs}
    assert planted <= flagged
    for rule in ("R1", "R2", "R3", "R4", "R5", "R8", "R9", "R13", "R14"):  # each planted scenario's own rule
        assert any(rule in f.rules and any(planted_flag(tags[s]) for s in f.seqs) for f in run.flags), rule
    false = [f for f in run.flags if not any(planted_flag(tags[s]) for s in f.seqs)]
    assert 1000 * len(false) / run.accesses < 1.0
    assert run.explained > 0.9 * run.accesses  # explanation first: normal work never reaches the rules
    assert all(f.sentence.endswith(".") for f in run.flags)


def test_a_rule_switched_off_for_the_tenant_is_silent(
    seeded: Services, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DHO_DATABASE_URL", database_url)
    runner = CliRunner()
    off = runner.invoke(main, ["audit-rules", "set", "--tenant", TENANT_A, "R1", "--off"])
    assert off.exit_code == 0, off.output
    raised = runner.invoke(main, ["audit-rules", "set", "--tenant", TENANT_A, "R5", "--threshold", "100"])
    assert raised.exit_code == 0, raised.output
    assert (
        runner.invoke(main, ["audit-rules", "set", "--tenant", TENANT_A, "R1", "--threshold", "3"]).exit_code
        != 0
    )
    assert "R5" in runner.invoke(main, ["audit-rules", "list", "--tenant", TENANT_A]).output
    run, _ = _run(seeded)
    assert "R1" not in run.counts
    assert "R5" not in run.counts
    assert run.counts.get("R2") == 1


def test_rules_without_their_data_say_so_and_never_fire(seeded: Services) -> None:
    run, _ = _run(dataclasses.replace(seeded, person_register=None))  # no DHO_PERSON_REGISTER
    lacking = {rid for rid, rule in rules.RULES.items() if rule.needs}
    assert lacking == {"R9"}
    assert set(run.needs) == lacking
    assert "DHO_PERSON_REGISTER" in run.needs["R9"]
    assert not lacking & set(run.counts)
    assert run.no_surname == 0


def test_r9_surfaces_the_relative_with_r6_and_names_no_patient(
    seeded: Services, app: Flask, console: FlaskClient
) -> None:
    run, tags = _run(seeded)
    (hit,) = [f for f in run.flags if "R9" in f.rules]
    assert hit.rules == ("R6", "R9")  # only together with R6 or R7: a weak family signal
    assert [tags[s] for s in hit.seqs] == [RELATIVE]
    assert hit.severity == "medium"
    (event,) = seeded.audit_log.entries_at(TENANT_A, hit.seqs)
    patient = view_of(event).patient_value
    assert patient is not None
    assert hit.sentence == "Kari Nordmann: første kontakt og samme etternavn som pasienten i samme oppslag."
    assert run.counts["R9"] == 1
    # switched off for the tenant like every rule, R9 is silent and the access no longer surfaces
    rules.set_rule(seeded.engine, TENANT_A, "R9", False, None)
    off, _ = _run(seeded)
    assert "R9" not in off.counts
    assert not any(tags[s] == RELATIVE for f in off.flags for s in f.seqs)
    rules.set_rule(seeded.engine, TENANT_A, "R9", True, None)
    # the review queue shows the sentence, never the patient's identity number; the log holds no surname
    app.extensions["dho"] = seeded  # the app as started with DHO_PERSON_REGISTER
    login(console)
    page = console.get("/console/review?to=2025-06-01").data.decode()
    assert hit.sentence in page
    assert patient not in page
    r9_row = page.split('data-rule="R9"')[1].split("</tr>")[0]
    assert "kan ikke kjøres" not in r9_row
    assert seeded.person_register is not None
    assert seeded.person_register.family_names([patient]) == {patient: "Nordmann"}
    # the access's event holds the surname only as the health worker's name (the log has no patient names)
    assert event.event.count(b"Nordmann") == event.event.count(b"Kari Nordmann")


def _relative(practitioner: str, patient: str, n: int) -> EntryView:
    """A refused first look-up of ``patient`` by ``practitioner`` on a Tuesday morning: R6 only."""
    return EntryView(
        seq=n,
        recorded=datetime(2025, 3, 4, 10, n, tzinfo=UTC),
        action=AuditAction.REQUEST_REFUSED.value,
        outcome=Outcome.MINOR_FAILURE.value,
        purpose="TREAT",
        patient_system=FNR,
        patient_value=patient,
        agent_hpr=f"9{n:06d}",
        organisation="993467049",
        client_id="ous-dips-epj",
        practitioner_name=practitioner,
        organisation_name="Oslo universitetssykehus HF",
        point_of_care="874716782",
        healthcare_service=None,
        purpose_details=None,
        categories=("vital-signs",),
        reasons=("no-consent",),
        user_selected=False,
        decision_ref=None,
        jti=f"jti-{n}",
        description="403: refused",
    )


def _defaults() -> dict[str, rules.Setting]:
    return {rid: rules.Setting(True, rule.threshold) for rid, rule in rules.RULES.items()}


def test_r9_ignores_the_fifty_commonest_surnames_of_ssbs_list() -> None:
    """The expectation comes from the data file R9 reads (SSB's list), not from a list in this test."""
    lines = COMMON_SURNAMES.read_text(encoding="utf-8").splitlines()
    assert any("Statistics Norway (SSB)" in line for line in lines if line.startswith("#"))
    common = [row["surname"] for row in csv.DictReader(line for line in lines if not line.startswith("#"))]
    assert len(common) == len(set(common)) == 50
    rare = [name for name in RARER if name not in common]
    assert rare == list(RARER)
    names = {f"0101{n:07d}": surname for n, surname in enumerate(common + rare)}
    check = SurnameCheck(FileRegister(names))
    views = [_relative(f"Kari {surname}", patient, n) for n, (patient, surname) in enumerate(names.items())]
    run = rules.run_views(
        views,
        TENANT_A,
        [],
        _defaults(),
        same_surname=lambda vs: check([(v.practitioner_name, v.patient_value) for v in vs]),
    )
    flagged = {
        names[str(v.patient_value)] for f in run.flags if "R9" in f.rules for v in views if v.seq in f.seqs
    }
    assert flagged == set(rare)
    assert run.no_surname == 0
    # a double surname sharing an uncommon part counts; one sharing only a common part does not
    double = SurnameCheck(FileRegister({"a": "Fjellheim", "b": "Hansen", "c": "Berg Fjellheim"}))
    pairs = [("Ola Berg-Fjellheim", "a"), ("Ola Hansen-Berg", "b"), ("Ola Fjellheim", "c"), ("", "a")]
    assert double(pairs) == [True, False, True, None]


def test_r9_counts_what_it_cannot_judge_and_says_when_the_register_is_down() -> None:
    views = [_relative("Kari Fjellheim", "01017000001", 1), _relative("Kari Fjellheim", "01017000002", 2)]
    check = SurnameCheck(FileRegister({"01017000001": "Fjellheim"}))
    run = rules.run_views(
        views,
        TENANT_A,
        [],
        _defaults(),
        same_surname=lambda vs: check([(v.practitioner_name, v.patient_value) for v in vs]),
    )
    assert run.counts.get("R9") == 1
    assert run.no_surname == 1  # the register does not know the second patient: counted, not passed

    def down(_: list[EntryView]) -> list[bool | None]:
        raise RegisterUnavailable("Persontjenesten answered 503")

    failed = rules.run_views(views, TENANT_A, [], _defaults(), same_surname=down)
    assert "R9" not in failed.counts
    assert "did not answer" in failed.needs["R9"]


def test_the_person_register_file_is_refused_unless_only_its_owner_may_read_it(
    tmp_path: Path, settings: Settings
) -> None:
    path = tmp_path / "register.json"
    previous = os.umask(0o022)
    try:
        assert write_register(path, {"01017000001": "Fjellheim"}) == 1
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert write_register(path, {"01017000002": "Kvam"}) == 2  # merged
    path.chmod(0o644)
    with pytest.raises(RegisterError, match="chmod 600") as refused:
        FileRegister.load(path)
    assert "01017000001" not in str(refused.value)
    with pytest.raises(RuntimeError, match="chmod 600"):
        create_app(settings.model_copy(update={"person_register": path}))
    path.chmod(0o600)
    path.write_text('{"01017000001": ""}', encoding="utf-8")
    with pytest.raises(RegisterError, match="entry 1") as empty:
        FileRegister.load(path)
    assert "01017000001" not in str(empty.value)
    assert "01017000002" not in repr(FileRegister({"01017000002": "Kvam"}))


def test_seed_audit_plants_the_relative_and_measures_r9(services: Services, tmp_path: Path) -> None:
    register = tmp_path / "register.json"
    figures = seed_and_measure(
        services.settings.model_copy(update={"person_register": register}), TENANT_A, 7, 1
    )
    assert figures["planted_flagged"] == figures["planted"]
    assert figures["r9_flags"] >= 1
    assert figures["false_positive_per_1000"] < 1.0
    assert stat.S_IMODE(register.stat().st_mode) == 0o600
    assert (
        "Nordmann"
        in FileRegister.load(register).family_names(list(json.loads(register.read_text()))).values()
    )


def test_r10_flags_unexplained_accesses_to_a_watched_patient_only(
    seeded: Services, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, _ = _run(seeded)
    assert "R10" not in before.counts  # an empty watch list: R10 is silent
    views = [view_of(e) for e in seeded.audit_log.entries(TENANT_A)]
    flagged = {s for f in before.flags for s in f.seqs}
    # a patient with both explained accesses and an access some rule flagged (so: unexplained)
    unexplained = {v.patient_value for v in views if v.seq in flagged and v.patient_value}
    patient = sorted(unexplained)[0]
    monkeypatch.setenv("DHO_DATABASE_URL", database_url)
    runner = CliRunner()
    added = runner.invoke(
        main, ["audit-rules", "watch", "--tenant", TENANT_A, patient, "--reason", "ansatt som pasient"]
    )
    assert added.exit_code == 0, added.output
    listed = runner.invoke(main, ["audit-rules", "watched", "--tenant", TENANT_A]).output
    assert patient not in listed
    assert patient[-3:] in listed
    after, _ = _run(seeded)
    hits = [f for f in after.flags if f.rules == ("R10",)]
    agreements = rules.covers(seeded, TENANT_A)
    expected = {
        v.seq
        for v in views
        if v.patient_value == patient
        and (v.action in rules.READ_ACTIONS or v.action == "request.refused")
        and not (v.permitted and v.purpose in ("TREAT", "COC") and rules.covered(v, TENANT_A, agreements))
    }
    assert expected
    assert {s for f in hits for s in f.seqs} == expected
    assert all("ansatt som pasient" in f.sentence and patient not in f.sentence for f in hits)
    assert runner.invoke(main, ["audit-rules", "unwatch", "--tenant", TENANT_A, patient]).exit_code == 0
    assert "R10" not in _run(seeded)[0].counts


def test_auditor_accounts_from_the_command_line(
    database_url: str, monkeypatch: pytest.MonkeyPatch, services: Services
) -> None:
    monkeypatch.setenv("DHO_DATABASE_URL", database_url)
    runner = CliRunner()
    added = runner.invoke(
        main,
        [
            "auditors",
            "add",
            "kari.revisor",
            "--tenant",
            TENANT_A,
            "--name",
            "Kari R",
            "--password",
            "a long enough password",
        ],
    )
    assert added.exit_code == 0, added.output
    weak = runner.invoke(
        main, ["auditors", "add", "ola", "--tenant", TENANT_A, "--name", "Ola", "--password", "short"]
    )
    assert weak.exit_code != 0
    assert "password" in weak.output
    unknown = runner.invoke(
        main,
        [
            "auditors",
            "add",
            "per",
            "--tenant",
            "999999999",
            "--name",
            "Per",
            "--password",
            "a long enough password",
        ],
    )
    assert unknown.exit_code != 0
    listed = runner.invoke(main, ["auditors", "list"])
    assert "kari.revisor" in listed.output
    accounts = AuditorAccounts(services.engine)
    assert accounts.authenticate("kari.revisor", "a long enough password") is not None
    with accounts.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT password_hash FROM console_auditors").scalar()
    assert str(stored).startswith("$argon2id$")
    assert runner.invoke(main, ["auditors", "disable", "kari.revisor"]).exit_code == 0
    assert accounts.authenticate("kari.revisor", "a long enough password") is None


def test_the_product_hashes_passwords_with_rfc_9106_low_memory_argon2id() -> None:
    """The console tests hash with a cheap argon2id profile (tests/console/conftest.py); this pins what
    the product itself uses: RFC 9106's second recommended parameter set, for the unknown-user dummy
    hash too (so an unknown username costs the same argon2 work as a wrong password)."""
    expected = profiles.RFC_9106_LOW_MEMORY
    used = (
        PRODUCT_HASHER.type,
        PRODUCT_HASHER.time_cost,
        PRODUCT_HASHER.memory_cost,
        PRODUCT_HASHER.parallelism,
        PRODUCT_HASHER.hash_len,
        PRODUCT_HASHER.salt_len,
    )
    assert used == (
        expected.type,
        expected.time_cost,
        expected.memory_cost,
        expected.parallelism,
        expected.hash_len,
        expected.salt_len,
    )
    dummy = extract_parameters(PRODUCT_DUMMY)
    assert (dummy.type, dummy.time_cost, dummy.memory_cost, dummy.parallelism) == used[:4]


@pytest.mark.long
def test_the_demo_seeds_a_month_and_its_printed_login_works(app: Flask, services: Services) -> None:
    username, password = demo_console(services.settings, TENANT_A, 30)
    client = app.test_client()
    assert client.post("/console/login", data={"username": username, "password": password}).status_code == 302
    page = client.get("/console/").data.decode()
    assert int(re.search(r'id="tile-requests">(\d+)<', page).group(1)) > 1000
    again, new_password = demo_console(services.settings, TENANT_A, 1)  # a rerun sets a new password
    assert again == username
    assert AuditorAccounts(services.engine).authenticate(username, password) is None
    assert AuditorAccounts(services.engine).authenticate(username, new_password) is not None


def test_the_rules_on_accesses_cut_out_of_the_bytes_equal_the_rules_on_parsed_events(
    seeded: Services,
) -> None:
    """``rules.run`` (accesses cut out of the event bytes, sentences from the full events of the hits)
    finds exactly the hits, with the same sentences, as the rules over every event parsed whole; also
    for events of a shape the SQL does not cut (read whole instead)."""
    odd = []
    for n, shape in enumerate(("named-location", "two-category-entities")):
        when = END - timedelta(hours=30 + n)
        facts = access(TENANT_A, when, f"0101700{n:04d}", hpr="9999999", org="912345678")
        event = build_audit_event(facts)
        if shape == "named-location":
            for res in event["contained"]:
                if res["resourceType"] == "Location":
                    res["name"] = "Poliklinikk 3"
        else:
            event["entity"].append({"detail": [{"type": "data-category", "valueString": "blood-pressure"}]})
        odd.append(event)
    with seeded.engine.connect().execution_options(write=True) as conn, conn.begin():
        for event in odd:
            seeded.audit_log.append(conn, TENANT_A, event)
    start, end = END - timedelta(days=DAYS + 1), END + timedelta(days=1)
    fast = rules.run(seeded, TENANT_A, start, end)
    reference = rules.run_views(
        list(rules.views_in(seeded, TENANT_A, start, end)),
        TENANT_A,
        rules.covers(seeded, TENANT_A),
        rules.settings_of(seeded.engine, TENANT_A),
        rules.watched(seeded.engine, TENANT_A),
        seeded.auditor.pid_hash,
        same_surname=rules.surname_check(seeded, TENANT_A),
    )

    def hits(run: rules.RuleRun) -> list[tuple[object, ...]]:
        return [(f.key, f.rules, f.severity, f.sentence, f.seqs, f.hpr, f.organisation) for f in run.flags]

    assert (fast.accesses, fast.explained) == (reference.accesses, reference.explained)
    assert hits(fast) == hits(reference)
    assert any(f.hpr == "9999999" for f in fast.flags)  # the odd events reached the rules
    read = access_views(seeded, TENANT_A, start, end)
    assert [v.agent_hpr for v in read if v.practitioner_name] == ["9999999", "9999999"]  # read whole
    assert "R8" in fast.counts
    assert "R9" in fast.counts
