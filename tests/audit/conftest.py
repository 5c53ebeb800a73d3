"""Fixtures of the audit-log tests: an empty migrated database of each backend, a signer, an AuditLog.

``database_url`` (tests/conftest.py) is parametrised over SQLite and PostgreSQL, so every test that uses
``engine`` or ``log`` runs on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.log import AuditLog
from sharing_api.store.schema import audit_checkpoints, audit_entries, audit_heads, audit_seq_claims
from tests import construction_cache
from tests.audit.factories import tampering
from tests.conftest import _postgres_database


@pytest.fixture
def engine(database_url: str) -> Engine:
    """The session database's shared engine (tests/construction_cache.py), audit tables emptied."""
    eng = construction_cache.engine_for(database_url)
    with tampering(eng) as conn:  # past the append-only triggers
        for table in (audit_entries, audit_seq_claims, audit_heads, audit_checkpoints):
            conn.execute(table.delete())
    return eng


@pytest.fixture(scope="session")
def signer() -> AuditSigner:
    return AuditSigner.generate()


@pytest.fixture
def key_file(tmp_path: Path, signer: AuditSigner) -> Path:
    path = tmp_path / "audit-key.pem"
    signer.save(path)
    return path


@pytest.fixture
def log(engine: Engine, signer: AuditSigner) -> AuditLog:
    return AuditLog(engine, signer=signer, checkpoint_every=10, checkpoint_interval=3600)


@pytest.fixture
def fresh_url(tmp_path: Path, database_url: str) -> Iterator[str]:
    """A database of its own, of the backend of ``database_url`` (this test migrates up and down)."""
    if not database_url.startswith("postgres"):
        yield f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
        return
    gen = _postgres_database()
    yield next(gen)
    gen.close()
