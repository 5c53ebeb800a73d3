"""Failed auditor logins are counted per account and per source address (Redis, like auth/ratelimit.py);
past the limit the login is locked for the rest of the window (429, Retry-After), the right password
included, and every attempt on a known account is audited in its tenant's log. On SQLite and
PostgreSQL, against the tests' Redis; the counters' own contract also without Redis.

Each test uses its own account and source address (random), so tests sharing one test session's
counters (scoped to its database) never lock each other out. Time moves by replacing the guard's
clock; nothing sleeps."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from sharing_api import redis_connection
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.console.accounts import AuditorAccounts
from sharing_api.console.lockout import LoginGuard
from sharing_api.services import Services
from sharing_api.store.schema import audit_entries
from tests.conftest import REDIS_URL, TENANT_A
from tests.console.conftest import PASSWORD


@pytest.fixture
def account(auditors: AuditorAccounts) -> str:
    name = f"lock-{uuid.uuid4().hex[:10]}"
    auditors.add(name, TENANT_A, "Låst Revisor", PASSWORD)
    return name


@pytest.fixture
def address() -> str:
    return f"198.51.100.{uuid.uuid4().int % 250 + 1}-{uuid.uuid4().hex[:6]}"


def _post(client: FlaskClient, username: str, password: str, address: str) -> tuple[int, dict[str, str]]:
    response = client.post(
        "/console/login",
        data={"username": username, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )
    return response.status_code, dict(response.headers)


def _logins(services: Services, username: str) -> list[tuple[str, str]]:
    """(outcome, description) of the ``console.login`` events of ``username``, oldest first."""
    services.audit_log.drain()
    with services.engine.connect() as conn:
        ids = conn.execute(
            select(audit_entries.c.seq)
            .where(
                audit_entries.c.tenant == TENANT_A,
                audit_entries.c.action == AuditAction.CONSOLE_LOGIN.value,
                audit_entries.c.client_id == f"console:{username}",
            )
            .order_by(audit_entries.c.seq)
        ).all()
    found = []
    for (seq,) in ids:
        entry = services.audit_log.search(TENANT_A, after_seq=seq - 1, count=1)[0]
        found.append((entry.outcome, entry.resource().get("outcomeDesc", "")))
    return found


def _guard(app: Flask) -> LoginGuard:
    guard: LoginGuard = app.extensions["dho_console_login_guard"]
    return guard


def test_an_account_is_locked_after_too_many_wrong_passwords_then_free_after_the_window(
    app: Flask, console: FlaskClient, services: Services, account: str, address: str
) -> None:
    limit = services.settings.console_login_failures
    for _ in range(limit - 1):
        assert _post(console, account, "wrong password!", address)[0] == 401
    status, headers = _post(console, account, "wrong password!", address)
    assert status == 429
    retry = int(headers["Retry-After"])
    assert 1 <= retry <= services.settings.console_login_window
    # locked: the right password gets no session either, from this address or another
    status, headers = _post(console, account, PASSWORD, address)
    assert status == 429
    assert "dho_console" not in headers.get("Set-Cookie", "")
    assert _post(console, account, PASSWORD, "203.0.113.250")[0] == 429
    assert console.get("/console/").status_code == 302
    logins = _logins(services, account)
    assert [o for o, _ in logins] == [Outcome.MINOR_FAILURE.value] * (limit - 1) + [
        Outcome.SERIOUS_FAILURE.value,
        Outcome.MINOR_FAILURE.value,
        Outcome.MINOR_FAILURE.value,
    ]
    assert "account locked" in logins[limit - 1][1]
    assert logins[-1][1] == "console login refused: account locked"
    # after the window: the right password logs in, and that is audited too
    guard = _guard(app)
    now = guard.clock()
    guard.clock = lambda: now + services.settings.console_login_window + 1
    assert _post(console, account, PASSWORD, address)[0] == 302
    assert console.get("/console/").status_code == 200
    assert _logins(services, account)[-1] == (Outcome.SUCCESS.value, "console login")


def test_a_successful_login_forgives_the_accounts_earlier_failures(
    console: FlaskClient, services: Services, account: str, address: str
) -> None:
    limit = services.settings.console_login_failures
    for _ in range(limit - 1):
        assert _post(console, account, "wrong password!", address)[0] == 401
    assert _post(console, account, PASSWORD, address)[0] == 302
    for _ in range(limit - 1):
        assert _post(console, account, "wrong password!", address)[0] == 401
    assert _post(console, account, PASSWORD, address)[0] == 302


def test_a_source_address_is_locked_after_too_many_failures_on_any_usernames(
    console: FlaskClient, services: Services, account: str, address: str
) -> None:
    limit = services.settings.console_login_address_failures
    statuses = [
        _post(console, f"nobody-{uuid.uuid4().hex[:8]}", "wrong password!", address)[0] for _ in range(limit)
    ]
    assert statuses == [401] * (limit - 1) + [429]
    # the address is locked for every account, the right password included; other addresses are not
    assert _post(console, account, PASSWORD, address)[0] == 429
    assert _logins(services, account) == [
        (Outcome.MINOR_FAILURE.value, "console login refused: address locked")
    ]
    assert _post(console, account, PASSWORD, "203.0.113.251")[0] == 302


def test_without_its_counters_the_login_fails_closed(
    app: Flask, console: FlaskClient, services: Services, account: str, address: str
) -> None:
    guard = _guard(app)
    # The app's own client settings (timeouts, short retries): nothing listens on port 1.
    guard.client = redis_connection.connect("redis://127.0.0.1:1/0")
    status, headers = _post(console, account, PASSWORD, address)
    assert status == 503
    assert "dho_console" not in headers.get("Set-Cookie", "")
    assert _logins(services, account) == []


@pytest.fixture(params=["redis", "in-process"])
def guard(request: pytest.FixtureRequest) -> Iterator[LoginGuard]:
    client = redis.Redis.from_url(REDIS_URL) if request.param == "redis" else None
    yield LoginGuard(
        client,
        scope=f"test-{uuid.uuid4()}",
        per_account=3,
        per_address=5,
        window_seconds=60,
        clock=lambda: 1000.0,
    )
    if client is not None:
        client.close()


def test_the_counters_contract(guard: LoginGuard) -> None:
    """The same answers with and without Redis: a lock begins on the limit-th failure, lasts the rest
    of the window (Retry-After to the window's end), and a new window starts from zero."""
    assert guard.locked("a", "x") is None
    assert [guard.failed("a", "x") for _ in range(2)] == [None, None]
    lock = guard.failed("A ", "x")  # usernames compare as the login form's user would type them
    assert lock is not None
    assert (lock.kind, lock.retry_after) == ("account", 20)  # the window ends at 1020
    assert guard.locked("a", "y") == lock
    assert guard.locked("b", "x") is None
    guard.failed("b", "x")
    address_lock = guard.failed("c", "x")
    assert address_lock is not None
    assert address_lock.kind == "address"
    assert guard.locked("d", "x") == address_lock
    assert guard.locked("d", "y") is None
    guard.succeeded("a", "y")
    assert guard.locked("a", "y") is None
    guard.clock = lambda: 1020.0
    assert guard.locked("d", "x") is None
