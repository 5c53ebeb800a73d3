"""The rows of one statement inside a connection's open transaction, in PostgreSQL's binary format.

Through SQLAlchemy, psycopg asks PostgreSQL for text results: a ``bytea`` column arrives as hex, twice
its size, which the server encodes (``byteaout``) and libpq decodes again. The audit sequencer reads
each pending event (~5 KB for a search's) to hash it: encoding them was 8.8 % of our backend's CPU
while sequencing (``perf`` on the backend, batches of 200: ``hex_encode`` 5.2 %, ``byteaout`` 3.5 %).
In binary the bytes come as they are stored. Every column type read this way has a binary loader that
gives the same Python value as the text one (``bigint``, ``bytea``).

SQLite has no such formats: the statement runs through the ``Connection`` as usual.
"""

from __future__ import annotations

from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import Connection

from sharing_api.store.compiled import CompiledStatement
from sharing_api.store.one_statement import driver_error

__all__ = ["rows"]


def rows(conn: Connection, statement: CompiledStatement, values: dict[str, Any]) -> list[Any]:
    """The rows of ``statement`` with ``values`` on ``conn`` (in its open transaction), with attribute
    access by column name. Driver errors are raised as SQLAlchemy's ``DBAPIError`` subclasses without
    the parameters, as ``Connection.execute`` raises them; a connection that died is invalidated."""
    if conn.dialect.name != "postgresql":
        return list(statement.execute(conn, values).all())
    driver: Any = conn.connection.driver_connection
    dbapi = conn.dialect.loaded_dbapi
    try:
        with driver.cursor(row_factory=namedtuple_row) as cursor:
            cursor.execute(statement.sql, statement.arguments(values), binary=True)
            found: list[Any] = cursor.fetchall()
            return found
    except dbapi.Error as exc:
        dead = bool(driver.closed or driver.broken)
        if dead:
            conn.invalidate(exc)
        raise driver_error(conn.dialect, statement.sql, exc, dead=dead) from exc
