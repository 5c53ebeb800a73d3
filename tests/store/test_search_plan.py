"""The search for one patient, one code and a period is planned as a range scan of the patient-led
token index and a primary-key lookup per hit, on PostgreSQL with 100,000 stored observations (issue 12).

The rows are written in bulk with SQL (the rows ``ObservationStore.create_many`` would write), not over
HTTP; PostgreSQL's statistics are refreshed (``VACUUM ANALYZE``) as autovacuum would after a bulk load.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.dialects import postgresql

from sharing_api.fhir.dates import OPEN_END, to_micros
from sharing_api.fhir.identifiers import FNR
from sharing_api.fhir.search import parse_search
from sharing_api.fhir.validation import ValidObservation
from sharing_api.store.engine import make_engine, upgrade
from sharing_api.store.observations import ObservationStore, ReadScope
from tests.conftest import POSTGRES_ADMIN, TENANT_A
from tests.factories import CATEGORY, LOINC, fnr

pytestmark = pytest.mark.slow

STORED = 100_000
DAYS = 180
KINDS = (("8867-4", 8), ("8867-4", 20), ("2708-6", 8), ("29463-7", 7))  # (LOINC code, hour): 4 a day
FIRST = datetime(2026, 5, 1, tzinfo=UTC)


BULK_PARAMS = {
    "tenant": TENANT_A,
    "stored": STORED,
    "kinds": len(KINDS),
    "codes": [code for code, _ in KINDS],
    "hours": [hour for _, hour in KINDS],
    "first": to_micros(FIRST),
    "fnr": FNR,
    "loinc": LOINC,
    "days": DAYS,
}
# One row per (patient, day, kind), as create_many would store it (the store's own path is exercised
# by test_an_ongoing_period_is_found_after_its_start and tests/api); generated inside PostgreSQL so
# that 100,000 rows take seconds on a busy machine.
BULK_OBSERVATIONS = """
INSERT INTO observations (tenant, id, version_id, last_updated, patient_system, patient_value, status,
                          kind, effective_start, effective_end, data)
SELECT :tenant, 'plan-' || g, 1, 0, :fnr, (CAST(:patients AS text[]))[g / (:days * :kinds) + 1], 'final',
       :loinc || '|' || (CAST(:codes AS text[]))[g % :kinds + 1],
       :first + ((g / :kinds) % :days) * 86400000000::bigint
              + (CAST(:hours AS int[]))[g % :kinds + 1] * 3600000000::bigint,
       :first + ((g / :kinds) % :days) * 86400000000::bigint
              + (CAST(:hours AS int[]))[g % :kinds + 1] * 3600000000::bigint + 1000000,
       convert_to('{}', 'UTF8')
FROM generate_series(0, :stored - 1) AS g
"""
BULK_TOKENS = """
INSERT INTO observation_tokens (tenant, observation_id, param, system, code, patient_system, patient_value,
                                effective_start, effective_end)
SELECT o.tenant, o.id, t.param, t.system,
       CASE WHEN t.param = 'code' THEN split_part(o.kind, '|', 2) ELSE 'vital-signs' END,
       o.patient_system, o.patient_value, o.effective_start, o.effective_end
FROM observations o
CROSS JOIN (VALUES ('code', CAST(:loinc AS text)), ('category', CAST(:category AS text))) AS t(param, system)
"""


def _valid(patient: str, code: str, when: datetime, n: int) -> ValidObservation:
    start = to_micros(when)
    return ValidObservation(
        resource={"resourceType": "Observation", "status": "final", "note": [{"text": str(n)}]},
        patient=(FNR, patient),
        identifiers=(("urn:test:plan", str(n)),),
        codes=((LOINC, code),),
        categories=((CATEGORY, "vital-signs"),),
        status="final",
        effective=(start, start + 1_000_000),
        kind=f"{LOINC}|{code}",
    )


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[Engine, list[str]]]:
    name = f"dho_test_plan_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    eng = make_engine(url)
    try:
        upgrade(url)
        per_patient = DAYS * len(KINDS)
        patients = [fnr() for _ in range(-(-STORED // per_patient))]
        with eng.begin() as conn:
            conn.execute(text(BULK_OBSERVATIONS), {"patients": patients, **BULK_PARAMS})
            conn.execute(text(BULK_TOKENS), {"loinc": LOINC, "category": CATEGORY})
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
        yield eng, patients
    finally:
        eng.dispose()
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _explain(eng: Engine, sql: str) -> dict[str, Any]:
    with eng.connect() as conn:
        raw = conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")).scalar()
    doc = raw if isinstance(raw, list) else json.loads(raw)
    return dict(doc[0]["Plan"])


def _search_sql(store: ObservationStore, patient: str, start: datetime, scope: ReadScope | None) -> str:
    end = start + timedelta(days=6)
    query = parse_search(
        [
            ("patient.identifier", f"{FNR}|{patient}"),
            ("code", f"{LOINC}|8867-4"),
            ("date", f"ge{start:%Y-%m-%d}"),
            ("date", f"lt{end:%Y-%m-%d}"),
        ],
        strict=True,
        default_count=50,
        max_count=1000,
    )
    stmt = store.search_statement(TENANT_A, query, scope=scope or ReadScope())
    return str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize("day", [2, 90, 170])
@pytest.mark.parametrize("scoped", [False, True], ids=["no-scope", "agreement-scope"])
def test_search_reads_the_patients_code_and_period_not_the_tenants_tokens(
    engine: tuple[Engine, list[str]], day: int, scoped: bool
) -> None:
    eng, patients = engine
    store = ObservationStore(eng, lambda: 0)
    scope = ReadScope(categories=frozenset({"vital-signs"}), start=0) if scoped else None
    plan = _explain(eng, _search_sql(store, patients[len(patients) // 2], FIRST + timedelta(days=day), scope))
    nodes = list(_nodes(plan))
    assert plan["Actual Rows"] == 12  # two heart rates a day for six days
    scans = [n for n in nodes if "Scan" in n["Node Type"]]
    on_tokens = [n for n in scans if n.get("Relation Name") == "observation_tokens"]
    # No sequential scan anywhere, and the code is found through the patient-led index.
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], scans
    assert any(n.get("Index Name") == "ix_observation_tokens_patient" for n in on_tokens), on_tokens
    for n in on_tokens:
        assert (
            "patient_value" in n.get("Index Cond", "") or n.get("Index Name") == "observation_tokens_pkey"
        ), n
    # Observations are fetched by primary key, one per hit; never a walk through the patient's history.
    on_obs = [n for n in scans if n.get("Relation Name") == "observations"]
    assert on_obs, scans
    assert all(n.get("Index Name") == "observations_pkey" for n in on_obs), on_obs
    # Index entries read stay bounded by the patient's own tokens before the period ends (2 heart
    # rates a day; with the agreement's categories, 4 category tokens a day), whatever the tenant holds.
    read = sum(
        n["Actual Rows"] * n.get("Actual Loops", 1) + n.get("Rows Removed by Filter", 0) for n in on_tokens
    )
    assert read <= (2 + (4 if scoped else 0)) * (day + 6) + 24


def test_an_ongoing_period_is_found_after_its_start(engine: tuple[Engine, list[str]]) -> None:
    """``date=gt`` a day after an open ``effectivePeriod`` began finds it (FHIR R4 Period: no end is
    ongoing; issue 8), and the search still takes the patient-led plan."""
    eng, _ = engine
    store = ObservationStore(eng, lambda: 0)
    patient = fnr()
    ongoing = dataclasses.replace(
        _valid(patient, "8867-4", FIRST, -1),
        effective=(to_micros(FIRST), OPEN_END),
        identifiers=(("urn:test:plan", "ongoing"),),
    )
    with store.writing() as conn:
        store.create_many(conn, TENANT_A, [ongoing])
    query = parse_search(
        [("patient.identifier", f"{FNR}|{patient}"), ("date", "gt2026-06-01")],
        strict=True,
        default_count=50,
        max_count=50,
    )
    assert len(store.search(TENANT_A, query).rows) == 1
