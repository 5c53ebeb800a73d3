"""Many rows at once: multi-row INSERTs of fixed text, and PostgreSQL ``COPY`` for bulk loads.

``insert_rows``: on PostgreSQL the rows go by binary ``COPY`` (``copy_rows``) inside the caller's
transaction: psycopg formats each row in C and the server inserts them in batches, without a statement
to parse or an array per column to build (the ``INSERT ... SELECT * FROM unnest(...)`` this replaced
quoted every element of a text array in Python, the stored JSON hex-escaped as ``bytea``: a fifth of an
ingest's instructions). For tables written without ``ON CONFLICT`` (new ids only). Other databases use
the executemany of the cached ``INSERT``.

``copy_observations``: new observations written with ``COPY ... FROM STDIN`` (psycopg 3), the rows
built by ``ObservationStore.new_rows`` (the rows ``create_many`` writes). A bulk load, not an ingest
path: no idempotency check before the write (a known business identifier fails the load on the
identifiers' primary key, or on its rebuild in ``deferred_indexes``), no audit event.
``deferred_indexes`` drops the tables' indexes and primary keys for the load and builds them again
afterwards, from their definitions as PostgreSQL reports them; ``analyze`` refreshes the planner's
statistics after a load (issue 13).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Dialect, Engine, Table, insert
from sqlalchemy.exc import DBAPIError

from sharing_api.store.schema import (
    observation_history,
    observation_identifiers,
    observation_tokens,
    observations,
)

if TYPE_CHECKING:
    from sharing_api.fhir.validation import ValidObservation
    from sharing_api.store.observations import ObservationStore

OBSERVATION_TABLES = (observations, observation_history, observation_tokens, observation_identifiers)
"""The tables creating an observation writes."""


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with every column of ``table``) into ``table``, in ``conn``'s transaction."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        copy_rows(conn, table, rows)
    else:
        conn.execute(insert(table), list(rows))


def _require_postgresql(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        raise ValueError(f"COPY is PostgreSQL's; this database is {conn.dialect.name}")


@lru_cache(maxsize=64)
def _copy_sql(table: Table, dialect: Dialect) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The ``COPY ... FROM STDIN (FORMAT BINARY)`` of every column of ``table``, the column names, and
    the PostgreSQL type of each (a binary row must say its types: ``varchar``, ``integer``, ...)."""
    quote = dialect.identifier_preparer
    columns = tuple(c.name for c in table.columns)
    types = tuple(c.type.compile(dialect=dialect).split("(", 1)[0].lower() for c in table.columns)
    names = ", ".join(quote.quote(c) for c in columns)
    # Table and column names from the schema (quoted), never from input; the rows are data.
    return f"COPY {quote.format_table(table)} ({names}) FROM STDIN (FORMAT BINARY)", columns, types


def copy_rows(conn: Connection, table: Table, rows: Iterable[dict[str, Any]]) -> int:
    """``COPY`` ``rows`` (dicts with every column of ``table``) into ``table`` inside ``conn``'s
    transaction (PostgreSQL only, binary format); returns how many rows were written."""
    _require_postgresql(conn)
    sql, columns, types = _copy_sql(table, conn.dialect)
    written = 0
    raw = conn.connection.driver_connection
    assert raw is not None
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        with raw.cursor() as cur, cur.copy(sql) as copy:
            copy.set_types(list(types))
            for row in rows:
                copy.write_row([row[c] for c in columns])
                written += 1
    except dbapi_error as exc:
        # As SQLAlchemy would for its own statements: the driver's error as SQLAlchemy's (a lost
        # connection is an OperationalError, answered 503), and a dead connection not pooled again.
        lost = conn.dialect.is_disconnect(exc, raw, None)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql, None, exc, dbapi_error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc
    return written


def copy_observations(
    conn: Connection,
    store: ObservationStore,
    tenant: str,
    items: Sequence[tuple[str, ValidObservation]],
    now: int,
) -> None:
    """Write new observations ``items`` (id, validated observation), created at ``now``, with ``COPY``:
    the rows ``create_many`` would write for them, in ``conn``'s transaction (PostgreSQL only)."""
    _require_postgresql(conn)
    new = [store.new_rows(tenant, obs_id, valid, now) for obs_id, valid in items]
    copy_rows(conn, observations, (r.observation for r in new))
    copy_rows(conn, observation_history, (r.history for r in new))
    copy_rows(conn, observation_tokens, (t for r in new for t in r.tokens))
    copy_rows(conn, observation_identifiers, (i for r in new for i in r.identifiers))


@contextmanager
def deferred_indexes(
    engine: Engine, tables: Sequence[Table] = OBSERVATION_TABLES, work_mem: str = "256MB"
) -> Iterator[list[str]]:
    """Drop ``tables``' secondary indexes and primary keys (PostgreSQL) for a bulk load, and build them
    again afterwards with the definitions PostgreSQL reported before (``maintenance_work_mem`` of
    ``work_mem`` for this session only); yields the statements that rebuild them. A duplicate key
    loaded meanwhile fails the rebuild, as it would have failed the load."""
    names = [t.name for t in tables]
    with engine.connect() as conn, conn.begin():
        _require_postgresql(conn)
        keys = conn.exec_driver_sql(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) "
            "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "WHERE c.contype = 'p' AND t.relname = ANY(%(names)s) AND t.relnamespace = "
            "current_schema()::regnamespace ORDER BY 1, 2",
            {"names": names},
        ).all()
        indexes = conn.exec_driver_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = ANY(%(names)s) AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE contype = 'p') ORDER BY 1",
            {"names": names},
        ).all()
        quote = conn.dialect.identifier_preparer.quote
        for index_name, _ in indexes:
            conn.exec_driver_sql(f"DROP INDEX {quote(index_name)}")
        for table, key, _ in keys:
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {quote(key)}")
    rebuild = [f"ALTER TABLE {table} ADD CONSTRAINT {quote(key)} {d}" for table, key, d in keys]
    rebuild += [d for _, d in indexes]
    try:
        yield rebuild
    finally:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{work_mem}'")
            for statement in rebuild:  # definitions PostgreSQL printed, of names from the schema
                conn.exec_driver_sql(statement)


def analyze(engine: Engine, tables: Sequence[Table] = OBSERVATION_TABLES) -> None:
    """Refresh the planner's statistics of ``tables`` after a bulk load (autovacuum would, later)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        quote = conn.dialect.identifier_preparer
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE " + ", ".join(quote.format_table(t) for t in tables))
        else:  # SQLite's ANALYZE takes one table at a time
            for table in tables:
                conn.exec_driver_sql(f"ANALYZE {quote.format_table(table)}")
