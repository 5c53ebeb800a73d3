"""Many rows at once: multi-row INSERTs of fixed text, and PostgreSQL ``COPY`` for bulk loads.

``insert_rows``: on PostgreSQL the rows go as one array per column (``INSERT ... SELECT * FROM
unnest(...)``): one short statement that psycopg and the server parse once, however many rows, instead
of SQLAlchemy's "insertmanyvalues" (a long VALUES list rebuilt, with every row's parameters processed,
per batch). Other databases use the executemany of the cached ``INSERT``.

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


@lru_cache(maxsize=64)
def _unnest_sql(table: Table, columns: tuple[str, ...], dialect: Dialect) -> str:
    quote = dialect.identifier_preparer
    arrays = ", ".join(f"%s::{table.c[c].type.compile(dialect=dialect)}[]" for c in columns)
    names = ", ".join(quote.quote(c) for c in columns)
    # Table, column and type names from the schema (quoted), never from input; the rows are parameters.
    return f"INSERT INTO {quote.format_table(table)} ({names}) SELECT * FROM unnest({arrays})"  # noqa: S608


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts of column values, all with the same columns) into ``table``."""
    if not rows:
        return
    columns = tuple(rows[0])
    if conn.dialect.name != "postgresql" or any(tuple(r) != columns for r in rows):
        conn.execute(insert(table), list(rows))
        return
    conn.exec_driver_sql(
        _unnest_sql(table, columns, conn.dialect), tuple([r[c] for r in rows] for c in columns)
    )


def _require_postgresql(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        raise ValueError(f"COPY is PostgreSQL's; this database is {conn.dialect.name}")


def copy_rows(conn: Connection, table: Table, rows: Iterable[dict[str, Any]]) -> int:
    """``COPY`` ``rows`` (dicts with every column of ``table``) into ``table`` inside ``conn``'s
    transaction (PostgreSQL only); returns how many rows were written."""
    _require_postgresql(conn)
    quote = conn.dialect.identifier_preparer
    columns = [c.name for c in table.columns]
    names = ", ".join(quote.quote(c) for c in columns)
    sql = f"COPY {quote.format_table(table)} ({names}) FROM STDIN"
    written = 0
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(sql) as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])
            written += 1
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
