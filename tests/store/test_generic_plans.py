"""The statements ``store.one_statement`` runs with a generic plan (``CompiledStatement.generic_plan``:
planned once per connection, for every value) are planned through the intended index, on PostgreSQL
with 100,000 stored observations (issue 12; the rows: ``plan_data``).

Each statement is sent the way the app sends it (the store's own call, through the autocommit pool)
until psycopg has prepared it; the test then reads, on that pooled connection, how often PostgreSQL
planned it generically and with its values (``pg_prepared_statements``), and ``EXPLAIN EXECUTE``s the
cached plan. An index change that leaves a generic plan without its index fails here, although the
same statement planned with its values (``test_search_plan``) may still be fine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy import Engine, text

from consent.model import PurposeOfUse
from sharing_api.fhir.dates import to_micros
from sharing_api.fhir.identifiers import FNR
from sharing_api.fhir.search import parse_search
from sharing_api.store import one_statement
from sharing_api.store.compiled import CompiledStatement
from sharing_api.store.engine import autocommit_engine, make_engine
from sharing_api.store.observations import Lead, ObservationStore, ReadScope
from sharing_api.store.policy import PolicyStore
from tests.conftest import TENANT_A
from tests.factories import CATEGORY, LOINC, fnr
from tests.store.plan_data import FIRST

pytestmark = pytest.mark.slow

RUNS = 8
"""Executions per statement: psycopg prepares a statement after its fifth on a connection."""
HOSPITAL_ORG = "974633574"
AGREEMENT_SCOPE = ReadScope(categories=frozenset({"vital-signs", "activity"}), start=0)
"""A decision's read scope with an agreement's categories and the start of its data period."""

# Agreements between 40 organisations and 100 consumers each, and 20,000 patients' directives: the
# tables the decision reads, at a size where reading them whole would cost.
BULK_AGREEMENTS = """
INSERT INTO agreements (id, controller, consumer, categories, purposes, valid_from, created, write_categories)
SELECT 'bulk-' || g, lpad((g / 100)::text, 9, '0'), lpad((100 + g % 100)::text, 9, '0'), 'vital-signs',
       'TREAT', 0, 0, ''
FROM generate_series(0, 3999) AS g
"""
BULK_DIRECTIVES = """
INSERT INTO directives (tenant, id, version_id, last_updated, patient_system, patient_value, kind, data)
SELECT :tenant, 'bulk-' || g, 1, 0, :fnr, lpad(g::text, 11, '0'), 'reservation', convert_to('{}', 'UTF8')
FROM generate_series(1, 20000) AS g
"""


@pytest.fixture
def engine(plan_database: tuple[Engine, list[str]]) -> Iterator[Engine]:
    """An engine of one connection per pool on the 100,000 observations, so that every execution of a
    statement reaches the same pooled connection."""
    eng = make_engine(str(plan_database[0].url.render_as_string(hide_password=False)), pool_size=1)
    yield eng
    eng.dispose()


@pytest.fixture
def patients(plan_database: tuple[Engine, list[str]]) -> list[str]:
    return plan_database[1]


@pytest.fixture(scope="module")
def policy_tables(plan_database: tuple[Engine, list[str]]) -> None:
    with plan_database[0].begin() as conn:
        conn.execute(text(BULK_AGREEMENTS))
        conn.execute(text(BULK_DIRECTIVES), {"tenant": TENANT_A, "fnr": FNR})
    with plan_database[0].connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE agreements, directives")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def pool_plan(engine: Engine, monkeypatch: pytest.MonkeyPatch, work: Callable[[], object]) -> dict[str, Any]:
    """The plan the autocommit pool's connection has cached for the one statement ``work()`` sends,
    once psycopg has prepared it, run with ``work``'s values (``EXPLAIN (ANALYZE, BUFFERS)``)."""
    return pool_plans(engine, monkeypatch, [work])[0][0]


def pool_plans(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, works: list[Callable[[], object]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """For each of ``works``, which all send one statement (the first is sent until psycopg has
    prepared it): the plan the autocommit pool's connection has cached for it, and the plan PostgreSQL
    makes with that work's values (``plan_cache_mode=force_custom_plan``), each run with them
    (``EXPLAIN (ANALYZE, BUFFERS)``)."""
    sent: list[tuple[CompiledStatement, Any]] = []
    real = one_statement._run_postgresql

    def recording(eng: Engine, statement: CompiledStatement, args: Any) -> list[Any]:
        sent.append((statement, args))
        return real(eng, statement, args)

    monkeypatch.setattr(one_statement, "_run_postgresql", recording)
    for _ in range(RUNS):
        works[0]()
    for work in works[1:]:
        work()
    monkeypatch.setattr(one_statement, "_run_postgresql", real)
    statement = sent[-1][0]
    assert {s.sql for s, _ in sent} == {statement.sql}, "every work sends one and the same statement"
    values = [sent[RUNS - 1][1]] + [args for _, args in sent[RUNS:]]
    pooled = autocommit_engine(engine).raw_connection()
    try:
        conn: Any = pooled.driver_connection
        prepared = conn.execute(
            "SELECT name, parameter_types::text[], generic_plans, custom_plans FROM pg_prepared_statements"
        ).fetchall()
        assert len(prepared) == 1, prepared
        name, types, generic, custom = prepared[0]
        assert custom == 0, prepared  # never planned with its values,
        assert generic >= 1, prepared  # but once for all values
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", statement.sql)))  # psycopg's $1, $2, ...

        def explain(args: Any) -> dict[str, Any]:
            literals = sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Literal(args[n]), sql.SQL(t))
                for n, t in zip(names, types, strict=True)
            )
            query = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {}({})").format(
                sql.Identifier(name), literals
            )
            return dict(conn.execute(query).fetchone()[0][0]["Plan"])

        cached = [explain(args) for args in values]
        conn.execute("SET plan_cache_mode = force_custom_plan")
        try:
            made = [explain(args) for args in values]
        finally:
            conn.execute("SET plan_cache_mode = force_generic_plan")  # as the pool opened it
    finally:
        pooled.close()
    return list(zip(cached, made, strict=True))


def _brief(nodes: Any) -> Any:
    """What a failed assertion prints of plan nodes: their type, table, index and index condition."""
    if isinstance(nodes, dict):
        keys = ("Node Type", "Relation Name", "Index Name", "Index Cond", "Actual Loops")
        return {k: nodes[k] for k in keys if k in nodes}
    return [_brief(n) for n in nodes]


def _scans(plan: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    return [n for n in _nodes(plan) if "Scan" in n["Node Type"] and n.get("Relation Name") == relation]


def _no_seq_scan(plan: dict[str, Any]) -> None:
    scans = [n for n in _nodes(plan) if n["Node Type"] == "Seq Scan"]
    assert not scans, _brief(scans)


def _query(patient: str, prefixes: tuple[str, str], day: int) -> Any:
    start, end = FIRST + timedelta(days=day), FIRST + timedelta(days=day + 6)
    return parse_search(
        [
            ("patient.identifier", f"{FNR}|{patient}"),
            ("code", f"{LOINC}|8867-4"),
            ("date", f"{prefixes[0]}{start:%Y-%m-%d}"),
            ("date", f"{prefixes[1]}{end:%Y-%m-%d}"),
        ],
        strict=True,
        default_count=50,
        max_count=1000,
    )


@pytest.mark.parametrize("prefixes", [("ge", "le"), ("ge", "lt")], ids=["ge-le", "ge-lt"])
@pytest.mark.parametrize("scope", [ReadScope(), AGREEMENT_SCOPE], ids=["no-scope", "agreement-scope"])
@pytest.mark.parametrize("what", ["page", "count"])
def test_a_search_for_a_patients_code_and_period_is_led_by_the_patient_token_index(
    engine: Engine,
    patients: list[str],
    monkeypatch: pytest.MonkeyPatch,
    prefixes: tuple[str, str],
    scope: ReadScope,
    what: str,
) -> None:
    store = ObservationStore(engine, lambda: 0)
    query = _query(patients[len(patients) // 3], prefixes, day=40)
    hits = 2 * (7 if prefixes[1] == "le" else 6)  # two heart rates a day; le takes in the last day
    if what == "page":
        assert len(store.search(TENANT_A, query, scope=scope).rows) == hits
        plan = pool_plan(engine, monkeypatch, lambda: store.search(TENANT_A, query, scope=scope))
        assert plan["Actual Rows"] == hits
    else:
        assert store.count(TENANT_A, query, scope) == hits
        plan = pool_plan(engine, monkeypatch, lambda: store.count(TENANT_A, query, scope))
    _no_seq_scan(plan)
    tokens = _scans(plan, "observation_tokens")
    led = [n for n in tokens if n.get("Index Name") == "ix_observation_tokens_patient"]
    assert led, _brief(tokens)
    # the period bounds the index range: what is read is the period's tokens, not the patient's history
    for node in led:
        assert "patient_value" in node["Index Cond"], _brief(node)
        assert "effective_start" in node["Index Cond"], _brief(node)
        assert node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0) <= hits + 2
    assert all(n.get("Index Name") == "observation_tokens_pkey" for n in tokens if n not in led), _brief(
        tokens
    )
    # one primary-key lookup per hit, never a walk through the patient's observations
    observations = _scans(plan, "observations")
    assert observations, _brief(list(_nodes(plan)))
    for node in observations:
        assert node.get("Index Name") == "observations_pkey", _brief(node)
        assert node["Actual Loops"] <= hits + 2, _brief(node)


@pytest.mark.parametrize("scope", [ReadScope(), AGREEMENT_SCOPE], ids=["no-scope", "agreement-scope"])
def test_a_read_by_id_is_a_primary_key_lookup(
    engine: Engine, patients: list[str], monkeypatch: pytest.MonkeyPatch, scope: ReadScope
) -> None:
    store = ObservationStore(engine, lambda: 0)
    found = store.read(TENANT_A, "plan-4242", scope)
    assert found is not None
    assert found.id == "plan-4242"
    plan = pool_plan(engine, monkeypatch, lambda: store.read(TENANT_A, "plan-4242", scope))
    assert plan["Actual Rows"] == 1
    _no_seq_scan(plan)
    scans = [n for n in _nodes(plan) if "Scan" in n["Node Type"]]
    assert scans
    assert all(n.get("Index Name") in ("observations_pkey", "observation_tokens_pkey") for n in scans)
    assert [n["Actual Loops"] for n in scans] == [1] * len(scans)


@pytest.mark.usefixtures("policy_tables")
def test_the_sharing_decision_reads_the_parties_agreements_and_the_patients_directives_by_index(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = PolicyStore(engine, lambda: 0)
    agreement = policy.add_agreement(
        controller=TENANT_A,
        consumer=HOSPITAL_ORG,
        categories=frozenset({"vital-signs"}),
        purposes=frozenset({PurposeOfUse.TREAT}),
        valid_from=FIRST,
    )

    def decide() -> object:
        return policy.decision_records(TENANT_A, HOSPITAL_ORG, (FNR, "12345678901"))

    agreements, directives = decide()
    assert [a.id for a in agreements] == [agreement.id]
    assert directives == []
    plan = pool_plan(engine, monkeypatch, decide)
    _no_seq_scan(plan)
    assert [n.get("Index Name") for n in _scans(plan, "agreements")] == ["ix_agreements_parties"]
    on_directives = _scans(plan, "directives")
    assert [n.get("Index Name") for n in on_directives] == ["ix_directives_patient"]
    assert "patient_value" in on_directives[0]["Index Cond"]


# -- every common search shape: led (one plan for every value) or planned with its values ---------

RARE = "59408-5"
"""A code ``plan_data`` does not store; ``few_patient`` stores it for one patient of the many."""
NARROW, WIDE = (40, 46), (0, 179)
"""Periods, in days from ``FIRST``: a week, and the whole series."""
SHAPES: dict[str, tuple[tuple[str, str], ...]] = {
    "patient": (),
    "oldest first": (("_sort", "date"),),
    "by last update": (("_sort", "-_lastUpdated"),),
    "status": (("status", "final"),),
    "ge-le": (("date", "ge{start}"), ("date", "le{end}")),
    "ge": (("date", "ge{start}"),),
    "lt": (("date", "lt{end}"),),
    "code": (("code", f"{LOINC}|{{code}}"),),
    "code ge-lt": (("code", f"{LOINC}|{{code}}"), ("date", "ge{start}"), ("date", "lt{end}")),
    "code eq": (("code", f"{LOINC}|{{code}}"), ("date", "eq{start}")),
    "code without system": (("code", "{code}"),),
    "code without system ge-lt": (("code", "{code}"), ("date", "ge{start}"), ("date", "lt{end}")),
    "category": (("category", f"{CATEGORY}|vital-signs"),),
    "code and category": (("code", f"{LOINC}|{{code}}"), ("category", f"{CATEGORY}|vital-signs")),
}
"""The search parameters besides the patient of common searches, with the values left open."""
SCOPES = {
    "no scope": ReadScope(),
    "agreement": AGREEMENT_SCOPE,
    "period": ReadScope(
        start=to_micros(FIRST + timedelta(days=10)), end=to_micros(FIRST + timedelta(days=100))
    ),
}


@pytest.fixture(scope="module")
def few_patient(plan_database: tuple[Engine, list[str]]) -> str:
    """A patient with six observations (two heart rates a day for three days) among the patients of
    720 each; and ``RARE`` on ten days of one of the many (``plan_data``'s middle patient)."""
    patient = fnr()
    many = plan_database[1][len(plan_database[1]) // 3]
    day, hour = 86_400_000_000, 3_600_000_000
    rows = [(f"few-{d}-{h}", patient, "8867-4", d * day + h * hour) for d in range(3) for h in (8, 20)]
    rows += [(f"rare-{d}", many, RARE, (40 + d) * day + 12 * hour) for d in range(10)]
    with plan_database[0].begin() as conn:
        for obs_id, owner, code, offset in rows:
            start = to_micros(FIRST) + offset
            values = {"tenant": TENANT_A, "id": obs_id, "fnr": FNR, "patient": owner, "start": start}
            conn.execute(
                text(
                    "INSERT INTO observations (tenant, id, version_id, last_updated, patient_system,"
                    " patient_value, status, kind, effective_start, effective_end, data) VALUES (:tenant,"
                    " :id, 1, 0, :fnr, :patient, 'final', :kind, :start, :start + 1000000,"
                    " convert_to('{}', 'UTF8'))"
                ),
                {**values, "kind": f"{LOINC}|{code}"},
            )
            for param, system, token in (("code", LOINC, code), ("category", CATEGORY, "vital-signs")):
                conn.execute(
                    text(
                        "INSERT INTO observation_tokens (tenant, observation_id, param, system, code,"
                        " patient_system, patient_value, effective_start, effective_end) VALUES (:tenant,"
                        " :id, :param, :system, :token, :fnr, :patient, :start, :start + 1000000)"
                    ),
                    {**values, "param": param, "system": system, "token": token},
                )
    with plan_database[0].connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE observations, observation_tokens")
    return patient


def _search(shape: str, patient: str, code: str, period: tuple[int, int]) -> Any:
    start, end = (f"{FIRST + timedelta(days=d):%Y-%m-%d}" for d in period)
    params = [(k, v.format(code=code, start=start, end=end)) for k, v in SHAPES[shape]]
    return parse_search(
        [("patient.identifier", f"{FNR}|{patient}"), *params], strict=True, default_count=50, max_count=1000
    )


def _leading_scan(plan: dict[str, Any]) -> dict[str, Any]:
    """The scan that leads the plan: the outer side of every join, down to its first scan."""
    node = plan
    while "Scan" not in node["Node Type"]:
        node = node["Plans"][0]
    return node


def _work(plan: dict[str, Any]) -> int:
    """The rows a plan handled, whatever its buffers cost: each node's rows, and those its filters and
    join filters threw away (a join that compares every hit with every row is work without buffers)."""
    removed = ("Rows Removed by Filter", "Rows Removed by Join Filter", "Rows Removed by Index Recheck")
    return int(
        sum(n["Actual Rows"] * n["Actual Loops"] + sum(n.get(k, 0) for k in removed) for n in _nodes(plan))
    )


@pytest.mark.parametrize("what", ["page", "count"])
@pytest.mark.parametrize("scope", list(SCOPES), ids=list(SCOPES))
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_a_shape_the_store_plans_once_is_led_by_its_index_for_every_value(
    engine: Engine,
    patients: list[str],
    few_patient: str,
    monkeypatch: pytest.MonkeyPatch,
    shape: str,
    scope: str,
    what: str,
) -> None:
    """The registry (``ObservationStore.lead_of``) decides which shapes are planned once; a shape it
    leads is proved here: its generic plan starts at its lead's index with the patient and handles no
    more rows than the plan PostgreSQL makes with the values, for a patient with many observations and
    one with few, a common and a rare code, a narrow and a wide period. Every other shape is sent to be
    planned with its values (why, by shape: ``Lead``)."""
    store = ObservationStore(engine, lambda: 0)
    read = SCOPES[scope]
    many = patients[len(patients) // 3]
    searches = [
        _search(shape, many, "8867-4", NARROW),
        _search(shape, many, "8867-4", WIDE),
        _search(shape, few_patient, "8867-4", NARROW),
        _search(shape, many, RARE, WIDE),
    ]

    def work(query: Any) -> Callable[[], object]:
        if what == "page":
            return lambda: store.search(TENANT_A, query, scope=read)
        return lambda: store.count(TENANT_A, query, read)

    lead = ObservationStore.lead_of(searches[0], read.categories, count=what == "count")
    sent: list[CompiledStatement] = []
    real = one_statement._run_postgresql

    def recording(eng: Engine, statement: CompiledStatement, args: Any) -> list[Any]:
        sent.append(statement)
        return real(eng, statement, args)

    with monkeypatch.context() as patch:
        patch.setattr(one_statement, "_run_postgresql", recording)
        work(searches[0])()
    assert [s.generic_plan for s in sent] == [lead is not None]
    if lead is None:
        return
    for cached, made in pool_plans(engine, monkeypatch, [work(q) for q in searches]):
        _no_seq_scan(cached)
        first = _leading_scan(cached)
        assert first.get("Index Name") == lead.value, _brief(first)
        assert "patient_value" in first["Index Cond"], _brief(first)
        # as good as the plan made with these values: no more rows handled (it may be another plan)
        assert _work(cached) <= _work(made), (_brief(list(_nodes(cached))), _brief(list(_nodes(made))))


def test_every_lead_is_proved_by_a_common_shape() -> None:
    """A lead the registry gives no shape of ``SHAPES`` would be planned once without a proof above."""
    leads = {
        ObservationStore.lead_of(
            _search(shape, "12345678901", "8867-4", NARROW), scope.categories, count=count
        )
        for shape in SHAPES
        for scope in SCOPES.values()
        for count in (False, True)
    }
    assert leads == {*Lead, None}
