"""``store.one_statement``: a statement that is its own transaction, through the driver on PostgreSQL.

What a caller notices: the rows, a database error as SQLAlchemy's exception class (the routes answer
those with 503), a read that survives a connection the server cut, a write that is never sent twice,
and the autocommit connections closed with the engine. On PostgreSQL a statement planned once for all
values and one planned with its values run on different connections (the autocommit pool's, and the
engine's own lent in autocommit), so the tests of the driver path run with both kinds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    Text,
    bindparam,
    cast,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.exc import DataError, OperationalError

from sharing_api.store import one_statement
from sharing_api.store.compiled import CompiledStatement
from sharing_api.store.engine import autocommit_engine, make_engine, normalise_url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = make_engine(database_url, pool_size=2)
    yield made
    made.dispose()


@pytest.fixture
def pg_engine(engine: Engine) -> Engine:
    if engine.dialect.name != "postgresql":
        pytest.skip("the driver path and its autocommit pool are PostgreSQL's")
    return engine


PLANS = pytest.mark.parametrize("generic_plan", [True, False], ids=["generic-plan", "custom-plan"])
"""The driver path's two kinds of statement: on the autocommit pool, and on a lent engine connection."""


def _statement(engine: Engine, stmt: object, *, generic_plan: bool = False) -> CompiledStatement:
    return CompiledStatement.of(stmt, engine.dialect, generic_plan=generic_plan)  # type: ignore[arg-type]


def _plans(engine: Engine, *, generic_plan: bool) -> CompiledStatement:
    """A statement answering with the ``plan_cache_mode`` it runs under, and its backend."""
    stmt = select(func.current_setting("plan_cache_mode").label("mode"), func.pg_backend_pid().label("pid"))
    return CompiledStatement.of(stmt, engine.dialect, generic_plan=generic_plan)


def _backend_pid(engine: Engine, *, generic_plan: bool = False) -> int:
    stmt = _statement(engine, select(func.pg_backend_pid().label("pid")), generic_plan=generic_plan)
    return int(one_statement.run(engine, stmt, {})[0].pid)


def _terminate(database_url: str, pid: int) -> None:
    url = normalise_url(database_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        # with a timeout, pg_terminate_backend returns once the backend has exited
        assert conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone() == (True,)


def test_rows_come_back_by_column_name(engine: Engine) -> None:
    stmt = _statement(engine, select(bindparam("n", type_=Integer).label("n"), literal("x").label("s")))
    for n in (7, 8):  # the first execution on a connection, and a later one
        rows = one_statement.run(engine, stmt, {"n": n})
        assert [(r.n, r.s) for r in rows] == [(n, "x")]
        assert rows[0]._asdict() == {"n": n, "s": "x"}


@PLANS
def test_rows_hold_the_values_the_connection_path_gives(engine: Engine, generic_plan: bool) -> None:
    # On PostgreSQL the rows come in binary (a stored resource's bytes without hex decoding): the same
    # Python values as SQLAlchemy's own execution of the statement.
    stmt = _statement(
        engine,
        select(
            bindparam("data", type_=LargeBinary).label("data"),
            bindparam("when", type_=DateTime(timezone=True)).label("at"),
            bindparam("n", type_=BigInteger).label("n"),
            bindparam("s", type_=Text).label("s"),
            bindparam("b", type_=Boolean).label("b"),
        ),
        generic_plan=generic_plan,
    )
    values = {
        "data": b'{"resourceType":"Observation","note":"\xc3\xa6\x00"}',
        "when": datetime(2026, 11, 3, 8, 0, tzinfo=UTC),
        "n": 2**40,
        "s": "bl\u00e5b\u00e6r",
        "b": True,
    }
    [row] = one_statement.run(engine, stmt, values)
    with engine.connect() as conn:
        [expected] = stmt.execute(conn, values).all()
    assert tuple(row) == tuple(expected)
    assert row.data == values["data"]


@PLANS
def test_a_database_error_arrives_as_sqlalchemys(engine: Engine, generic_plan: bool) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite casts any text to an integer")
    stmt = _statement(engine, select(cast(bindparam("v"), Integer).label("v")), generic_plan=generic_plan)
    with pytest.raises(DataError):
        one_statement.run(engine, stmt, {"v": "not a number"})
    assert one_statement.run(engine, stmt, {"v": "12"})[0].v == 12  # the connection is still usable


@PLANS
def test_the_statement_runs_in_autocommit_on_postgresql(pg_engine: Engine, generic_plan: bool) -> None:
    stmt = _statement(
        pg_engine, select(func.txid_current_if_assigned().label("tx")), generic_plan=generic_plan
    )
    # in autocommit each statement is its own transaction: no transaction id is held open between them
    assert one_statement.run(pg_engine, stmt, {})[0].tx is None
    with pg_engine.connect() as conn:  # the engine's own connections keep their transactions
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
        assert conn.in_transaction()


@PLANS
def test_a_statement_after_one_that_left_a_transaction_open_is_its_own_transaction(
    pg_engine: Engine, generic_plan: bool
) -> None:
    """The autocommit pool does not roll back what it gets back: a connection left in a transaction is
    not handed out again (nor is a lent one given back to the engine)."""
    assert (
        one_statement.run(pg_engine, _statement(pg_engine, text("BEGIN"), generic_plan=generic_plan), {})
        == []
    )
    tx = _statement(pg_engine, select(func.txid_current().label("tx")), generic_plan=generic_plan)
    first, second = (one_statement.run(pg_engine, tx, {})[0].tx for _ in range(2))
    assert first != second  # in one open transaction both would have its id


@PLANS
def test_a_read_on_a_connection_the_server_cut_is_retried_on_a_fresh_one(
    pg_engine: Engine, database_url: str, generic_plan: bool
) -> None:
    first = _backend_pid(pg_engine, generic_plan=generic_plan)
    _terminate(database_url, first)
    second = _backend_pid(pg_engine, generic_plan=generic_plan)  # the pooled one is dead: a new one
    assert second != first
    assert _backend_pid(pg_engine, generic_plan=generic_plan) == second  # and the new one is pooled


@PLANS
def test_a_write_on_a_connection_the_server_cut_is_not_sent_again(
    pg_engine: Engine, database_url: str, generic_plan: bool
) -> None:
    pid = _backend_pid(pg_engine, generic_plan=generic_plan)
    _terminate(database_url, pid)
    stmt = _statement(pg_engine, select(func.pg_backend_pid().label("pid")), generic_plan=generic_plan)
    with pytest.raises(OperationalError) as raised:
        one_statement.run(pg_engine, stmt, {}, write=True)
    assert raised.value.connection_invalidated
    assert _backend_pid(pg_engine, generic_plan=generic_plan) != pid  # the dead connection left the pool


def test_marked_statements_are_planned_for_all_values_and_the_others_with_theirs(pg_engine: Engine) -> None:
    generic, custom = _plans(pg_engine, generic_plan=True), _plans(pg_engine, generic_plan=False)
    for statement in (generic, custom, custom, generic, generic, custom):
        expected = "force_generic_plan" if statement.generic_plan else "force_custom_plan"
        assert one_statement.run(pg_engine, statement, {})[0].mode == expected
    with pg_engine.connect() as conn:  # the engine's own connections (ingest) plan with the values
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"


def test_no_connection_is_switched_from_one_plan_mode_to_the_other(pg_engine: Engine) -> None:
    """As a search that no index leads runs, between the decision and the audit INSERT (both planned
    once for all values): each statement runs on a connection opened in its mode, and no connection
    changes mode (a switch was a ``SET plan_cache_mode`` round trip before the page and after it)."""
    generic, custom = _plans(pg_engine, generic_plan=True), _plans(pg_engine, generic_plan=False)
    modes: dict[int, set[str]] = {}
    for statement in (generic, custom, generic) * 3:
        row = one_statement.run(pg_engine, statement, {})[0]
        assert row.mode == ("force_generic_plan" if statement.generic_plan else "force_custom_plan")
        modes.setdefault(row.pid, set()).add(row.mode)
    assert all(len(seen) == 1 for seen in modes.values()), modes


def test_a_connection_lent_to_a_statement_goes_back_to_the_engine_for_its_transactions(
    pg_engine: Engine,
) -> None:
    """A statement planned with its values runs on one of the engine's own connections in autocommit;
    the engine gets it back out of autocommit: its next transaction holds across statements."""
    lent = _backend_pid(pg_engine, generic_plan=False)
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == lent  # the one lent
        first = conn.exec_driver_sql("SELECT txid_current()").scalar()
        assert conn.exec_driver_sql("SELECT txid_current()").scalar() == first  # one transaction
        conn.rollback()


def test_a_fresh_connection_runs_in_the_mode_its_statement_asks_for(
    pg_engine: Engine, database_url: str
) -> None:
    """A connection switched to custom plans is cut; the read is retried on a fresh connection, which
    opens with generic plans and must be switched again (its pool record starts anew)."""
    custom = _plans(pg_engine, generic_plan=False)
    first = one_statement.run(pg_engine, custom, {})[0]
    assert first.mode == "force_custom_plan"
    _terminate(database_url, first.pid)
    again = one_statement.run(pg_engine, custom, {})[0]
    assert again.pid != first.pid
    assert again.mode == "force_custom_plan"


def test_a_prepared_statement_is_prepared_again_on_a_fresh_connection(
    pg_engine: Engine, database_url: str
) -> None:
    """psycopg prepares a statement after its fifth execution on a connection; the server forgets it
    with the connection, and the retried read is prepared anew on the fresh one."""
    stmt = _statement(
        pg_engine, select(bindparam("n", type_=Integer).label("n"), func.pg_backend_pid().label("pid"))
    )
    stmt = CompiledStatement(stmt.sql, stmt.compiled, stmt.positional, generic_plan=True)
    pids = {one_statement.run(pg_engine, stmt, {"n": n})[0].pid for n in range(12)}
    prepared = _statement(  # on the same pool, so on the connection that ran ``stmt``
        pg_engine,
        select(func.count().label("n")).select_from(text("pg_prepared_statements")),
        generic_plan=True,
    )
    assert one_statement.run(pg_engine, prepared, {})[0].n >= 1
    for pid in pids:
        _terminate(database_url, pid)
    rows = [one_statement.run(pg_engine, stmt, {"n": n})[0] for n in range(12)]
    assert [r.n for r in rows] == list(range(12))
    assert not {r.pid for r in rows} & pids


def test_disposing_the_engine_closes_its_autocommit_connections(pg_engine: Engine) -> None:
    _backend_pid(pg_engine, generic_plan=True)
    _backend_pid(pg_engine, generic_plan=False)
    sibling = autocommit_engine(pg_engine)
    assert sibling.pool.checkedin() == 1
    assert pg_engine.pool.checkedin() == 1  # the one lent to a statement
    pg_engine.dispose()
    assert sibling.pool.checkedin() == 0
    assert autocommit_engine(pg_engine) is not sibling  # a new sibling, if the engine is used again


def test_no_server_to_connect_to_is_sqlalchemys_operational_error() -> None:
    """The routes answer ``sqlalchemy.exc.OperationalError`` with 503 (a raw driver error would be 500)."""
    engine = make_engine(
        "postgresql://postgres@127.0.0.1:1/nowhere", pool_size=1
    )  # nothing listens on port 1
    try:
        with pytest.raises(OperationalError):
            one_statement.run(engine, _statement(engine, select(literal(1).label("one"))), {})
    finally:
        engine.dispose()
