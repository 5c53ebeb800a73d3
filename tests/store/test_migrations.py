"""The migrations create exactly the tables ``schema.py`` describes, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sharing_api.store.audit_partitions import not_a_partition
from sharing_api.store.engine import is_current, make_engine
from sharing_api.store.schema import metadata


def test_migrated_database_matches_the_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert is_current(engine)
        with engine.connect() as conn:
            # the audit log's monthly partitions (PostgreSQL) are made at run time, each like its parent
            context = MigrationContext.configure(conn, opts={"include_name": not_a_partition})
            diff = compare_metadata(context, metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_an_unmigrated_database_is_refused(tmp_path: object) -> None:
    import pytest

    from sharing_api.app import create_app
    from sharing_api.settings import Settings

    with pytest.raises(RuntimeError, match="db upgrade"):
        create_app(Settings(database_url=f"sqlite:///{tmp_path}/empty.sqlite3"))
