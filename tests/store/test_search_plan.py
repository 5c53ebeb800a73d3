"""The search for one patient, one code and a period is planned as a range scan of the patient-led
token index and a primary-key lookup per hit, on PostgreSQL with 100,000 stored observations (issue 12;
the rows: ``plan_data``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.dialects import postgresql

from sharing_api.fhir.dates import OPEN_END, to_micros
from sharing_api.fhir.identifiers import FNR
from sharing_api.fhir.search import parse_search
from sharing_api.fhir.validation import ValidObservation
from sharing_api.store.observations import ObservationStore, ReadScope
from tests.conftest import TENANT_A
from tests.factories import CATEGORY, LOINC, fnr
from tests.store.plan_data import FIRST

pytestmark = pytest.mark.slow


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


@pytest.fixture
def engine(plan_database: tuple[Engine, list[str]]) -> tuple[Engine, list[str]]:
    return plan_database


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
