"""The operator's command line: migrations, tenants and seeding work as the README says."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from sharing_api import serving
from sharing_api.cli import main
from sharing_api.store.engine import make_engine
from sharing_api.store.schema import observations


@pytest.fixture
def env(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/cli.sqlite3"
    monkeypatch.setenv("DHO_DATABASE_URL", url)
    monkeypatch.delenv("DHO_REDIS_URL", raising=False)
    return url


def test_upgrade_add_tenant_and_seed(env: str) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    added = runner.invoke(main, ["tenants", "add", "921234562", "--name", "Testkommune"])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(main, ["tenants", "list"])
    assert "921234562" in listed.output
    assert "Testkommune" in listed.output
    seeded = runner.invoke(main, ["seed", "--tenant", "921234562", "--patients", "2", "--days", "3"])
    assert seeded.exit_code == 0, seeded.output
    engine = make_engine(env)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(observations)).scalar()
    assert stored is not None
    assert stored >= 2 * 3 * 6  # two patients, three days, at least six measurements a day each
    again = runner.invoke(main, ["seed", "--tenant", "921234562", "--patients", "2", "--days", "3"])
    assert again.exit_code == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(observations)).scalar() == stored  # idempotent


def test_an_invalid_org_number_is_refused(env: str) -> None:
    runner = CliRunner()
    runner.invoke(main, ["db", "upgrade"])
    result = runner.invoke(main, ["tenants", "add", "921234560", "--name", "X"])
    assert result.exit_code != 0
    assert "organisasjonsnummer" in result.output


def test_seed_needs_a_registered_tenant(env: str) -> None:
    runner = CliRunner()
    runner.invoke(main, ["db", "upgrade"])
    result = runner.invoke(main, ["seed", "--tenant", "921234562", "--patients", "1", "--days", "1"])
    assert result.exit_code != 0
    assert "not registered" in result.output


def test_serve_beyond_loopback_needs_an_https_public_url(env: str) -> None:
    runner = CliRunner()
    runner.invoke(main, ["db", "upgrade"])
    result = runner.invoke(main, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code != 0
    assert "https://" in str(result.exception) + result.output


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """What ``serve`` was asked to run (host, port, shape, server), instead of running it."""
    calls: list[dict[str, object]] = []

    def record(
        settings: object,
        host: str,
        port: int,
        workers: int,
        threads: int = 4,
        reuse_port: bool = False,
        server: str = "(serve's default)",
    ) -> None:
        calls.append({"host": host, "port": port, "workers": workers, "threads": threads, "server": server})

    monkeypatch.setattr(serving, "serve", record)
    for name in ("DHO_BIND", "DHO_WORKERS", "DHO_THREADS", "DHO_SERVER"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_serve_runs_granian_unless_told_otherwise(env: str, served: list[dict[str, object]]) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["serve"]).exit_code == 0
    assert runner.invoke(main, ["serve"], env={"DHO_SERVER": "gunicorn"}).exit_code == 0
    assert runner.invoke(main, ["serve", "--server", "gunicorn"]).exit_code == 0
    assert [call["server"] for call in served] == ["granian", "gunicorn", "gunicorn"]
    assert served[0] == {"host": "127.0.0.1", "port": 8080, "workers": 1, "threads": 4, "server": "granian"}


def test_serve_takes_address_and_shape_from_the_environment_as_deploy_sets_them(
    env: str, served: list[dict[str, object]]
) -> None:
    runner = CliRunner()
    deployed = {"DHO_BIND": "0.0.0.0:8080", "DHO_WORKERS": "2", "DHO_THREADS": "8"}
    assert runner.invoke(main, ["serve"], env=deployed).exit_code == 0
    assert runner.invoke(main, ["serve"], env={"DHO_BIND": "[::1]:9090"}).exit_code == 0
    assert served == [
        {"host": "0.0.0.0", "port": 8080, "workers": 2, "threads": 8, "server": "granian"},
        {"host": "::1", "port": 9090, "workers": 1, "threads": 4, "server": "granian"},
    ]


@pytest.mark.parametrize(
    ("bind", "argv", "message"),
    [
        ("0.0.0.0", [], "'0.0.0.0' is not HOST:PORT"),
        ("127.0.0.1:http", [], "'127.0.0.1:http' is not HOST:PORT"),
        ("127.0.0.1:9090", ["--port", "9091"], "--port and --bind (DHO_BIND) name the address twice"),
    ],
)
def test_serve_refuses_an_address_it_cannot_use_as_given(
    env: str, served: list[dict[str, object]], bind: str, argv: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, ["serve", *argv], env={"DHO_BIND": bind})
    assert result.exit_code == 2
    assert message in result.output
    assert served == []


def test_keys_rotate_keeps_the_old_key_published(
    env: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    from pathlib import Path

    from auth.keys import load_keyset

    path = Path(str(tmp_path)) / "keys.json"
    monkeypatch.setenv("DHO_SIGNING_KEYS_PATH", str(path))
    runner = CliRunner()
    first = runner.invoke(main, ["keys", "rotate"])
    assert first.exit_code == 0, first.output
    before = load_keyset(path)
    second = runner.invoke(main, ["keys", "rotate"])
    assert second.exit_code == 0, second.output
    after = load_keyset(path)
    assert after.kid != before.kid
    import time

    published = {k["kid"] for k in after.public_jwks(time.time())["keys"]}
    assert {after.kid, before.kid} <= published
    assert all("d" not in k for k in json.loads(json.dumps(after.public_jwks(time.time())))["keys"])
