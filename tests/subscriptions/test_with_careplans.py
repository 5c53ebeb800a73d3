"""Integration of subscriptions with the care plans: the real threshold check and the plan store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.subscriptions.topics import CAREPLAN_VERSION, OBSERVATION_OUTSIDE_PLAN
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, READ, ApiClient, Party
from tests.careplans.helpers import BASE, PLAN_READ, careplan, plan_parties, put, stored_plan
from tests.factories import fnr
from tests.subscriptions import receiver as loopback
from tests.subscriptions.test_subscriptions import SUBSCRIBE, plan_subscription, subscribe, subscription


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"subscription_http_loopback": True})


@pytest.fixture
def receiver(app: Flask, services: Services) -> Iterator[loopback.Receiver]:
    jwks = app.test_client().get("/.well-known/openid-configuration/jwks").get_json()
    started = loopback.start(jwks, services.settings.issuer_url)
    yield started
    loopback.stop(started)


def blood_pressure(patient: str, systolic: float, diastolic: float) -> dict[str, Any]:
    def quantity(value: float) -> dict[str, Any]:
        return {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}

    loinc = "http://loinc.org"
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": loinc, "code": "85354-9"}]},
        "subject": {"identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": patient}},
        "effectiveDateTime": "2026-11-20T08:00:00+01:00",
        "component": [
            {"code": {"coding": [{"system": loinc, "code": "8480-6"}]}, "valueQuantity": quantity(systolic)},
            {"code": {"coding": [{"system": loinc, "code": "8462-4"}]}, "valueQuantity": quantity(diastolic)},
        ],
    }


def test_plan_versions_and_breaching_readings_reach_the_follower(
    client: ApiClient, services: Services, receiver: loopback.Receiver
) -> None:
    plan_parties(client, services)
    follower = client.add_party(
        Party(
            "plan-follower", HOSPITAL, frozenset({READ, PLAN_READ, *SUBSCRIBE}), point_of_care=HOSPITAL_UNIT
        )
    )
    patient = fnr()
    _, plan = stored_plan(client, patient)
    full = subscription(patient, receiver.endpoint)
    assert subscribe(client, follower, patient, full).status_code == 201
    versions = plan_subscription(patient, receiver.endpoint)
    versions["channel"]["_payload"]["extension"][0]["valueCode"] = "full-resource"
    assert subscribe(client, follower, patient, versions).status_code == 201

    ok = client.post(f"{BASE}/Observation", json=blood_pressure(patient, 150, 90))
    high = client.post(f"{BASE}/Observation", json=blood_pressure(patient, 200, 95))
    assert ok.status_code == high.status_code == 201
    changed = {**careplan(patient, goals=tuple(g["reference"][5:] for g in plan["goal"])), "id": plan["id"]}
    changed["title"] = "Endret plan"
    assert put(client, changed, plan["meta"]["versionId"]).status_code == 200

    assert services.delivery.step(time.time()) == 2
    assert receiver.refused == []
    topics = {
        next(
            p["valueCanonical"] for p in r.body["entry"][0]["resource"]["parameter"] if p["name"] == "topic"
        ): r
        for r in receiver.received
    }
    assert topics[OBSERVATION_OUTSIDE_PLAN.url].body["entry"][1]["resource"]["id"] == high.get_json()["id"]
    assert topics[CAREPLAN_VERSION.url].body["entry"][1]["resource"]["title"] == "Endret plan"
