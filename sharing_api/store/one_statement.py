"""One statement that is its own transaction, run straight through the driver (issue 12).

The hot reads (the sharing decision, a search page, a read by id) and a read's audit INSERT are one
statement each. On PostgreSQL such a statement runs in autocommit: it is its own transaction, with the
snapshot a one-statement transaction would have, and an INSERT is committed (durably, with
``synchronous_commit`` on) before the server answers. Through SQLAlchemy's ``Connection`` that cost a
switch of the pooled connection to autocommit and back (isolation-level bookkeeping on every checkout
and return) and its execution layer (context, cursor result, row processing): more Python than the
statement. ``run`` takes a connection from the engine's autocommit sibling (``engine.autocommit_engine``:
its connections are opened in autocommit once; the same idle ping and recycling as the engine's own
pool, no reset on return: a connection left other than idle is discarded instead; a statement planned
with its values takes one of the engine's own, see "Plans" below) and runs the
compiled SQL with a psycopg cursor kept with that connection for that SQL (``_cursor``), whose rows
have attribute access by column name.

Plans: psycopg prepares a statement on the server after its fifth execution on a connection. The
autocommit connections open with ``plan_cache_mode=force_generic_plan``, so a statement marked
``CompiledStatement.generic_plan`` is planned once per connection, not per execution (planning was two
thirds of PostgreSQL's CPU for a search page). Any other statement (a search that no index leads, whose
best plan depends on the values) runs on one of the engine's own connections instead, which open with
``force_custom_plan`` (``engine.make_engine``), lent in autocommit for that one statement (psycopg's
``autocommit`` flag, switched on an idle connection without a message to the server, and back before
the connection returns to the engine's pool). So no connection ever changes its mode: before, a search
that no index leads switched its pooled connection with ``SET plan_cache_mode`` and the audit INSERT
after it switched it back, two more round trips per request (about 50 µs of PostgreSQL's CPU each
in ``benchmarks.inprocess``). Prepared statements belong to their connection, so a fresh one
prepares its own.

A dead connection (the server restarted, an idle connection cut) is taken out of the pool
(``invalidate``). A read is then retried once on a fresh connection: a read that failed changed
nothing. A write is never retried, because an error after the server committed cannot be told from
one before; the error goes to the caller, which answers 503 (fail closed). Driver errors are raised as
SQLAlchemy's ``DBAPIError`` subclasses (``OperationalError``, ``IntegrityError``, ...), as the
``Connection`` path raises them, without the parameters (they can name a patient).

SQLite keeps the ``Connection`` path: a read transaction, or a write transaction (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, StatementError

from sharing_api.store.compiled import CompiledStatement
from sharing_api.store.engine import autocommit_engine

__all__ = ["driver_error", "run"]

TUPLES_OK = ExecStatus.TUPLES_OK
IDLE = TransactionStatus.IDLE


def run(
    engine: Engine, statement: CompiledStatement, values: dict[str, Any], *, write: bool = False
) -> list[Any]:
    """The rows of ``statement`` run with ``values`` as its own transaction, committed when this returns
    (rows with attribute access by column name; none for a statement that returns none).

    ``write``: the statement changes data (never retried; on SQLite a write transaction)."""
    if engine.dialect.name != "postgresql":
        with engine.connect().execution_options(write=write) as conn, conn.begin():
            result = statement.execute(conn, values)
            return result.all() if result.returns_rows else []
    args = statement.arguments(values)
    retries = 0 if write else 1
    while True:
        try:
            return _run_postgresql(engine, statement, args)
        except _Dead as dead:
            if retries == 0:
                raise dead.error from dead.error.orig
            retries -= 1


class _Dead(Exception):
    """The connection died under the statement; ``error`` is what the caller gets if it is not retried."""

    def __init__(self, error: StatementError):
        super().__init__(str(error))
        self.error = error


_CURSORS = "cursors"
"""Key of a pooled connection's ``info``: its cursors by the SQL they run (see ``_cursor``)."""
MAX_CURSORS = 64
"""Cursors kept per connection; past this many statements they are closed and made again."""


def _cursor(info: dict[str, Any], conn: Any, sql: str) -> Any:
    """The cursor of ``conn`` that runs ``sql``, made on its first use there and kept with the
    connection (in its pool record's ``info``, which the pool clears when it replaces the connection).

    A psycopg cursor made per statement was ~25k instructions (its adapters map, transformer, row
    maker); one kept per statement also keeps its transformer (psycopg makes a new one whenever the
    query is another object than the last), whose loaders are looked up once per column type: ~40k
    instructions less per statement. (``_run_postgresql`` frees each result once its rows are
    fetched: a kept cursor holds no page of rows between statements.)"""
    cursors: dict[str, Any] | None = info.get(_CURSORS)
    if cursors is None:
        cursors = info[_CURSORS] = {}
    cursor = cursors.get(sql)
    if cursor is None:
        if len(cursors) >= MAX_CURSORS:
            for old in cursors.values():
                old.close()
            cursors.clear()
        cursor = cursors[sql] = conn.cursor(row_factory=_named_rows())
    return cursor


def _named_rows() -> Any:
    """A row factory for one cursor, so for one statement, whose columns never change: psycopg's
    ``namedtuple_row`` on its first result, kept for the later ones (it reads the column names and
    looks the row class up in a cache on every execution: ~14k instructions), its rows made by
    ``tuple.__new__`` in C instead of the class's ``_make`` in Python (~0.4k instructions a row).
    The rows are the same: instances of psycopg's row class, attribute access by column name."""
    made: list[Any] = []

    def factory(cursor: Any) -> Any:
        if not made:
            maker: Any = namedtuple_row(cursor)  # ``Row._make``; ``no_result`` for a statement without rows
            row_class = getattr(maker, "__self__", None)
            if isinstance(row_class, type) and issubclass(row_class, tuple):
                maker = partial(tuple.__new__, row_class)
            made.append(maker)
        return made[0]

    return factory


def driver_error(dialect: Any, sql: str | None, exc: Exception, *, dead: bool = False) -> StatementError:
    """The driver's error ``exc`` as SQLAlchemy's ``DBAPIError`` subclass (``OperationalError``,
    ``IntegrityError``, ...), as ``Connection.execute`` raises it, but without the parameters (they can
    name a patient); ``dead``: the connection died under it and was invalidated."""
    return DBAPIError.instance(
        sql,
        None,
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=dead,
        dialect=dialect,
    )


def _run_postgresql(engine: Engine, statement: CompiledStatement, args: Any) -> list[Any]:
    sql = statement.sql
    dbapi = engine.dialect.loaded_dbapi
    lent = not statement.generic_plan  # one of the engine's own connections, lent for this statement
    try:
        # a checkout: idle ones pinged, old ones recycled
        pooled = (engine if lent else autocommit_engine(engine)).raw_connection()
    except dbapi.Error as exc:  # no connection to be had (the server is down): as Engine.connect raises it
        raise driver_error(engine.dialect, None, exc) from exc
    conn: Any = pooled.driver_connection
    try:
        if lent:
            conn.autocommit = True  # on an idle connection: nothing is sent to the server
        cursor = _cursor(pooled.info, conn, sql)
        # Rows in binary: a stored resource (bytea) arrives as its bytes instead of hex text that
        # libpq decodes (PQunescapeBytea: ~3 % of a search's instructions for 12 hits); every column
        # type these statements return has a binary loader giving the same Python value.
        cursor.execute(sql, args, binary=True)
        # whether it returned rows, from the result's status: ``description`` builds a Column
        # object per column, which nothing here reads (~0.13 M instructions a search or read)
        result = cursor.pgresult
        if result is None:
            return []
        rows = cursor.fetchall() if result.status == TUPLES_OK else []
        result.clear()  # the rows are Python objects now; the kept cursor need not hold libpq's copy
        return rows
    except dbapi.Error as exc:
        dead = bool(conn.closed or conn.broken)
        if dead:
            pooled.invalidate(exc)  # the pool opens a new connection in its place
        error = driver_error(engine.dialect, sql, exc, dead=dead)
        if dead:
            raise _Dead(error) from exc
        raise error from exc
    finally:
        # Back to its pool (the autocommit pool does not reset it: ``autocommit_engine``), unless
        # something cut the statement short (an exception between sending it and reading its result):
        # a connection that is not idle is not reused. A lent connection goes back to the engine as it
        # came, out of autocommit, for the transactions it runs there.
        if pooled.is_valid:
            if conn.pgconn.transaction_status != IDLE:
                pooled.invalidate()
            elif lent:
                conn.autocommit = False
        pooled.close()
