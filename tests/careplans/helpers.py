"""Factories and calls for plan tests: Goals, CarePlans, and requests as a named party for one patient."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from werkzeug.test import TestResponse

from consent.model import PurposeOfUse
from sharing_api.fhir.identifiers import FNR, ORGNR
from sharing_api.fhir.vitals import LOINC, UCUM
from sharing_api.services import Services
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, OTHER_HOSPITAL, READ, ApiClient, Party
from tests.conftest import TENANT_A

BASE = f"/{TENANT_A}/fhir"
PLAN_READ = "dho-share/careplan.read"
PLAN_WRITE = "dho-share/careplan.write"
PLAN_SCOPES = frozenset({PLAN_READ, PLAN_WRITE, READ})
CATEGORY = "urn:test:plan-category"
NURSE_HPR = "7654321"
GP_HPR = "2345678"


def goal(
    patient: str, *, value: float = 180, comparator: str = "<=", code: str = "8480-6", display: str = ""
) -> dict[str, Any]:
    """ "Call if systolic > 180": the target is systolic <= 180 mm[Hg]."""
    return {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": "Ring legevakten ved systolisk trykk over 180"},
        "subject": {"identifier": {"system": FNR, "value": patient}},
        "target": [
            {
                "measure": {
                    "coding": [{"system": LOINC, "code": code} | ({"display": display} if display else {})]
                },
                "detailQuantity": {
                    "value": value,
                    "comparator": comparator,
                    "unit": "mm[Hg]",
                    "system": UCUM,
                    "code": "mm[Hg]",
                },
            }
        ],
    }


def careplan(
    patient: str,
    *,
    goals: tuple[str, ...] = (),
    status: str = "active",
    start: str = "2026-11-01",
    end: str | None = None,
) -> dict[str, Any]:
    period = {"start": start, **({"end": end} if end else {})}
    return {
        "resourceType": "CarePlan",
        "status": status,
        "intent": "plan",
        "category": [{"coding": [{"system": CATEGORY, "code": "self-treatment"}]}],
        "title": "Egenbehandlingsplan hjertesvikt",
        "subject": {"identifier": {"system": FNR, "value": patient}},
        "period": period,
        "author": {"identifier": {"system": ORGNR, "value": TENANT_A}},
        "goal": [{"reference": f"Goal/{g}"} for g in goals],
        "activity": [
            {
                "detail": {
                    "status": "scheduled",
                    "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
                    "scheduledTiming": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                }
            }
        ],
    }


def plan_parties(client: ApiClient, services: Services, *, hospital_writes: bool = True) -> None:
    """The municipality's own nurse, a hospital doctor and a GP, each with the plan scopes; the
    hospital's and the GP's agreements share ``plan`` (and let them write it, unless told otherwise)."""
    client.add_party(Party("kommune-epj", TENANT_A, PLAN_SCOPES, hpr=NURSE_HPR))
    client.add_party(Party("hospital-plan", HOSPITAL, PLAN_SCOPES, point_of_care=HOSPITAL_UNIT))
    client.add_party(Party("gp-plan", OTHER_HOSPITAL, PLAN_SCOPES, point_of_care=OTHER_HOSPITAL, hpr=GP_HPR))
    now = datetime.now(UTC)
    for agreement in services.policy.agreements(controller=TENANT_A):
        services.policy.end_agreement(agreement.id, now)
    for consumer in (HOSPITAL, OTHER_HOSPITAL):
        writes = hospital_writes or consumer != HOSPITAL
        services.policy.add_agreement(
            controller=TENANT_A,
            consumer=consumer,
            categories=frozenset({"vital-signs", "survey", "plan"}),
            write_categories=frozenset({"plan"}) if writes else frozenset(),
            purposes=frozenset(PurposeOfUse),
            valid_from=now,
        )


def call(
    client: ApiClient,
    method: str,
    path: str,
    *,
    party: str,
    patient: str,
    purpose: str = "TREAT",
    **kwargs: Any,
) -> TestResponse:
    """``method path`` as ``party``'s health worker, with an attestation for ``patient``."""
    token = client.token(client.parties[party], (FNR, patient), purpose)
    headers = {**client.auth_headers(method, path, token), **(kwargs.pop("headers", None) or {})}
    return client.flask.open(path, method=method, headers=headers, **kwargs)


def create(client: ApiClient, resource: dict[str, Any], *, party: str = "kommune-epj") -> TestResponse:
    patient = resource["subject"]["identifier"]["value"]
    return call(
        client, "POST", f"{BASE}/{resource['resourceType']}", party=party, patient=patient, json=resource
    )


def put(
    client: ApiClient, resource: dict[str, Any], version: str | None, *, party: str = "kommune-epj"
) -> TestResponse:
    patient = resource["subject"]["identifier"]["value"]
    headers = {"If-Match": f'W/"{version}"'} if version is not None else {}
    path = f"{BASE}/{resource['resourceType']}/{resource['id']}"
    return call(client, "PUT", path, party=party, patient=patient, json=resource, headers=headers)


def stored_plan(client: ApiClient, patient: str, **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Goal and an active CarePlan referring to it, both created by the municipality."""
    made_goal = create(client, goal(patient))
    assert made_goal.status_code == 201, made_goal.get_json()
    made = create(client, careplan(patient, goals=(made_goal.get_json()["id"],), **extra))
    assert made.status_code == 201, made.get_json()
    return made_goal.get_json(), made.get_json()


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    out.pop("meta", None)
    return out
