"""Multi-row INSERTs of many rows in one statement of fixed text.

On PostgreSQL the rows go as one array per column (``INSERT ... SELECT * FROM unnest(...)``): one
short statement that psycopg and the server parse once, however many rows, instead of SQLAlchemy's
"insertmanyvalues" (a long VALUES list rebuilt, with every row's parameters processed, per batch).
Other databases use the executemany of the cached ``INSERT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Dialect, Table, insert


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
