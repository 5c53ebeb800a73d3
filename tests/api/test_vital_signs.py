"""Measurement validation by the vital-sign table (issue 9): every known code has its unit and range,
an unknown code is refused unless the tenant allows unknown codes (then its unit must be UCUM), and an
effective time in the future beyond the clock skew is refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sharing_api.cli import main
from sharing_api.fhir import vitals
from sharing_api.services import Services
from sharing_api.store.tenants import TenantDirectory
from tests.api.test_examples import count_rows
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate

BASE = f"/{TENANT_A}/fhir"


def measurement(system: str, code: str, value: float, unit: str) -> dict[str, Any]:
    obs = heart_rate(fnr())
    obs["code"] = {"coding": [{"system": system, "code": code}]}
    obs["valueQuantity"] = {"value": value, "unit": unit, "system": vitals.UCUM, "code": unit}
    return obs


def _expressions(response: Any) -> list[str]:
    return [x for issue in response.get_json()["issue"] for x in issue.get("expression", [])]


def test_pulse_oximetry_59408_5_is_range_checked(client: ApiClient, services: Services) -> None:
    """The case from issue 9: 196 % was stored because 59408-5 was not in the table."""
    response = client.post(f"{BASE}/Observation", json=measurement(vitals.LOINC, "59408-5", 196, "%"))
    assert response.status_code == 400
    assert "Observation.valueQuantity.value" in _expressions(response)
    assert count_rows(services) == 0
    ok = client.post(f"{BASE}/Observation", json=measurement(vitals.LOINC, "59408-5", 97, "%"))
    assert ok.status_code == 201, ok.get_json()


def _domain_rows(shared_dir: Path) -> list[tuple[list[tuple[str, str]], list[str]]]:
    """(codes, units) of each row of domain.md's measurement table that has a UCUM unit."""
    text = (shared_dir / "spec" / "domain.md").read_text(encoding="utf-8")
    table = text.split("## Measurements", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        _, _, loinc, snomed, unit, *_ = (cell.strip() for cell in line.split("|"))
        units = re.findall(r"`([^`]+)`", unit)
        if not units or unit.startswith(("score", "coded")):
            continue
        codes = [(vitals.LOINC, c) for c in re.findall(r"^(\d+-\d)", loinc)]
        codes += [(vitals.SNOMED, c) for c in re.findall(r"^(\d{6,})", snomed)]
        rows.append((codes, units))
    return rows


def test_every_code_of_domain_md_maps_to_its_units(shared_dir: Path) -> None:
    rows = _domain_rows(shared_dir)
    assert len(rows) >= 7
    for codes, units in rows:
        for code in codes:
            found = vitals.measurement_type([code])
            assert found is not None, code
            assert {r.unit for r in found.ranges} | {r.unit for _, r in found.components} == set(units), code


CASES = [
    (system, code, rng)
    for mt in vitals.MEASUREMENT_TYPES
    for (system, code) in sorted(mt.codes)
    for rng in mt.ranges[:1]
]


@pytest.mark.parametrize(("system", "code", "rng"), CASES, ids=[f"{c[1]}" for c in CASES])
def test_every_known_code_checks_unit_and_range(
    client: ApiClient, system: str, code: str, rng: vitals.Range
) -> None:
    inside = client.post(
        f"{BASE}/Observation", json=measurement(system, code, (rng.low + rng.high) / 2, rng.unit)
    )
    assert inside.status_code == 201, inside.get_json()
    beyond = client.post(f"{BASE}/Observation", json=measurement(system, code, rng.high * 2 + 1, rng.unit))
    assert beyond.status_code == 400
    assert "Observation.valueQuantity.value" in _expressions(beyond)
    wrong_unit = client.post(f"{BASE}/Observation", json=measurement(system, code, rng.low, "[lb_av]"))
    assert wrong_unit.status_code == 400
    assert "Observation.valueQuantity.code" in _expressions(wrong_unit)


def test_an_unknown_code_is_refused_by_default(client: ApiClient, services: Services) -> None:
    response = client.post(f"{BASE}/Observation", json=measurement(vitals.LOINC, "2345-7", 5.5, "mmol/L"))
    assert response.status_code == 400
    assert "Observation.code" in _expressions(response)
    assert "--allow-unknown-codes" in str(response.get_json())
    assert count_rows(services) == 0


def test_a_tenant_allowing_unknown_codes_still_needs_ucum(client: ApiClient, services: Services) -> None:
    services.tenants.add(TENANT_A, "Kommune A", allow_unknown_codes=True)
    stored = client.post(f"{BASE}/Observation", json=measurement(vitals.LOINC, "2345-7", 5.5, "mmol/L"))
    assert stored.status_code == 201, stored.get_json()
    nonsense = client.post(f"{BASE}/Observation", json=measurement(vitals.LOINC, "2345-7", 5.5, "furlongs"))
    assert nonsense.status_code == 400
    assert "Observation.valueQuantity.code" in _expressions(nonsense)
    assert count_rows(services) == 1


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat(timespec="seconds")


def test_an_effective_time_in_the_future_beyond_the_skew_is_refused(
    client: ApiClient, services: Services
) -> None:
    skew = services.settings.clock_skew
    ahead = client.post(
        f"{BASE}/Observation", json=heart_rate(fnr(), when=_at(timedelta(seconds=skew + 3600)))
    )
    assert ahead.status_code == 400
    assert _expressions(ahead) == ["Observation.effectiveDateTime"]
    within = client.post(
        f"{BASE}/Observation", json=heart_rate(fnr(), when=_at(timedelta(seconds=skew // 2)))
    )
    assert within.status_code == 201, within.get_json()
    assert count_rows(services) == 1


def test_cli_tenant_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/cli.sqlite3"
    monkeypatch.setenv("DHO_DATABASE_URL", url)
    monkeypatch.delenv("DHO_REDIS_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    added = runner.invoke(main, ["tenants", "add", TENANT_A, "--name", "K", "--allow-unknown-codes"])
    assert added.exit_code == 0, added.output
    from sharing_api.store.engine import make_engine

    record = TenantDirectory(make_engine(url)).get(TENANT_A)
    assert record is not None
    assert record.allow_unknown_codes
    assert record.validation.allow_unknown_codes
