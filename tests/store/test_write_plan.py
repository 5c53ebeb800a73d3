"""The batch create's identifier claim keeps its plan on PostgreSQL with 100,000 stored business
identifiers (issue 12): the claim (``_CLAIM_SQL``) inserts from its JSON parameter and reads no table.
(The lookup of a Bundle's known identifiers is the chunked ``IN`` of ``ObservationStore._owners`` on
every database: a JSON-parameter variant per identifier system doubled an ingest's PostgreSQL CPU at
100,000 observations in ``make bench``; BENCHMARKS.md "Fourth pass: ingest".)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sharing_api.store.engine import upgrade
from sharing_api.store.observations import _CLAIM_SQL
from tests.conftest import POSTGRES_ADMIN, TENANT_A

pytestmark = pytest.mark.slow

STORED = 100_000
SYSTEM = "urn:test:plan"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    name = f"dho_test_wplan_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    try:
        upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO observation_identifiers (tenant, system, value, observation_id) "
                "SELECT %s, %s, 'v-' || g, 'obs-' || g FROM generate_series(1, %s) AS g",
                (TENANT_A, SYSTEM, STORED),
            )
            conn.execute("VACUUM ANALYZE observation_identifiers")
        yield url
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _plan(rows: Any) -> dict[str, Any]:
    raw = rows.fetchone()[0]
    doc = raw if isinstance(raw, list) else json.loads(raw)
    return dict(doc[0]["Plan"])


def _reads(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(node type, index) of every node that reads ``observation_identifiers``."""
    return [
        (n["Node Type"], n.get("Index Name"))
        for n in _nodes(plan)
        if n.get("Relation Name") == "observation_identifiers" and "Scan" in n["Node Type"]
    ]


def test_the_claim_reads_no_table(url: str) -> None:
    claims = json.dumps([[SYSTEM, f"new-{n}", f"obs-new-{n}"] for n in range(500)] + [[SYSTEM, "v-1", "x"]])
    with psycopg.connect(url) as conn:
        plan = _plan(conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + _CLAIM_SQL, (TENANT_A, claims)))
        conn.rollback()
        won = conn.execute(_CLAIM_SQL, (TENANT_A, claims)).fetchall()
        conn.rollback()
    assert plan["Node Type"] == "ModifyTable"
    assert _reads(plan) == []
    assert len(won) == 500  # "v-1" is stored already: not claimed again, nothing fails
    assert (SYSTEM, "v-1", "x") not in won
