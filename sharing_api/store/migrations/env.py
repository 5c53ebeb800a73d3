"""Alembic environment: runs migrations against the URL given in the config (no ini file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from sharing_api.store.schema import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url must be set"
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
