"""Audit events are stored LZ4-compressed on PostgreSQL from migration 0008_audit_lz4 on (issue 12).

What a user of the log would notice: nothing but the speed. Events appended before the migration keep
pglz, those appended after it (in an existing month, and in a month made later) are LZ4, and the whole
log verifies, before and after a downgrade.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine

from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.events import build_audit_event
from sharing_api.audit.log import AuditLog
from sharing_api.audit.stored_check import check_stored_log
from sharing_api.audit.verify import verify
from sharing_api.store import audit_partitions
from sharing_api.store.engine import alembic_config, make_engine, upgrade
from tests.audit.factories import TENANT, facts

HITS = 12
"""A search page's observations, each named in the event: about 5 KB, over the TOAST threshold."""


def search_event(n: int, moment: datetime) -> dict[str, Any]:
    pages = tuple(f"Observation/{uuid.uuid4()}" for _ in range(HITS))
    return build_audit_event(facts(n, recorded=moment, resources=pages))


def compression(engine: Engine) -> list[str | None]:
    with engine.connect() as conn:
        found = conn.exec_driver_sql("SELECT pg_column_compression(event) FROM audit_entries ORDER BY id")
        return list(found.scalars())


def verified(log: AuditLog, signer: AuditSigner, entries: int) -> None:
    log.drain()
    log.checkpoint(TENANT)
    stored = check_stored_log(log, TENANT, signer.verifier)
    assert stored.ok, stored.detail
    assert stored.rows == entries
    report = verify(log.export(TENANT), signer.verifier)
    assert report.ok, report.detail
    assert report.entries == entries


def test_events_after_the_migration_are_lz4_and_the_whole_log_verifies(
    fresh_url: str, signer: AuditSigner
) -> None:
    if not fresh_url.startswith("postgres"):
        pytest.skip("SQLite stores the events uncompressed")
    config = alembic_config(fresh_url)
    command.upgrade(config, "0007_audit_partial")
    engine = make_engine(fresh_url)
    try:
        log = AuditLog(engine, signer=signer, checkpoint_every=100, checkpoint_interval=3600)
        now = datetime.now(UTC)
        later = now + timedelta(days=400)  # a month whose partition is made after the migration
        log.append(None, TENANT, search_event(0, now))
        with engine.connect() as conn:
            size = conn.exec_driver_sql("SELECT octet_length(event) FROM audit_entries").scalar()
        assert size is not None
        assert size > 4000  # over the TOAST threshold: PostgreSQL compresses it

        upgrade(fresh_url)
        log.append(None, TENANT, search_event(1, now))
        audit_partitions.ensure(engine, now=later)
        log.append(None, TENANT, search_event(2, later))
        assert compression(engine) == ["pglz", "lz4", "lz4"]
        verified(log, signer, 3)

        command.downgrade(config, "0007_audit_partial")
        log.append(None, TENANT, search_event(3, now))
        assert compression(engine)[-1] == "pglz"
        verified(log, signer, 4)
    finally:
        engine.dispose()
