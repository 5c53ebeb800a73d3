"""Rule R8, self-access (console.md §5.2; docs/console-rules.md): a health worker whose attestation
carries their national identity number looks up patients through the API. The audit log records only a
keyed hash of that number; R8 fires for the look-up of themself and for no other, and the number is
never in a stored event, an export, a console page or a log line."""

from __future__ import annotations

import dataclasses
import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from sharing_api.app import create_app
from sharing_api.audit.pseudonym import PID_HASH_SYSTEM, PidHasher
from sharing_api.cli import main
from sharing_api.console import rules
from sharing_api.console.access_rows import ACCESS_ACTIONS, access_views
from sharing_api.console.reading import EntryView, view_of
from sharing_api.fhir.identifiers import FNR
from sharing_api.keyfiles import derive_secret, load_or_create
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, READ, ApiClient, Party
from tests.conftest import TENANT_A
from tests.console.conftest import access, login
from tests.factories import fnr, heart_rate, search_form

BASE = f"/{TENANT_A}/fhir"


def _period() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(days=1), now + timedelta(days=1)


@pytest.fixture
def nurse_pid() -> str:
    return fnr()


@pytest.fixture
def looked_up(
    client: ApiClient, services: Services, nurse_pid: str, caplog: pytest.LogCaptureFixture
) -> dict[str, str]:
    """The nurse (HPR 7654321, identity number ``nurse_pid``) searches two other patients and herself;
    another health worker (no identity number in the attestation) searches her too."""
    caplog.set_level(logging.DEBUG)
    client.add_party(
        Party(
            "nurse-epj",
            HOSPITAL,
            frozenset({READ}),
            point_of_care=HOSPITAL_UNIT,
            hpr="7654321",
            pid=nurse_pid,
        )
    )
    others = [fnr(), fnr()]
    for patient in (*others, nurse_pid):
        assert client.post(f"{BASE}/Observation", json=heart_rate(patient)).status_code == 201
    for patient in others:
        assert (
            client.post(
                f"{BASE}/Observation/_search", data=search_form(patient), party="nurse-epj"
            ).status_code
            == 200
        )
    assert (
        client.post(f"{BASE}/Observation/_search", data=search_form(nurse_pid), party="nurse-epj").status_code
        == 200
    )
    assert (
        client.post(f"{BASE}/Observation/_search", data=search_form(nurse_pid)).status_code == 200
    )  # "hospital"
    services.audit_log.drain(TENANT_A)
    return {"self": nurse_pid, "other": others[0]}


def test_r8_fires_for_the_self_access_only_and_never_shows_the_number(
    services: Services, looked_up: dict[str, str], console: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    pid = looked_up["self"]
    start, end = _period()
    run = rules.run(services, TENANT_A, start, end)
    hits = [f for f in run.flags if "R8" in f.rules]
    assert len(hits) == 1
    (hit,) = hits
    assert hit.severity == "high"
    assert hit.hpr == "7654321"
    (event,) = services.audit_log.entries_at(TENANT_A, hit.seqs)
    view = view_of(event)
    assert view.patient_value == pid
    assert view.agent_hpr == "7654321"
    assert pid not in hit.sentence
    assert hit.sentence.endswith(".")
    assert "R8" not in run.needs
    assert run.other_key == 0
    # the nurse's searches of others and the other health worker's search of her carry no R8 hit
    nurse_events = [view_of(e) for e in services.audit_log.entries(TENANT_A) if e.agent_hpr == "7654321"]
    assert len([v for v in nurse_events if v.pid_hash]) == 3

    rules.set_rule(services.engine, TENANT_A, "R8", False, None)  # per tenant, like every rule
    assert "R8" not in rules.run(services, TENANT_A, start, end).counts
    rules.set_rule(services.engine, TENANT_A, "R8", True, None)

    login(console)
    page = console.get("/console/review").data.decode()
    assert "R8" in page
    assert hit.sentence.split(":")[0] in page
    assert "slo opp seg selv" in page
    assert pid not in page
    _not_logged(caplog, pid)


def _only_as_the_patient(text: str, pid: str) -> bool:
    """``pid`` occurs in ``text`` only as a contained Patient's identifier (where it is the subject)."""
    return text.count(pid) == text.count(f'{{"system":"{FNR}","value":"{pid}"}}')


def test_the_number_is_only_ever_the_patient_in_events_exports_and_pages(
    services: Services,
    looked_up: dict[str, str],
    console: FlaskClient,
    client: ApiClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pid = looked_up["self"]
    stored = list(services.audit_log.entries(TENANT_A))
    by_nurse = [e for e in stored if e.agent_hpr == "7654321"]
    assert len(by_nurse) == 3
    hasher = services.auditor.pid_hash
    assert hasher is not None
    for entry in stored:
        assert _only_as_the_patient(entry.event.decode(), pid)
        hashed = [
            ident["value"]
            for res in orjson.loads(entry.event).get("contained", [])
            if res.get("resourceType") == "Practitioner"
            for ident in res.get("identifier", [])
            if ident.get("system") == PID_HASH_SYSTEM
        ]
        # the nurse's identity number as its keyed hash; none where the attestation carried no number
        assert hashed == ([hasher(pid)] if entry.agent_hpr == "7654321" else [])
    client.add_party(Party("auditor-a", TENANT_A, frozenset({"dho-share/audit.read"}), hpr=None))
    export = client.get(f"{BASE}/AuditEvent/$export", party="auditor-a")
    assert export.status_code == 200
    lines = [line for line in export.data.decode().splitlines() if line.strip()]
    assert len(lines) > len(stored)  # header, checkpoints, entries
    assert all(_only_as_the_patient(line, pid) for line in lines)
    csrf = login(console)
    for path in ("/console/", "/console/review", "/console/workers", "/console/workers/7654321"):
        page = console.get(path)
        assert page.status_code == 200, path
        assert pid not in page.data.decode(), path
    for e in by_nurse:
        page = console.get(f"/console/events/{e.seq}").data.decode()
        assert e.patient_value == pid or pid not in page
    csv = console.post("/console/events.csv", data={"csrf": csrf, "agent": "7654321"})
    assert csv.status_code == 200
    assert len(csv.data.decode().splitlines()) == 1 + len(by_nurse)
    assert pid not in csv.data.decode()  # the CSV names no patient, and the nurse by HPR and name only
    _not_logged(caplog, pid)


def _not_logged(caplog: pytest.LogCaptureFixture, pid: str) -> None:
    """``pid`` in no log record: message, arguments or structured fields (the request log's extras)."""
    assert caplog.records
    assert all(pid not in r.getMessage() and pid not in str(vars(r)) for r in caplog.records)


def _rule_facts(v: EntryView) -> tuple[object, ...]:
    """What the rules read of a view, names aside (those come from the full event for the hits shown)."""
    return (
        v.seq,
        v.recorded,
        v.action,
        v.outcome,
        v.purpose,
        v.patient_system,
        v.patient_value,
        v.agent_hpr,
        v.organisation,
        v.client_id,
        v.point_of_care,
        v.categories,
        "blocked-practitioner" in v.reasons,
        bool(v.user_selected),
        v.jti,
        v.description,
        v.pid_hash,
    )


def test_the_thin_reading_equals_the_parsed_one(services: Services, looked_up: dict[str, str]) -> None:
    """What ``access_rows`` cuts out of the event bytes is what ``reading.view_of`` parses."""
    start, end = _period()
    thin = access_views(services, TENANT_A, start, end)
    full = [v for v in rules.views_in(services, TENANT_A, start, end) if v.action in ACCESS_ACTIONS]
    assert len(thin) >= 4
    assert [_rule_facts(v) for v in thin] == [_rule_facts(v) for v in full]


def test_a_raw_number_is_refused_as_the_hash() -> None:
    facts = access(TENANT_A, datetime.now(UTC), fnr())
    with pytest.raises(ValueError, match="never the number"):
        dataclasses.replace(facts, practitioner_pid_hash=fnr())


def test_rotating_the_signing_keys_keeps_r8_firing_for_earlier_events(
    services: Services, settings: Settings, looked_up: dict[str, str], database_url: str
) -> None:
    """R8's secret has its own file: a key rotation and a restart leave it, and the earlier self-access
    still matches (with the secret derived from the signing-key file, it no longer did)."""
    start, end = _period()
    before = rules.run(services, TENANT_A, start, end)
    assert before.counts.get("R8") == 1
    keys = settings.signing_keys_path
    secret_file = settings.audit_self_access_key_path
    saved = keys.read_bytes()
    try:
        rotated = CliRunner().invoke(
            main,
            ["keys", "rotate"],
            env={"DHO_SIGNING_KEYS_PATH": str(keys), "DHO_DATABASE_URL": database_url},
        )
        assert rotated.exit_code == 0, rotated.output
        assert keys.read_bytes() != saved
        restarted = create_app(settings)  # every worker and the console start afresh after the rotation
        after = rules.run(restarted.extensions["dho"], TENANT_A, start, end)
    finally:
        keys.write_bytes(saved)
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert after.counts.get("R8") == 1
    assert after.other_key == 0
    assert [f.seqs for f in after.flags if "R8" in f.rules] == [
        f.seqs for f in before.flags if "R8" in f.rules
    ]


def test_a_changed_secret_says_it_cannot_compare_instead_of_passing(
    services: Services, settings: Settings, looked_up: dict[str, str], tmp_path: Path, auditors: object
) -> None:
    start, end = _period()
    other = create_app(settings.model_copy(update={"audit_self_access_key_path": tmp_path / "new.key"}))
    moved: Services = other.extensions["dho"]
    hasher, old = moved.auditor.pid_hash, services.auditor.pid_hash
    assert hasher is not None
    assert old is not None
    assert hasher.key_tag != old.key_tag  # the key id carried in every stored hash
    run = rules.run(moved, TENANT_A, start, end)
    assert "R8" not in run.counts
    assert run.other_key == 3  # the nurse's three look-ups, hashed under the earlier secret
    client = other.test_client()
    login(client)
    page = client.get("/console/review").data.decode()
    r8_row = page.split('data-rule="R8"')[1].split("</tr>")[0]
    assert "kan ikke sammenligne 3 oppslag: hemmeligheten er byttet" in r8_row


def test_an_upgraded_deployment_adopts_the_secret_its_events_were_hashed_with(
    settings: Settings, tmp_path: Path
) -> None:
    """Before R8's secret had a file it was derived from the signing-key file; a deployment that has a
    key file but no secret file keeps that secret, a new deployment gets a random one."""
    keys = tmp_path / "upgraded" / "signing-keys.json"
    load_or_create(keys)
    legacy = PidHasher(derive_secret(keys, "audit-self-access"))
    upgraded = settings.model_copy(
        update={"signing_keys_path": keys, "audit_self_access_key_path": keys.parent / "self-access.key"}
    )
    hasher = create_app(upgraded).extensions["dho"].auditor.pid_hash
    assert hasher.key_tag == legacy.key_tag
    assert hasher("01017012345") == legacy("01017012345")
    fresh_keys = tmp_path / "fresh" / "signing-keys.json"
    fresh = settings.model_copy(
        update={"signing_keys_path": fresh_keys, "audit_self_access_key_path": fresh_keys.parent / "s.key"}
    )
    fresh_hasher = create_app(fresh).extensions["dho"].auditor.pid_hash
    assert fresh_hasher.key_tag != PidHasher(derive_secret(fresh_keys, "audit-self-access")).key_tag
