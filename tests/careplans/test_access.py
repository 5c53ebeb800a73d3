"""Who may read and change a plan (issue 11): the controller's own clients, and another organisation
only under an agreement that shares ``plan`` (and grants writing it); blocks and reservations apply as
to measurements; the attestation names the patient; every read, write and refusal is audited."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from consent.fhir_consent import directive_to_fhir
from consent.model import Block, PatientDirective, PatientId, PurposeOfUse, Reservation
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from tests.api_client import HOSPITAL, HPR, READ, ApiClient, Party
from tests.careplans.helpers import BASE, PLAN_READ, call, careplan, plan_parties, put, stored_plan
from tests.careplans.helpers import create as create_plan
from tests.conftest import TENANT_A
from tests.factories import fnr


@pytest.fixture(autouse=True)
def _parties(client: ApiClient, services: Services) -> None:
    plan_parties(client, services)


def _directive(services: Services, directive: PatientDirective) -> None:
    resource = directive_to_fhir(directive)
    resource.pop("id", None)
    services.policy.create_directive(TENANT_A, resource)


def _actions(services: Services, patient: str) -> list[tuple[str, str]]:
    services.audit_log.drain()
    return [(e.action, e.outcome) for e in services.audit_log.search(TENANT_A, patient=patient, count=100)]


def _current(client: ApiClient, plan: dict[str, Any], patient: str) -> dict[str, Any]:
    read = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}", party="kommune-epj", patient=patient)
    body: dict[str, Any] = read.get_json()
    return body


def test_a_blocked_health_worker_can_neither_read_nor_change_the_plan(
    client: ApiClient, services: Services
) -> None:
    patient = fnr()
    _, plan = stored_plan(client, patient)
    _directive(services, Block("b", PatientId(FNR, patient), HPR))  # the hospital doctor's HPR
    path = f"{BASE}/CarePlan/{plan['id']}"
    read = call(client, "GET", path, party="hospital-plan", patient=patient)
    missing = call(client, "GET", f"{BASE}/CarePlan/no-such-plan", party="hospital-plan", patient=patient)
    assert read.status_code == missing.status_code == 404
    assert read.get_json()["issue"][0]["code"] == missing.get_json()["issue"][0]["code"] == "not-found"
    changed = put(client, {**plan, "title": "blocked doctor's change"}, "1", party="hospital-plan")
    assert changed.status_code == 404
    history = call(client, "GET", f"{path}/_history", party="hospital-plan", patient=patient)
    assert history.status_code == 404
    form = {"patient.identifier": f"{FNR}|{patient}"}
    found = call(
        client, "POST", f"{BASE}/CarePlan/_search", party="hospital-plan", patient=patient, data=form
    )
    assert found.status_code == 200
    assert found.get_json()["total"] == 0
    assert _current(client, plan, patient) == plan  # unchanged, and still there for others
    refused = [a for a, outcome in _actions(services, patient) if outcome == Outcome.MINOR_FAILURE.value]
    assert refused.count(AuditAction.CAREPLAN_READ.value) == 3  # the read, the unknown id, the history
    assert AuditAction.CAREPLAN_UPDATE.value in refused
    assert AuditAction.CAREPLAN_SEARCH.value in refused


def test_a_reservation_stops_other_organisations_not_the_controller(
    client: ApiClient, services: Services
) -> None:
    patient = fnr()
    _, plan = stored_plan(client, patient)
    _directive(services, Reservation("r", PatientId(FNR, patient)))
    path = f"{BASE}/CarePlan/{plan['id']}"
    assert call(client, "GET", path, party="gp-plan", patient=patient).status_code == 404
    assert put(client, {**plan, "title": "gp"}, "1", party="gp-plan").status_code == 404
    assert call(client, "GET", path, party="kommune-epj", patient=patient).status_code == 200
    assert put(client, {**plan, "title": "own nurse"}, "1").status_code == 200


def test_writing_needs_an_agreement_that_grants_writing_the_plan(
    client: ApiClient, services: Services
) -> None:
    plan_parties(client, services, hospital_writes=False)
    patient = fnr()
    _, plan = stored_plan(client, patient)
    path = f"{BASE}/CarePlan/{plan['id']}"
    assert call(client, "GET", path, party="hospital-plan", patient=patient).status_code == 200
    refused = put(client, {**plan, "title": "hospital"}, "1", party="hospital-plan")
    assert refused.status_code == 403
    assert "does not cover the data" in refused.get_json()["issue"][0]["diagnostics"]
    assert put(client, {**plan, "title": "gp"}, "1", party="gp-plan").status_code == 200
    assert _current(client, plan, patient)["title"] == "gp"


def test_an_agreement_without_plan_shares_no_plan(client: ApiClient, services: Services) -> None:
    patient = fnr()
    _, plan = stored_plan(client, patient)
    now = datetime.now(UTC)
    for agreement in services.policy.agreements(controller=TENANT_A, consumer=HOSPITAL):
        services.policy.end_agreement(agreement.id, now)
    services.policy.add_agreement(
        controller=TENANT_A,
        consumer=HOSPITAL,
        categories=frozenset({"vital-signs"}),
        purposes=frozenset(PurposeOfUse),
        valid_from=now,
    )
    read = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}", party="hospital-plan", patient=patient)
    assert read.status_code == 403
    assert "does not cover the data" in read.get_json()["issue"][0]["diagnostics"]


def test_the_attestation_must_name_the_plans_patient(client: ApiClient) -> None:
    patient, other = fnr(), fnr()
    _, plan = stored_plan(client, patient)
    read = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}", party="hospital-plan", patient=other)
    assert read.status_code == 404
    body = {**plan, "title": "x"}
    path = f"{BASE}/CarePlan/{plan['id']}"
    wrong = call(
        client, "PUT", path, party="hospital-plan", patient=other, json=body, headers={"If-Match": 'W/"1"'}
    )
    assert wrong.status_code == 404
    created = call(
        client,
        "POST",
        f"{BASE}/CarePlan",
        party="kommune-epj",
        patient=other,
        json={k: v for k, v in plan.items() if k not in ("id", "meta")},
    )
    assert created.status_code == 403
    assert _current(client, plan, patient) == plan


def test_the_plan_scopes_are_required(client: ApiClient) -> None:
    patient = fnr()
    _, plan = stored_plan(client, patient)
    client.add_party(Party("reader-only", HOSPITAL, frozenset({READ}), point_of_care=HOSPITAL))
    read = call(client, "GET", f"{BASE}/CarePlan/{plan['id']}", party="reader-only", patient=patient)
    assert read.status_code == 403
    client.add_party(Party("plan-reader", HOSPITAL, frozenset({PLAN_READ}), point_of_care=HOSPITAL))
    assert put(client, {**plan, "title": "x"}, "1", party="plan-reader").status_code == 403


def test_reads_and_writes_are_audited(client: ApiClient, services: Services) -> None:
    patient = fnr()
    goal, plan = stored_plan(client, patient)
    call(client, "GET", f"{BASE}/CarePlan/{plan['id']}", party="hospital-plan", patient=patient)
    put(client, {**plan, "title": "changed"}, "1", party="hospital-plan")
    call(client, "GET", f"{BASE}/Goal/{goal['id']}/_history", party="gp-plan", patient=patient)
    form = {"patient.identifier": f"{FNR}|{patient}"}
    call(client, "POST", f"{BASE}/CarePlan/_search", party="gp-plan", patient=patient, data=form)
    ok = Outcome.SUCCESS.value
    assert _actions(services, patient) == [
        (AuditAction.GOAL_CREATE.value, ok),
        (AuditAction.CAREPLAN_CREATE.value, ok),
        (AuditAction.CAREPLAN_READ.value, ok),
        (AuditAction.CAREPLAN_UPDATE.value, ok),
        (AuditAction.GOAL_HISTORY.value, ok),
        (AuditAction.CAREPLAN_SEARCH.value, ok),
    ]
    services.audit_log.drain()
    (update,) = services.audit_log.search(TENANT_A, patient=patient, action=AuditAction.CAREPLAN_UPDATE)
    assert update.organisation == HOSPITAL
    assert update.agent_hpr == HPR


def test_a_blocked_create_looks_like_an_unknown_patient_is_audited_once_and_stores_nothing(
    client: ApiClient, services: Services
) -> None:
    patient = fnr()
    _directive(services, Block("b", PatientId(FNR, patient), HPR))
    refused = create_plan(client, careplan(patient), party="hospital-plan")
    assert refused.status_code == 404
    assert _actions(services, patient) == [(AuditAction.CAREPLAN_CREATE.value, Outcome.MINOR_FAILURE.value)]
    assert services.plans.active_plans(TENANT_A, (FNR, patient)) == []
