"""Migration 0004 fills the new token columns from the observations and marks open periods ongoing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from alembic import command
from sqlalchemy import Connection, text

from sharing_api.fhir.dates import OPEN_END
from sharing_api.store.engine import alembic_config, make_engine, upgrade
from tests.conftest import BACKENDS, POSTGRES_ADMIN


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.sqlite3'}"
        return
    name = f"dho_test_m4_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _observation(conn: Connection, obs_id: str, start: int, end: int, resource: dict[str, object]) -> None:
    conn.execute(
        text(
            "INSERT INTO observations (tenant, id, version_id, last_updated, patient_system, patient_value, "
            "status, kind, effective_start, effective_end, data) VALUES ('921234562', :id, 1, 0, 'urn:s', "
            "'12345678901', 'final', 'k', :start, :end, :data)"
        ),
        {"id": obs_id, "start": start, "end": end, "data": orjson.dumps(resource)},
    )
    conn.execute(
        text(
            "INSERT INTO observation_tokens (tenant, observation_id, param, system, code) "
            "VALUES ('921234562', :id, 'code', 'http://loinc.org', '8867-4')"
        ),
        {"id": obs_id},
    )


def test_upgrade_fills_token_columns_and_opens_ongoing_periods(empty_url: str) -> None:
    command.upgrade(alembic_config(empty_url), "0003")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as conn:
            _observation(conn, "open", 1000, 1001, {"effectivePeriod": {"start": "2026-11-01"}})
            _observation(conn, "closed", 2000, 2001, {"effectivePeriod": {"start": "x", "end": "y"}})
            _observation(conn, "instant", 3000, 3001, {"effectiveDateTime": "2026-11-01T08:00:00Z"})
        upgrade(empty_url)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT observation_id, patient_system, patient_value, effective_start, effective_end "
                    "FROM observation_tokens ORDER BY observation_id"
                )
            ).all()
            ends = dict(conn.execute(text("SELECT id, effective_end FROM observations")).all())
    finally:
        engine.dispose()
    assert ends == {"open": OPEN_END, "closed": 2001, "instant": 3001}
    assert [tuple(r) for r in rows] == [
        ("closed", "urn:s", "12345678901", 2000, 2001),
        ("instant", "urn:s", "12345678901", 3000, 3001),
        ("open", "urn:s", "12345678901", 1000, OPEN_END),
    ]
