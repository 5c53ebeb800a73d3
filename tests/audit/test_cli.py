"""``dho-share audit sequence|export|verify|report|public-key`` (product.md §7), on both backends."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.cli import audit
from sharing_api.audit.log import AuditLog
from tests.audit.factories import T0, TENANT, facts, fill


@pytest.fixture
def runner(database_url: str, key_file: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DHO_DATABASE_URL", database_url)
    monkeypatch.setenv("DHO_AUDIT_KEY_PATH", str(key_file))
    monkeypatch.setenv("DHO_PUBLIC_URL", "https://dho.kommune.example")
    monkeypatch.delenv("DHO_AUDIT_ORIGIN", raising=False)
    return CliRunner()


def test_sequence_export_and_verify(
    runner: CliRunner, log: AuditLog, signer: AuditSigner, tmp_path: Path
) -> None:
    fill(log, 30)
    result = runner.invoke(audit, ["sequence", "--checkpoint-every", "8"])
    assert result.exit_code == 0, result.output
    head = log.head(TENANT)
    assert head is not None
    assert head.size == 30
    fill(log, 5, start=30)  # pending: export sequences and signs them first
    out = tmp_path / "export.ndjson"
    assert runner.invoke(audit, ["export", TENANT, "-o", str(out)]).exit_code == 0
    # signed under the same log name as the API gives a new log (create_app: Settings.audit_log_origin)
    from sharing_api.settings import Settings

    name = orjson.loads(out.read_bytes().splitlines()[0])["log"]
    assert name == f"{Settings().audit_log_origin}/{TENANT}"
    assert "://" not in name  # C2SP: no scheme
    pem = tmp_path / "pinned.pem"
    pem.write_bytes(signer.public_key_pem())
    checked = runner.invoke(audit, ["verify", str(out), "--public-key", str(pem), "--json"])
    assert checked.exit_code == 0, checked.output
    report = orjson.loads(checked.output)
    assert (report["ok"], report["entries"], report["signed_size"], report["unsigned"]) == (True, 35, 35, 0)
    assert runner.invoke(audit, ["verify", str(out)]).exit_code == 0  # key from --key / DHO_AUDIT_KEY_PATH
    lines = out.read_bytes().splitlines(keepends=True)
    lines[-10] = lines[-10].replace(b'"9144897"', b'"1111111"')
    out.write_bytes(b"".join(lines))
    failed = runner.invoke(audit, ["verify", str(out), "--public-key", str(pem), "--json"])
    assert failed.exit_code == 1
    assert orjson.loads(failed.output)["problem"] == "altered"
    assert orjson.loads(failed.output)["index"] == 25
    human = runner.invoke(audit, ["verify", str(out), "--public-key", str(pem)])
    assert "first bad index" in human.output
    assert human.exit_code == 1


def test_public_key_is_printable_for_pinning(runner: CliRunner, signer: AuditSigner) -> None:
    result = runner.invoke(audit, ["public-key"])
    assert result.exit_code == 0
    assert signer.public_key_pem().decode() in result.output
    assert signer.verifier.vkey() in result.output


def test_report_as_table_and_json(runner: CliRunner, log: AuditLog) -> None:
    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        log.record(conn, facts(1, purpose_of_use="ETREAT"))
        log.record(conn, facts(2))
    args = ["report", TENANT, "--from", T0.isoformat(), "--to", (T0 + timedelta(days=1)).isoformat()]
    as_json = runner.invoke(audit, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = orjson.loads(as_json.output)
    assert data["totals"]["emergency"] == 1
    assert data["totals"]["outside_agreement"] == 2  # no agreements table rows: every foreign read
    table = runner.invoke(audit, [*args, "--no-agreements"], env={"COLUMNS": "240"})
    assert table.exit_code == 0
    assert "ETREAT" in table.output
    assert "emergency" in table.output
    naive = runner.invoke(audit, ["report", TENANT, "--from", "2025-03-19", "--to", "2025-03-20", "--json"])
    assert orjson.loads(naive.output)["from"] == "2025-03-19T00:00:00+01:00"  # Europe/Oslo by default
    bad = runner.invoke(audit, ["report", TENANT, "--from", "yesterday", "--to", "2025-03-20"])
    assert bad.exit_code == 2


def test_public_key_refuses_where_there_is_no_key_unless_asked_to_create_one(
    runner: CliRunner, tmp_path: Path
) -> None:
    nowhere = tmp_path / "missing" / "audit-key.pem"
    refused = runner.invoke(audit, ["public-key", "--key", str(nowhere)])
    assert refused.exit_code == 1
    assert f"no audit key at {nowhere}" in refused.output
    assert not nowhere.exists()  # nothing made behind the auditor's back
    created = runner.invoke(audit, ["public-key", "--key", str(nowhere), "--create"])
    assert created.exit_code == 0, created.output
    assert AuditSigner.load(nowhere).public_key_pem().decode() in created.output


def _refusals(log: AuditLog) -> None:
    """A reservation, a block, no agreement and a token without the read scope: four refused reads."""
    from sharing_api.audit.actions import AuditAction, Outcome
    from sharing_api.audit.events import SharingDecision

    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        for n, reason in enumerate(("reservation", "blocked-practitioner", "no-agreement"), start=10):
            log.record(
                conn,
                facts(
                    n,
                    action=AuditAction.OBSERVATION_SEARCH,
                    outcome=Outcome.MINOR_FAILURE,
                    decision=SharingDecision(permit=False, reasons=(reason,), used=()),
                    resources=(),
                ),
            )
        log.record(
            conn,
            facts(
                20,
                action=AuditAction.REQUEST_REFUSED,
                outcome=Outcome.MINOR_FAILURE,
                decision=None,
                resources=(),
                description="403: the token lacks the scope `dho-share/observation.read`",
            ),
        )


def test_report_says_why_a_request_was_refused_with_organisation_and_patient(
    runner: CliRunner, log: AuditLog
) -> None:
    from sharing_api.audit.control import REASONS_IN_WORDS

    _refusals(log)
    args = ["report", TENANT, "--from", T0.isoformat(), "--to", (T0 + timedelta(days=1)).isoformat()]
    data = orjson.loads(runner.invoke(audit, [*args, "--format", "json"]).output)
    denied = {f["seq"] if "seq" in f else f["patient"]: f for f in data["findings"] if f["kind"] == "denied"}
    whys = sorted(f["why"] for f in denied.values())
    expected = sorted(
        [REASONS_IN_WORDS[r] for r in ("reservation", "blocked-practitioner", "no-agreement")]
        + ["403: the token lacks the scope `dho-share/observation.read`"]
    )
    assert whys == expected
    for n, finding in zip(
        (10, 11, 12, 20), sorted(denied.values(), key=lambda f: f["recorded"]), strict=True
    ):
        assert finding["patient"] == facts(n).patient[1]  # type: ignore[index]
        assert finding["organisation"] == facts(n).organisation


def test_report_times_in_the_given_zone_and_as_csv(runner: CliRunner, log: AuditLog) -> None:
    import csv
    import io
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from sharing_api.audit.cli import REPORT_COLUMNS

    _refusals(log)
    args = ["report", TENANT, "--from", T0.isoformat(), "--to", (T0 + timedelta(days=1)).isoformat()]
    for zone in ("Europe/Oslo", "America/New_York"):
        out = runner.invoke(audit, [*args, "--format", "csv", "--tz", zone])
        assert out.exit_code == 0, out.output
        rows = list(csv.DictReader(io.StringIO(out.output)))
        assert tuple(rows[0]) == REPORT_COLUMNS
        first = min(datetime.fromisoformat(r["recorded"]) for r in rows if r["kind"] == "denied")
        assert first == T0 + timedelta(seconds=10)
        assert first.utcoffset() == (T0 + timedelta(seconds=10)).astimezone(ZoneInfo(zone)).utcoffset()
        as_json = orjson.loads(runner.invoke(audit, [*args, "--json", "--tz", zone]).output)
        assert (
            datetime.fromisoformat(as_json["from"]).utcoffset() == T0.astimezone(ZoneInfo(zone)).utcoffset()
        )
    default = orjson.loads(runner.invoke(audit, [*args, "--json"]).output)
    assert (
        datetime.fromisoformat(default["from"]).utcoffset()
        == T0.astimezone(ZoneInfo("Europe/Oslo")).utcoffset()
    )
    assert runner.invoke(audit, [*args, "--tz", "Mars/Olympus"]).exit_code == 2


def test_unusual_volume_counts_requests_as_well_as_patients(runner: CliRunner, log: AuditLog) -> None:
    from dataclasses import replace

    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        one_patient = facts(0)
        for n in range(6):  # six reads about one patient: few patients, many requests
            log.record(conn, replace(one_patient, recorded=T0 + timedelta(minutes=n), token_jti=f"j{n}"))
    args = [
        "report",
        TENANT,
        "--from",
        T0.isoformat(),
        "--to",
        (T0 + timedelta(days=1)).isoformat(),
        "--json",
    ]
    quiet = orjson.loads(runner.invoke(audit, [*args, "--volume-threshold", "5"]).output)
    assert quiet["totals"]["volume"] == 0
    loud = orjson.loads(
        runner.invoke(audit, [*args, "--volume-threshold", "5", "--request-threshold", "5"]).output
    )
    (volume,) = [f for f in loud["findings"] if f["kind"] == "volume"]
    assert (volume["agent_hpr"], volume["requests"], volume["patients"]) == (
        one_patient.practitioner_hpr,
        6,
        1,
    )
