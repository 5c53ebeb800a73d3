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
