"""100,000 stored observations for the plan tests, written in bulk with SQL (the rows
``ObservationStore.create_many`` would write), not over HTTP; PostgreSQL's statistics are refreshed
(``VACUUM ANALYZE``) as autovacuum would after a bulk load. One database for the package's plan tests
(``plan_database`` in ``conftest.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
from sqlalchemy import Engine, text

from sharing_api.fhir.dates import to_micros
from sharing_api.fhir.identifiers import FNR
from sharing_api.store.engine import make_engine, upgrade
from tests.conftest import POSTGRES_ADMIN, TENANT_A
from tests.factories import CATEGORY, LOINC, fnr

STORED = 100_000
DAYS = 180
KINDS = (("8867-4", 8), ("8867-4", 20), ("2708-6", 8), ("29463-7", 7))  # (LOINC code, hour): 4 a day
FIRST = datetime(2026, 5, 1, tzinfo=UTC)
"""The first day of every patient's series: four observations a day (``KINDS``) for ``DAYS`` days."""


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


@contextmanager
def plan_database() -> Iterator[tuple[Engine, list[str]]]:
    """A new database with ``STORED`` observations of as many patients as it takes (their identity
    numbers are yielded, in the order their rows were written); dropped afterwards."""
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
