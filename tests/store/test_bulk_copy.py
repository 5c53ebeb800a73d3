"""Bulk loads by ``COPY`` (``sharing_api.store.bulk``; the scale benchmark seeds with it) write the rows an
API create writes, keep the tables' indexes as the migrations made them, and leave fresh statistics.

The same observation is created through the API (a POST, and a batch Bundle), its rows in the four
observation tables are taken out and written again by ``copy_observations`` under the same id and time:
every row is identical, and the API serves the observation as before. PostgreSQL only (``COPY``)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError

from sharing_api.fhir.validation import validate_observation
from sharing_api.services import Services
from sharing_api.store import bulk
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import FHIR_JSON, batch, fnr, heart_rate, search_form
from tests.store.test_statistics import planner_rows

BASE = f"/{TENANT_A}/fhir"


@pytest.fixture
def postgres(services: Services) -> Services:
    if services.engine.dialect.name != "postgresql":
        pytest.skip("COPY is PostgreSQL's (SQLite seeds through create_many)")
    return services


def _key(table: Any) -> Any:
    return table.c.id if "id" in table.c else table.c.observation_id


def rows_of(services: Services, obs_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``obs_id`` in each table creating an observation writes, in a stable order."""
    out = {}
    with services.engine.connect() as conn:
        for table in bulk.OBSERVATION_TABLES:
            rows = conn.execute(select(table).where(_key(table) == obs_id).order_by(*table.c))
            out[table.name] = [tuple(r) for r in rows]
    return out


def created_through_api(client: ApiClient, resource: dict[str, Any], how: str) -> str:
    """The id of ``resource`` created through the API (sent as these bytes: the key order is kept)."""
    headers = {"Content-Type": FHIR_JSON}
    if how == "POST":
        response = client.post(f"{BASE}/Observation", data=orjson.dumps(resource), headers=headers)
        assert response.status_code == 201, response.get_json()
        return str(response.get_json()["id"])
    response = client.post(BASE, data=orjson.dumps(batch(resource)), headers=headers)
    entry = response.get_json()["entry"][0]["response"]
    assert entry["status"].startswith("201"), entry
    return str(entry["location"].split("/Observation/")[1].split("/")[0])


@pytest.mark.parametrize("how", ["POST", "batch"])
def test_copied_rows_are_the_rows_an_api_create_writes(
    client: ApiClient, postgres: Services, how: str
) -> None:
    patient = fnr()
    resource = heart_rate(patient, value=64, identifier=f"copy-{how}", tenant=TENANT_A)
    resource["note"] = [{"text": "målt hjemme"}]
    obs_id = created_through_api(client, resource, how)
    served = client.get(f"{BASE}/Observation/{obs_id}", patient=patient).get_json()
    api_rows = rows_of(postgres, obs_id)
    assert all(api_rows.values()), api_rows  # a row (or more) in every table
    now = api_rows["observations"][0][3]  # last_updated
    with postgres.engine.begin() as conn:
        for table in bulk.OBSERVATION_TABLES:
            conn.execute(delete(table).where(_key(table) == obs_id))
    assert not any(rows_of(postgres, obs_id).values())

    tenant = postgres.tenants.get(TENANT_A)
    assert tenant is not None
    valid = validate_observation(resource, tenant.validation)
    with postgres.observations.writing() as conn:
        bulk.copy_observations(conn, postgres.observations, TENANT_A, [(obs_id, valid)], now)

    assert rows_of(postgres, obs_id) == api_rows
    assert client.get(f"{BASE}/Observation/{obs_id}", patient=patient).get_json() == served
    found = client.post(f"{BASE}/Observation/_search", data=search_form(patient)).get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == [obs_id]


def index_definitions(services: Services) -> list[tuple[str, str]]:
    names = [t.name for t in bulk.OBSERVATION_TABLES]
    with services.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(:names) "
                "AND schemaname = current_schema() ORDER BY 1"
            ),
            {"names": names},
        )
        return [(r[0], r[1]) for r in rows]


def test_a_load_with_deferred_indexes_rebuilds_them_and_refreshes_statistics(postgres: Services) -> None:
    before = index_definitions(postgres)
    assert len(before) >= 2 * len(bulk.OBSERVATION_TABLES)  # a primary key and an index each, at least
    tenant = postgres.tenants.get(TENANT_A)
    assert tenant is not None
    patient = fnr()
    items = [
        (
            f"bulk-{n}",
            validate_observation(
                heart_rate(
                    patient, value=60 + n, identifier=f"bulk-{n}", when=f"2026-11-{n + 1:02d}T08:00:00Z"
                ),
                tenant.validation,
            ),
        )
        for n in range(20)
    ]
    store = postgres.observations
    with bulk.deferred_indexes(postgres.engine) as rebuild:
        assert index_definitions(postgres) == []  # dropped for the load
        with store.writing() as conn:
            bulk.copy_observations(conn, store, TENANT_A, items, 1_000)
    assert len(rebuild) == len(before)
    assert index_definitions(postgres) == before
    bulk.analyze(postgres.engine)
    with postgres.engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(bulk.OBSERVATION_TABLES[0])).scalar_one()
    assert stored == len(items)
    assert planner_rows(str(postgres.engine.url.render_as_string(hide_password=False))) == stored


def test_a_known_identifier_loaded_with_deferred_indexes_fails_the_rebuild(postgres: Services) -> None:
    """Without the identifiers' primary key during the load, a duplicate is caught when it is rebuilt."""
    tenant = postgres.tenants.get(TENANT_A)
    assert tenant is not None
    valid = validate_observation(heart_rate(fnr(), identifier="twice"), tenant.validation)
    store = postgres.observations
    before = index_definitions(postgres)
    rebuild: list[str] = []

    def load_twice() -> None:
        with bulk.deferred_indexes(postgres.engine) as statements, store.writing() as conn:
            rebuild.extend(statements)
            bulk.copy_observations(conn, store, TENANT_A, [("first", valid), ("second", valid)], 1)

    try:
        with pytest.raises(IntegrityError, match="observation_identifiers_pkey"):
            load_twice()
        assert index_definitions(postgres) == []  # the failed rebuild changed nothing
    finally:  # the database is the session's: put the indexes back for the tests after this one
        with postgres.engine.begin() as conn:
            for table in bulk.OBSERVATION_TABLES:
                conn.execute(delete(table))
            for statement in rebuild if not index_definitions(postgres) else []:
                conn.exec_driver_sql(statement)
    assert index_definitions(postgres) == before


def test_a_copy_that_fails_raises_sqlalchemys_error_and_stores_nothing(postgres: Services) -> None:
    """``insert_rows`` (the batch create's ``COPY``) fails as an ``INSERT`` would: the driver's error as
    SQLAlchemy's ``IntegrityError`` (so the API's handlers see what they know), the transaction rolled
    back, nothing of it stored."""
    tenant = postgres.tenants.get(TENANT_A)
    assert tenant is not None
    store = postgres.observations
    valid = validate_observation(heart_rate(fnr(), identifier="copied-twice"), tenant.validation)
    rows = store.new_rows(TENANT_A, "copied-twice", valid, 1)

    def write_twice() -> None:
        with store.writing() as conn:
            bulk.insert_rows(conn, bulk.OBSERVATION_TABLES[1], [rows.history])
            bulk.insert_rows(conn, bulk.OBSERVATION_TABLES[0], [rows.observation, rows.observation])

    with pytest.raises(IntegrityError, match="observations_pkey"):
        write_twice()
    assert not any(rows_of(postgres, "copied-twice").values())
