"""Fixtures of the console tests: the API app (both backends, tests/conftest.py) with one auditor per
tenant, a logged-in test client, and helpers that put synthetic audit events into a tenant's log."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
from argon2 import PasswordHasher, profiles
from flask import Flask
from flask.testing import FlaskClient

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import AuditFacts, Coded, DecisionRef, SharingDecision, build_audit_events
from sharing_api.console import accounts as accounts_module
from sharing_api.console.accounts import AuditorAccounts
from sharing_api.services import Services
from tests.conftest import TENANT_A, TENANT_B

PASSWORD = "correct horse battery staple"
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
AUDITOR_A = "revisor-a"
AUDITOR_B = "revisor-b"


# The product's hasher and unknown-user hash as imported (test_rules.py pins their strength); the
# fixture below swaps them.
PRODUCT_HASHER: PasswordHasher = accounts_module._HASHER
PRODUCT_DUMMY: str = accounts_module._dummy()

# RFC 9106's argon2id with the least time and memory: one hash costs ~0.03 ms instead of ~230 ms of CPU
# (64 MiB, 3 passes, 4 lanes). Salt and hash lengths stay the product's, so a wrong password can only
# match by a 256-bit accident.
TEST_HASHING = dataclasses.replace(profiles.RFC_9106_LOW_MEMORY, time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(autouse=True)
def _cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Console tests hash and verify auditor passwords with ``TEST_HASHING``: the same argon2id code
    path (``AuditorAccounts`` hashes with the module's hasher; verification reads the parameters from
    the stored hash, so the unknown-user dummy hash is made with them too). Only these tests, in this
    process: the product has no setting for it."""
    hasher = PasswordHasher.from_parameters(TEST_HASHING)
    monkeypatch.setattr(accounts_module, "_HASHER", hasher)
    monkeypatch.setattr(accounts_module, "_DUMMY", hasher.hash("not a password of anyone"))


@pytest.fixture
def auditors(services: Services) -> AuditorAccounts:
    accounts = AuditorAccounts(services.engine)
    accounts.add(AUDITOR_A, TENANT_A, "Rita Revisor", PASSWORD)
    accounts.add(AUDITOR_B, TENANT_B, "Bjørn Revisor", PASSWORD)
    return accounts


def login(client: FlaskClient, username: str = AUDITOR_A) -> str:
    """Log in; return the session's CSRF token (read from a page, as a browser would)."""
    response = client.post("/console/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.data
    return csrf_of(client.get("/console/").data.decode())


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
def console(app: Flask, auditors: AuditorAccounts) -> FlaskClient:
    return app.test_client()


def access(
    tenant: str,
    when: datetime,
    patient: str,
    *,
    n: int = 0,
    name: str = "August September",
    org_name: str = "Oslo universitetssykehus HF",
    org: str = "993467049",
    hpr: str = "9144897",
    purpose: str = "TREAT",
    permit: bool = True,
    reasons: tuple[str, ...] = ("permit-agreement",),
    service: str = "Indremedisin",
    details: str = "Poliklinisk besøk",
) -> AuditFacts:
    """A health worker's search for ``patient`` (permitted or refused)."""
    return AuditFacts(
        action=AuditAction.OBSERVATION_SEARCH if permit else AuditAction.REQUEST_REFUSED,
        outcome=Outcome.SUCCESS if permit else Outcome.MINOR_FAILURE,
        recorded=when,
        tenant=tenant,
        client_id="ous-dips-epj",
        organisation=org,
        organisation_name=org_name,
        point_of_care="874716782",
        practitioner_hpr=hpr,
        practitioner_name=name,
        purpose_of_use=purpose,
        purpose_of_use_details=Coded(
            system="https://terminology.dips.com/decisiontemplate", code="X", display=details
        ),
        healthcare_service=Coded(system="urn:oid:2.16.578.1.12.4.1.1.8655", code="S03", display=service),
        decision_ref=DecisionRef(id=f"d-{n}", user_selected=False),
        attested_at=when,
        patient=(FNR, patient),
        data_categories=("vital-signs",),
        decision=SharingDecision(permit=permit, reasons=reasons),
        token_jti=f"jti-{n}",
        correlation_id=f"req-{n}",
        description="search with 1 result" if permit else "403: refused",
    )


def record(services: Services, facts: Iterable[AuditFacts]) -> None:
    """Append the events of ``facts`` and sequence them."""
    with services.engine.connect().execution_options(write=True) as conn, conn.begin():
        for f in facts:
            for event in build_audit_events(f):
                services.audit_log.append(conn, f.tenant, event)
    services.audit_log.drain()


def utc(*parts: Any) -> datetime:
    return datetime(*parts, tzinfo=UTC)
