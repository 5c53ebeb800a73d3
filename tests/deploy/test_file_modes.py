"""Files that hold health data or private keys are created readable by their owner only (mode 0600):
the SQLite database (and its -wal/-shm files, which SQLite gives the database file's mode), the token
service's signing keys, the audit checkpoint key and the self-access secret of rule R8 (issue 9, "The
operator"; issue 10)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sharing_api.app import create_app
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store.engine import upgrade


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The common umask 022, under which files are world-readable unless the code says otherwise."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("usual_umask")
def test_database_and_key_files_are_created_0600(tmp_path: Path) -> None:
    database = tmp_path / "data" / "dho.sqlite3"
    url = f"sqlite:///{database}"
    upgrade(url)
    settings = Settings(
        database_url=url,
        signing_keys_path=tmp_path / "keys" / "signing-keys.json",
        audit_key_path=tmp_path / "keys" / "audit-signing-key.pem",
        audit_self_access_key_path=tmp_path / "keys" / "audit-self-access.key",
        audit_sequencer_interval=0,
    )
    app = create_app(settings)
    services: Services = app.extensions["dho"]
    try:
        services.tenants.add("921234562", "Kommune")  # a write: SQLite's -wal file if in WAL mode
        assert app.test_client().get("/.well-known/openid-configuration/jwks").status_code == 200
        created = [
            database,
            settings.signing_keys_path,
            settings.audit_key_path,
            settings.audit_self_access_key_path,
        ]
        created += [p for p in database.parent.iterdir() if p.name.startswith(database.name + "-")]
        for path in created:
            assert path.exists(), path
            assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"
    finally:
        services.engine.dispose()
