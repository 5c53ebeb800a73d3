"""Engines for the two supported databases, and migrations (Alembic) run from code."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import DisconnectionError

MIGRATIONS = Path(__file__).with_name("migrations")
IDLE_PING_SECONDS = 10.0
"""A pooled PostgreSQL connection idle longer than this is checked (``SELECT 1``) before use."""
RECYCLE_SECONDS = 1800
"""PostgreSQL connections are replaced after this age (server-side timeouts, memory held by backends)."""


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite") and ":memory:" not in url and "///" in url:
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine configured for concurrent use by several threads and processes.

    SQLite: WAL journal, a busy timeout, and ``BEGIN IMMEDIATE`` for write transactions (execution
    option ``write=True``) so that two writers queue instead of failing on lock upgrade.
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=RECYCLE_SECONDS,
        # A generic plan cached for a prepared statement can turn a primary-key lookup into a scan of
        # the tenant (BENCHMARKS.md, ingest hotspot 1): plan every execution with its values.
        connect_args={"options": "-c plan_cache_mode=force_custom_plan"},
    )

    # Instead of pool_pre_ping (a SELECT 1 on every checkout, 16-20 % of the waiting under load):
    # only a connection that sat idle longer than IDLE_PING_SECONDS is pinged; a dead one raises
    # DisconnectionError, and the pool then discards it and checks out a fresh connection (SQLAlchemy's
    # pessimistic disconnect handling, retried up to three times).
    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) <= IDLE_PING_SECONDS:
            return
        try:
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_conn.rollback()  # leave it idle, as the pool hands it out (autocommit can be set)
        except Exception as exc:  # any failure: the connection is not usable, take another
            raise DisconnectionError("a pooled connection was dead") from exc

    return engine


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Apply every migration (``dho-share db upgrade``)."""
    _ensure_sqlite_dir(normalise_url(url))
    command.upgrade(alembic_config(url), "head")


def is_current(engine: Engine) -> bool:
    """Whether the database is at the newest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory(str(MIGRATIONS)).get_heads())
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        return set(MigrationContext.configure(conn).get_current_heads()) == heads
