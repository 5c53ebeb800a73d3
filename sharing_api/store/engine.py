"""Engines for the two supported databases, and migrations (Alembic) run from code."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, QueuePool, create_engine, event, inspect
from sqlalchemy.exc import DisconnectionError

MIGRATIONS = Path(__file__).with_name("migrations")
IDLE_PING_SECONDS = 10.0
"""A pooled PostgreSQL connection idle longer than this is checked (``SELECT 1``) before use."""
RECYCLE_SECONDS = 1800
"""PostgreSQL connections are replaced after this age (server-side timeouts, memory held by backends)."""
CUSTOM_PLANS = "force_custom_plan"
GENERIC_PLANS = "force_generic_plan"
"""PostgreSQL's ``plan_cache_mode`` for prepared statements: planned with each execution's values, or
once for all values (see ``_postgresql_engine`` and ``autocommit_engine``)."""


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs, and accept libpq's multi-host form.

    ``postgresql://user@h1:5432,h2:5432/db?target_session_attrs=read-write`` (libpq "Connection URIs")
    names a primary and its standbys; libpq tries them in order and keeps the first that satisfies
    ``target_session_attrs``, so after a promotion new connections find the new primary. SQLAlchemy
    cannot parse several ``host:port`` pairs in the authority, so they move to repeated ``host=``
    query parameters, which its psycopg dialect passes on to libpq unchanged.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+psycopg://"):
        rest = url.split("://", 1)[1]
        authority, _, tail = rest.partition("/")
        userinfo, at, hosts = authority.rpartition("@")
        if "," in hosts:
            path, _, query = tail.partition("?")
            params = "&".join(f"host={h}" for h in hosts.split(","))
            url = f"postgresql+psycopg://{userinfo}{at}/{path}?{params}" + (f"&{query}" if query else "")
    return url


def _ensure_sqlite_dir(url: str) -> None:
    """Make a SQLite file's directory, and the file itself with mode 0600 when it does not exist yet
    (it holds health data; SQLite gives its -wal and -shm files the database file's mode)."""
    if url.startswith("sqlite") and ":memory:" not in url and "///" in url:
        path = Path(url.split("///", 1)[1].split("?", 1)[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.name.startswith("file:"):
            with contextlib.suppress(FileExistsError):  # an existing file keeps its mode
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


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
    return _postgresql_engine(url, pool_size)


def _postgresql_engine(
    url: str | URL, pool_size: int, plan_cache_mode: str = CUSTOM_PLANS, **options: Any
) -> Engine:
    # A generic plan cached for a prepared statement can turn a primary-key lookup into a scan of the
    # tenant (BENCHMARKS.md, ingest hotspot 1): the engine's own connections plan every execution with
    # its values. connect_timeout bounds each host libpq tries (multi-host URL), so a dead primary costs
    # seconds, not the OS's TCP timeout; after a promotion new connections find the new primary
    # (target_session_attrs).
    connect_args: dict[str, Any] = {"options": f"-c plan_cache_mode={plan_cache_mode}"}
    text = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    if "connect_timeout=" not in text:
        connect_args["connect_timeout"] = 3
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=RECYCLE_SECONDS,
        connect_args=connect_args,
        **options,
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


_AUTOCOMMIT: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
_AUTOCOMMIT_LOCK = threading.Lock()


def autocommit_engine(engine: Engine) -> Engine:
    """A PostgreSQL ``engine``'s sibling whose pooled connections are opened in autocommit once, for
    statements that are their own transaction (``store.one_statement``): no switch of a connection to
    autocommit and back per statement. Same URL, pool size, idle ping and recycling as ``make_engine``;
    made on first use, and disposed with ``engine``.

    Its connections open with ``plan_cache_mode=force_generic_plan``: the statements run there most
    (the sharing decision, a search page, a read by id, the audit INSERT) are planned once per
    connection instead of per execution, which was most of PostgreSQL's CPU for a search (1.03 ->
    0.33 ms per search page at 100,000 observations). Only statements marked
    ``CompiledStatement.generic_plan`` (their generic plan proved by a test) run so; ``one_statement``
    runs any other on one of ``engine``'s own connections (opened with custom plans), lent in
    autocommit for that statement, so that no connection is switched from one mode to the other.

    A connection returned to this pool is not reset: in autocommit there is no transaction to roll
    back (SQLAlchemy's reset cost ~13k instructions per statement for a rollback psycopg skips);
    ``one_statement`` discards a connection it leaves other than idle."""
    found = _AUTOCOMMIT.get(engine)
    if found is not None:
        return found
    with _AUTOCOMMIT_LOCK:
        found = _AUTOCOMMIT.get(engine)
        if found is None:
            size = engine.pool.size() if isinstance(engine.pool, QueuePool) else 5
            found = _AUTOCOMMIT[engine] = _postgresql_engine(
                engine.url, size, GENERIC_PLANS, isolation_level="AUTOCOMMIT", pool_reset_on_return=None
            )

            @event.listens_for(engine, "engine_disposed")
            def _disposed(_engine: Any) -> None:
                sibling = _AUTOCOMMIT.pop(engine, None)
                if sibling is not None:
                    sibling.dispose()

    return found


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Apply every migration (``dho-share db upgrade``), create the audit log's monthly partitions
    ``audit_partitions.AHEAD`` months ahead (PostgreSQL), then refresh the planner statistics."""
    from sharing_api.store import audit_partitions

    _ensure_sqlite_dir(normalise_url(url))
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(url, pool_size=1)
    try:
        audit_partitions.ensure(engine, now=datetime.now(UTC))
        analyze(engine)
    finally:
        engine.dispose()


def analyze(engine: Engine) -> None:
    """Refresh the query planner's statistics (``ANALYZE``): after ``db upgrade`` and bulk loads.

    Without statistics PostgreSQL guessed the read-permission ``EXISTS`` as a nested loop: 11 s and 49M
    rows discarded, 0.38 ms after ``ANALYZE`` (issue 13). Autovacuum analyses on its own only once a
    table changed by ``autovacuum_analyze_threshold + autovacuum_analyze_scale_factor * rows``, so a
    fresh or freshly loaded database would run unplanned until then. On SQLite this fills
    ``sqlite_stat1``, which its planner reads the same way.
    """
    with engine.begin() as conn:  # ANALYZE (unlike VACUUM) may run inside a transaction on both
        conn.exec_driver_sql("ANALYZE")


def is_current(engine: Engine) -> bool:
    """Whether the database is at the newest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory(str(MIGRATIONS)).get_heads())
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        return set(MigrationContext.configure(conn).get_current_heads()) == heads
