"""The dashboard reads a rollup of the log (sharing_api/console/rollup.py): it must say what the entries
say, also after more entries arrive, across a DST change; "verify now" finds an edited rollup row and
a rebuild mends it. On SQLite and PostgreSQL. Expectations are counted here from the stored entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import update

from sharing_api.audit.actions import EMERGENCY_PURPOSES, AuditAction
from sharing_api.console import rollup
from sharing_api.console.aggregates import OSLO
from sharing_api.console.cli import console_rollup
from sharing_api.services import Services
from sharing_api.store.schema import console_rollup_hours
from tests.conftest import TENANT_A
from tests.console.conftest import access, login, record, utc


def _expected(services: Services, start: datetime, end: datetime) -> dict[str, int]:
    """The dashboard's tiles over [start, end), counted from the log's entries one by one."""
    found = {"requests": 0, "refused": 0, "emergency": 0}
    patients, workers, organisations = set(), set(), set()
    for entry in services.audit_log.entries(TENANT_A):
        if entry.action == AuditAction.ACCESS_DECISION.value or not start <= entry.recorded_at < end:
            continue
        found["requests"] += 1
        found["refused"] += entry.outcome != "0"
        found["emergency"] += entry.purpose in EMERGENCY_PURPOSES
        patients.add(entry.patient_value)
        workers.add(entry.agent_hpr)
        organisations.add(entry.organisation)
    found["patients"] = len(patients - {None})
    found["health_workers"] = len(workers - {None})
    found["organisations"] = len(organisations - {None})
    return found


def _batch(first: int, count: int) -> list:  # type: ignore[type-arg]
    # around the start of summer time (2025-03-30 02:00 Oslo): hours 22:00 UTC on the 29th to the 31st
    return [
        access(
            TENANT_A,
            utc(2025, 3, 29, 20) + timedelta(minutes=53 * i),
            f"0181690{i % 9:04d}",
            n=i,
            hpr=f"90000{i % 4:02d}",
            org=("993467049", "974589095")[i % 2],
            permit=i % 6 != 0,
            purpose="ETREAT" if i % 5 == 0 else "TREAT",
        )
        for i in range(first, first + count)
    ]


def test_the_dashboard_says_what_the_entries_say_and_follows_new_ones(
    console: FlaskClient, services: Services
) -> None:
    start = datetime(2025, 3, 6, tzinfo=OSLO)
    end = datetime(2025, 4, 5, tzinfo=OSLO)
    record(services, _batch(0, 40))
    login(console)
    first = console.get("/console/api/daily?to=2025-04-04").get_json()["overview"]
    assert first == _expected(services, start, end)
    assert first["requests"] == 40
    record(services, _batch(40, 25))  # new patients? no: more of the same ones, and new hours
    record(services, [access(TENANT_A, utc(2025, 4, 4, 21, 59), "01816909999", n=99, hpr="9777777")])
    second = console.get("/console/api/daily?to=2025-04-04").get_json()["overview"]
    assert second == _expected(services, start, end)
    assert second["requests"] == 66
    # the last entry is at 23:59 Oslo time on 4 April: in the period; a minute later it would not be
    assert second["patients"] == first["patients"] + 1


def test_an_edited_rollup_fails_verify_now_and_a_rebuild_mends_it(
    console: FlaskClient, services: Services
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    record(
        services, [access(TENANT_A, now - timedelta(hours=5 * i), f"0181690{i:04d}", n=i) for i in range(8)]
    )
    csrf = login(console)
    console.get("/console/")  # folds the entries in
    console.post("/console/integrity/verify", data={"csrf": csrf})
    assert 'data-state="verified"' in console.get("/console/").data.decode()
    hour = int((now - timedelta(hours=10)).timestamp()) // 3600
    with services.engine.begin() as conn:
        edited = conn.execute(
            update(console_rollup_hours)
            .where(console_rollup_hours.c.tenant == TENANT_A, console_rollup_hours.c.hour == hour)
            .values(requests=console_rollup_hours.c.requests + 5)
        )
        assert edited.rowcount == 1
    console.post("/console/integrity/verify", data={"csrf": csrf})
    page = console.get("/console/integrity").data.decode()
    assert 'data-state="failed"' in page
    when = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(hours=hour)).isoformat()
    assert f"for hour {when}" in page
    result = CliRunner().invoke(
        console_rollup,
        ["--tenant", TENANT_A, "--rebuild"],
        env={"DHO_DATABASE_URL": services.settings.database_url},
    )
    assert result.exit_code == 0, result.output
    assert rollup.folded(services.engine, TENANT_A) > 8
    console.post("/console/integrity/verify", data={"csrf": csrf})
    assert 'data-state="verified"' in console.get("/console/").data.decode()
