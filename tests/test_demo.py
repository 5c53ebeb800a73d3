"""README command 1: the demo sets itself up, serves protected data, and its printed commands (the
hospital's queries, the municipality's publish, the patient's access log) work as printed."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sharing_api.patient_log import WORDS
from sharing_api.seed import Patient, goal_for
from tests.conftest import REDIS_URL
from tests.live_server import free_port, live_server

CLI = [sys.executable, "-m", "sharing_api.cli"]


@pytest.mark.slow
def test_demo_prints_queries_that_work(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DHO_REDIS_URL": REDIS_URL}
    env.pop("DHO_DATABASE_URL", None)
    setup = subprocess.run(
        [*CLI, "demo", "--no-serve", "--patients", "2", "--days", "3", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    printed = [line for line in setup.stdout.splitlines() if line.startswith("dho-share ")]
    # The console's rule R9 gets the seeded patients' family names from the demo's stand-in register,
    # readable by its owner only; the self-access secret of R8 is made 0600 beside the signing keys.
    register = tmp_path / "var" / "demo" / "person-register.json"
    assert stat.S_IMODE(register.stat().st_mode) == 0o600
    assert len(json.loads(register.read_text(encoding="utf-8"))) >= 2
    assert f"R9 (same surname) on the person register {register.relative_to(tmp_path)}" in setup.stderr
    assert stat.S_IMODE((tmp_path / "var" / "audit-self-access.key").stat().st_mode) == 0o600
    assert [line.split()[1] for line in printed] == ["query"] * 5 + ["publish", "access-log"], setup.stdout
    outputs = []
    with live_server({"DHO_REDIS_URL": REDIS_URL}, workers=2, cwd=tmp_path, port=port):
        for line in printed:
            result = subprocess.run(
                [*CLI, *shlex.split(line)[1:]],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout + result.stderr)  # a piped table's title goes to stderr
    shared, latest, careplan, reserved, blocked, published, access_log = outputs
    assert "mm[Hg]" in shared
    assert "mm[Hg]" in latest
    # The seeded plan and its thresholds, with the latest readings checked against them (issue 11).
    assert "Egenbehandlingsplan (active" in careplan
    assert "<= 160 mm[Hg]" in careplan
    # Each threshold is named as the seeded Goal names its measure, not by its bare code.
    seeded = goal_for(Patient("", 0, 0, 0, 0, 0, diabetic=False))
    for target in seeded["target"]:
        assert target["measure"]["coding"][0]["display"] in careplan
    assert ">= 92 %" in careplan
    assert "within" in careplan or "outside" in careplan
    # The reservation and the block look exactly like "no data" to the hospital's doctor.
    assert "0 measurements" in reserved
    assert "0 measurements" in blocked
    # The publish command stores the printed weight (201), in the demo municipality's tenant.
    publish = shlex.split(printed[5])
    profile = json.loads((tmp_path / publish[publish.index("--profile") + 1]).read_text())
    assert profile["scope"] == "dho-share/observation.write"
    (row,) = [line.split("\t") for line in published.splitlines() if line.startswith("Observation\t")]
    assert row[1] == "201", published
    assert f"/{profile['tenant']}/fhir/Observation/" in row[2]
    # The first patient sees, in Norwegian, that the demo doctor looked (for treatment).
    assert WORDS["nb"]["TREAT"] in access_log
    assert WORDS["nb"]["observation.lastn"] in access_log
