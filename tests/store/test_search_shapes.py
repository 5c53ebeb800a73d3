"""Search statements compiled once per shape (``search_shapes``, issue 12) find exactly what the same
search built with its values in the SQL finds, for every kind of parameter, and searches that differ
only in their values share one compiled statement."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from sqlalchemy import select

from sharing_api.fhir.identifiers import FNR
from sharing_api.fhir.search import parse_search
from sharing_api.services import Services
from sharing_api.store.observations import Anchor, ReadScope
from sharing_api.store.schema import observations
from sharing_api.store.search_shapes import _bound, templated
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import LOINC, batch, fnr, heart_rate, spo2

BASE = f"/{TENANT_A}/fhir"
HEART_RATE = f"{LOINC}|8867-4"


def _seed(client: ApiClient, patient: str) -> None:
    resources = [
        heart_rate(patient, value=60 + d, when=f"2026-11-{d:02d}T08:00:00+01:00") for d in range(1, 11)
    ]
    resources += [spo2(patient, value=90 + d, when=f"2026-11-{d:02d}T09:00:00+01:00") for d in range(1, 6)]
    assert client.post(BASE, json=batch(*resources)).status_code == 200


def _query(patient: str, *extra: tuple[str, str]) -> Any:
    params = [("patient.identifier", f"{FNR}|{patient}"), *extra]
    return parse_search(params, strict=True, default_count=50, max_count=1000)


SHAPES: list[tuple[tuple[str, str], ...]] = [
    (),
    (("code", HEART_RATE),),
    (("code", HEART_RATE), ("date", "ge2026-11-03"), ("date", "lt2026-11-08")),
    (("code", f"{HEART_RATE},{LOINC}|2708-6"), ("date", "le2026-11-04")),
    (("code", "8867-4"), ("date", "eq2026-11-05")),
    (("code:not", HEART_RATE),),
    (("category", "vital-signs"), ("status", "final,amended")),
    (("status:not", "final"),),
    (("date", "gt2026-11-09"),),
    (("date", "sa2026-11-02"), ("date", "eb2026-11-06"), ("_sort", "date")),
    (("date", "ne2026-11-05"), ("_count", "3")),
    (("_lastUpdated", "ge2000-01-01"),),
]
SCOPES = [
    ReadScope(),
    ReadScope(categories=frozenset({"vital-signs"})),
    ReadScope(categories=frozenset({"laboratory", "vital-signs"}), start=0, end=2**62),
    ReadScope(categories=frozenset({"laboratory"})),
]


def _literal(services: Services, query: Any, scope: ReadScope, anchor: Anchor | None) -> list[Any]:
    stmt = services.observations.search_statement(TENANT_A, query, anchor, scope)
    with services.engine.connect() as conn:
        return [(r.id, r.k, bytes(r.data), r.last_updated) for r in conn.execute(stmt)][: query.count]


@pytest.mark.parametrize("extra", SHAPES, ids=lambda e: "&".join(f"{k}={v}" for k, v in e) or "patient")
def test_a_compiled_shape_finds_what_the_literal_statement_finds(
    client: ApiClient, services: Services, extra: tuple[tuple[str, str], ...]
) -> None:
    patients = [fnr(), fnr()]
    for patient in patients:
        _seed(client, patient)
    store = services.observations
    for scope in SCOPES:
        for patient in patients:
            query = _query(patient, *extra)
            page = store.search(TENANT_A, query, None, scope)
            expected = _literal(services, query, scope, None)
            assert page.rows == expected
            everything = _literal(services, dataclasses.replace(query, count=1000), scope, None)
            assert store.count(TENANT_A, query, scope) == len(everything)
            if len(page.rows) > 1:  # the next page, after the first row, and the one before the last
                first, last = page.rows[0], page.rows[-1]
                after = Anchor(first[1], first[0])
                assert store.search(TENANT_A, query, after, scope).rows == _literal(
                    services, query, scope, after
                )
                before = Anchor(last[1], last[0], backwards=True)
                expected_before = list(reversed(_literal(services, query, scope, before)))
                assert store.search(TENANT_A, query, before, scope).rows == expected_before


def test_searches_that_differ_only_in_values_share_one_statement(
    client: ApiClient, services: Services
) -> None:
    patients = [fnr() for _ in range(3)]
    for patient in patients:
        _seed(client, patient)
    store = services.observations
    before = len(store._shapes)
    found = []
    for n, patient in enumerate(patients):
        query = _query(
            patient, ("code", HEART_RATE), ("date", f"ge2026-11-0{n + 1}"), ("date", "lt2026-11-09")
        )
        found.append(
            len(store.search(TENANT_A, query, None, ReadScope(categories=frozenset({"vital-signs"}))).rows)
        )
    assert found == [8, 7, 6]
    assert len(store._shapes) == before + 1


def test_a_read_within_the_scope_only(client: ApiClient, services: Services) -> None:
    patient = fnr()
    _seed(client, patient)
    store = services.observations
    with services.engine.connect() as conn:
        some = (
            conn.execute(select(observations.c.id).where(observations.c.patient_value == patient))
            .scalars()
            .all()
        )
    obs_id = some[0]
    whole = store.read(TENANT_A, obs_id)
    assert whole is not None
    assert store.read(TENANT_A, obs_id, ReadScope(categories=frozenset({"vital-signs"}))) == whole
    assert store.read(TENANT_A, obs_id, ReadScope(categories=frozenset({"laboratory"}))) is None
    assert store.read(TENANT_A, obs_id, ReadScope(start=2**62)) is None
    assert store.read(TENANT_A, obs_id, ReadScope(nothing=True)) is None
    assert store.read(TENANT_A, "no-such-id", ReadScope()) is None


@pytest.mark.parametrize("extra", SHAPES, ids=lambda e: "&".join(f"{k}={v}" for k, v in e) or "patient")
def test_the_shape_and_values_are_those_of_the_statements_bind_parameters(
    extra: tuple[tuple[str, str], ...],
) -> None:
    """A search's shape and values are taken out without making its bind parameters (only a new shape
    needs them, to build its statement): both walks must name every value alike."""
    query = _query(fnr(), *extra)
    for scope in [*SCOPES, ReadScope(start=5)]:
        for anchor in (None, (1_700_000_000_000_000, "an-id", False), (7, "other", True)):
            template = templated(query, scope.categories, scope.start, scope.end, anchor)
            bound, values, shape = _bound(query, scope.categories, scope.start, scope.end, anchor)
            assert (template.values, template.shape) == (values, shape)
            # made on first use (checked then against the walk); bind parameters compare by identity
            made = (template.query, template.categories, template.start, template.end, template.anchor)
            assert repr(made) == repr((bound.query, bound.categories, bound.start, bound.end, bound.anchor))
