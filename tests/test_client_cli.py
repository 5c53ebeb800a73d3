"""The client side of the command line (issue 9): ``dho-share publish`` and ``query`` against a live
server set up by ``dho-share demo``, and what a user sees when something is wrong: one line naming
what failed and where, never a traceback; lists whole when piped and as JSON on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sharing_api.cli import main
from tests.demo_server import DEMO_TENANT, Demo, demo
from tests.live_server import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
__all__ = ["demo"]  # the module-scoped fixture


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def tsv(output: str) -> list[list[str]]:
    return [line.split("\t") for line in output.splitlines() if "\t" in line]


# --- publishing -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_publish_an_observation_prints_its_outcome(demo: Demo) -> None:
    first = run("publish", "--profile", str(demo.municipality), str(EXAMPLES / "weight.json"))
    assert first.exit_code == 0, first.output
    header, row = tsv(first.output)
    assert header == ["entry", "status", "location", "outcome"]
    assert row[0] == "Observation"
    assert row[1] in ("201", "200")  # 200 when an earlier run stored it (idempotent by identifier)
    assert f"/{DEMO_TENANT}/fhir/Observation/" in row[2]
    again = run("publish", "--profile", str(demo.municipality), str(EXAMPLES / "weight.json"))
    assert tsv(again.output)[1][1] == "200"
    assert tsv(again.output)[1][2] == row[2] if row[1] == "200" else True


@pytest.mark.slow
def test_publish_a_batch_from_stdin_prints_one_row_per_entry(demo: Demo) -> None:
    bundle = (EXAMPLES / "batch.json").read_text(encoding="utf-8")
    result = run("publish", "--profile", str(demo.municipality), "-", stdin=bundle)
    assert result.exit_code == 0, result.output
    header, *rows = tsv(result.output)
    assert header == ["entry", "fullUrl", "status", "location", "outcome"]
    assert [r[1] for r in rows] == [e["fullUrl"] for e in json.loads(bundle)["entry"]]
    assert all(r[2].startswith(("201", "200")) for r in rows), rows


@pytest.mark.slow
def test_publish_json_prints_the_raw_response_and_a_refusal_exits_1(demo: Demo, tmp_path: Path) -> None:
    bad = json.loads((EXAMPLES / "spo2.json").read_text(encoding="utf-8"))
    bad["valueQuantity"]["value"] = 150
    bad["identifier"][0]["value"] = "example-spo2-out-of-range"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    as_json = run("publish", "--profile", str(demo.municipality), "--json", str(path))
    assert as_json.exit_code == 1
    outcome = json.loads(as_json.output)
    assert outcome["resourceType"] == "OperationOutcome"
    as_table = run("publish", "--profile", str(demo.municipality), str(path))
    assert as_table.exit_code == 1
    (_, row) = tsv(as_table.output)
    assert row[1] == "400"
    assert "Observation.valueQuantity.value" in row[3]


def test_publish_refuses_what_is_neither_an_observation_nor_a_bundle(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    profile.write_text("{}", encoding="utf-8")
    result = run("publish", "--profile", str(profile), "-", stdin='{"resourceType": "Patient"}')
    assert result.exit_code == 2
    assert "expected Observation or Bundle" in result.output


# --- reading ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_query_ids_are_whole_when_piped(demo: Demo) -> None:
    args = ["query", "--profile", str(demo.hospital), "--tenant", DEMO_TENANT, "--patient", demo.patient]
    bundle = json.loads(run(*args, "--json").output)
    ids = {e["resource"]["id"] for e in bundle["entry"]}
    assert ids
    table = run(*args)
    assert table.exit_code == 0, table.output
    header, *rows = tsv(table.output)
    assert header[-1] == "id"
    assert {r[-1] for r in rows} == ids


def test_query_with_an_invalid_national_identity_number_says_so(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    profile.write_text("{}", encoding="utf-8")
    result = run("query", "--profile", str(profile), "--tenant", DEMO_TENANT, "--patient", "12345678901")
    assert result.exit_code == 2
    assert "not a valid national identity number" in result.output
    assert "measurements" not in result.output


@pytest.mark.slow
def test_a_missing_scope_is_named(demo: Demo) -> None:
    # The municipality's client may publish but not read: the token service names the scope it lacks.
    result = run(
        "query", "--profile", str(demo.municipality), "--tenant", DEMO_TENANT, "--patient", demo.patient
    )
    assert result.exit_code == 1
    assert "`dho-share/observation.read`" in result.output
    assert "Traceback" not in result.output


def test_a_stopped_server_is_one_line_naming_where(demo_profile_for_nowhere: Path) -> None:
    for args in (
        ["query", "--tenant", DEMO_TENANT, "--patient", "28811381391"],
        ["publish", str(EXAMPLES / "weight.json")],
        ["token"],
    ):
        result = run(args[0], "--profile", str(demo_profile_for_nowhere), *args[1:])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        port = json.loads(demo_profile_for_nowhere.read_text())["issuer"].rsplit(":", 1)[1]
        assert f"cannot reach http://127.0.0.1:{port}/" in lines[0]
        assert "refused" in lines[0].lower()


@pytest.fixture
def demo_profile_for_nowhere(tmp_path: Path) -> Path:
    """A profile whose server is not running (a free port nobody listens on)."""
    from joserfc.jwk import ECKey

    (tmp_path / "k.json").write_text(json.dumps(ECKey.generate_key("P-256").as_dict(private=True)))
    base = f"http://127.0.0.1:{free_port()}"
    profile = tmp_path / "nowhere.json"
    profile.write_text(
        json.dumps({"issuer": base, "client_id": "x", "key": "k.json", "organisation": "987654325"})
    )
    return profile


# --- lists ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_keys_carry_a_kid_that_clients_list_shows(demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHO_DATABASE_URL", demo.database_url)
    listed = json.loads(run("clients", "list", "--json").output)
    demo_clients = {c["client_id"]: c for c in listed}
    for client_id in ("demo-kommune-dho", "demo-sykehus-epj"):
        key = json.loads((demo.directory / "var" / "demo" / f"{client_id}.key.json").read_text())
        assert key["kid"]
        assert demo_clients[client_id]["kids"] == [key["kid"]]
        assert any(r[0] == client_id and r[-1] == key["kid"] for r in tsv(run("clients", "list").output))


def test_piped_agreement_ids_are_whole_and_end_takes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DHO_DATABASE_URL", f"sqlite:///{tmp_path}/a.sqlite3")
    assert run("db", "upgrade").exit_code == 0
    assert run("tenants", "add", DEMO_TENANT, "--name", "K").exit_code == 0
    assert run("agreements", "add", "--controller", DEMO_TENANT, "--consumer", "987654325").exit_code == 0
    header, row = tsv(run("agreements", "list").output)
    assert header[0] == "id"
    (listed,) = json.loads(run("agreements", "list", "--json").output)
    assert row[0] == listed["id"]
    ended = run("agreements", "end", row[0])
    assert ended.exit_code == 0, ended.output
    assert json.loads(run("agreements", "list", "--json").output)[0]["to"] is not None
    tenants = json.loads(run("tenants", "list", "--json").output)
    assert tenants == [{"orgnr": DEMO_TENANT, "name": "K", "resh_ids": []}]


@pytest.mark.slow
def test_clients_add_auditor_makes_a_key_and_profile_that_fetch_and_verify_use(
    demo: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sharing_api.audit.cli import audit

    monkeypatch.setenv("DHO_DATABASE_URL", demo.database_url)
    monkeypatch.setenv("DHO_PUBLIC_URL", demo.url)
    added = run("clients", "add", "demo-revisor", "--org", DEMO_TENANT, "--auditor", "--out", str(tmp_path))
    assert added.exit_code == 0, added.output
    profile = json.loads((tmp_path / "demo-revisor.json").read_text())
    assert profile["scope"] == "dho-share/audit.read"
    key = json.loads((tmp_path / profile["key"]).read_text())
    assert key["kid"]
    assert (tmp_path / profile["key"]).stat().st_mode & 0o077 == 0
    (listed,) = [
        c for c in json.loads(run("clients", "list", "--json").output) if c["client_id"] == "demo-revisor"
    ]
    assert (listed["scopes"], listed["kids"]) == (["dho-share/audit.read"], [key["kid"]])
    printed = [line for line in added.output.splitlines() if line.startswith("dho-share audit fetch")]
    assert printed, added.output

    fetched = CliRunner().invoke(
        audit, ["fetch", "--profile", str(tmp_path / "demo-revisor.json"), "--tenant", DEMO_TENANT]
    )
    assert fetched.exit_code == 0, fetched.output
    pem = CliRunner().invoke(
        audit, ["public-key", "--key", str(demo.directory / "var" / "audit-signing-key.pem")]
    )
    assert pem.exit_code == 0, pem.output
    (tmp_path / "audit.pub").write_text(
        pem.output.split("-----END PUBLIC KEY-----")[0] + "-----END PUBLIC KEY-----\n"
    )
    (tmp_path / "export.ndjson").write_text(fetched.output)
    verified = CliRunner().invoke(
        audit,
        ["verify", str(tmp_path / "export.ndjson"), "--public-key", str(tmp_path / "audit.pub"), "--json"],
    )
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["ok"] is True
    # The auditor's key reads the log but not measurements.
    refused = run(
        "query",
        "--profile",
        str(tmp_path / "demo-revisor.json"),
        "--tenant",
        DEMO_TENANT,
        "--patient",
        demo.patient,
    )
    assert refused.exit_code == 1
    assert "`dho-share/observation.read`" in refused.output


@pytest.mark.slow
def test_the_patient_reads_their_access_log_in_norwegian(demo: Demo) -> None:
    from sharing_api.patient_log import WORDS

    args = ["query", "--profile", str(demo.hospital), "--tenant", DEMO_TENANT, "--patient", demo.patient]
    assert run(*args, "--lastn").exit_code == 0
    assert run(*args, "--lastn", "--purpose", "ETREAT").exit_code == 0
    patient = demo.directory / "var" / "demo" / "patient.json"
    assert json.loads(patient.read_text())["pid"] == demo.patient
    shown = run("access-log", "--profile", str(patient))
    assert shown.exit_code == 0, shown.output
    nb = WORDS["nb"]
    header, *rows = tsv(shown.output)
    assert header == [nb["when"], nb["who"], nb["organisation"], nb["what"], nb["why"]]
    hospital = json.loads(demo.hospital.read_text())
    assert all(r[2].endswith(f"({hospital['organisation']})") and "Demo sykehus" in r[2] for r in rows)
    assert any(r[4] == nb["TREAT"] for r in rows)
    assert any(r[4] == f"{nb['emergency']}: {nb['ETREAT']}" for r in rows)
    assert any(r[1] == f"{nb['health worker']} (HPR {hospital['hpr']})" for r in rows)
    assert all(r[0][2] == "." and r[0][5] == "." for r in rows)  # dd.mm.yyyy hh:mm, local time
    english = run("access-log", "--profile", str(patient), "--lang", "en")
    assert tsv(english.output)[0][0] == WORDS["en"]["when"]
