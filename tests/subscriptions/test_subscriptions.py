"""Subscriptions end to end (issue 11): subscribe over HTTP, publish a measurement outside the plan, and
a loopback endpoint receives the notification with a token and proof it verifies; retries with
backoff, refusals by the agreement and by the patient's block, validation, audit. Both databases.

The worker is driven by its step function with a clock of the test's own (no sleeping); the plan's
threshold check is injected as ``services.notifications.outside_plan`` (the composition root wires the
care plan's in production).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from flask import Flask

from consent.fhir_consent import directive_to_fhir
from consent.model import PurposeOfUse
from sharing_api.app import create_app
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.subscriptions.delivery import NOTIFIER_CLIENT_ID, Backoff
from sharing_api.subscriptions.resource import FILTER_CRITERIA, PAYLOAD_CONTENT
from sharing_api.subscriptions.topics import CAREPLAN_VERSION, OBSERVATION_OUTSIDE_PLAN, PLAN_CATEGORY, TOPICS
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, HPR, READ, ApiClient, Party
from tests.conftest import TENANT_A
from tests.factories import FHIR_JSON, fnr, heart_rate
from tests.policy.helpers import block
from tests.subscriptions import receiver as loopback

BASE = f"/{TENANT_A}/fhir"
SUBSCRIBE = ("dho-share/subscription.read", "dho-share/subscription.write")
PLAN_READ = CAREPLAN_VERSION.read_scope
THRESHOLD = 100  # the injected "plan": a heart rate above this is outside it


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"subscription_http_loopback": True})


@pytest.fixture
def follower(client: ApiClient) -> Party:
    return client.add_party(
        Party("follower", HOSPITAL, frozenset({READ, *SUBSCRIBE}), point_of_care=HOSPITAL_UNIT)
    )


@pytest.fixture
def receiver(app: Flask, services: Services) -> Iterator[loopback.Receiver]:
    jwks = app.test_client().get("/.well-known/openid-configuration/jwks").get_json()
    started = loopback.start(jwks, services.settings.issuer_url)
    yield started
    loopback.stop(started)


@pytest.fixture(autouse=True)
def plan(services: Services) -> None:
    services.notifications.outside_plan = lambda tenant, patient, obs: (
        obs["valueQuantity"]["value"] > THRESHOLD
    )


def subscription(
    patient: str, endpoint: str, *, payload: str = "full-resource", topic: str = OBSERVATION_OUTSIDE_PLAN.url
) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "home follow-up: tell the ward when a reading breaches the plan",
        "criteria": topic,
        "_criteria": {
            "extension": [
                {"url": FILTER_CRITERIA, "valueString": f"Observation?patient:identifier={FNR}|{patient}"}
            ]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": FHIR_JSON,
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": payload}]},
        },
    }


def as_party(client: ApiClient, party: Party, patient: str, method: str, path: str, body: Any = None) -> Any:
    token = client.token(party, (FNR, patient))
    headers = client.auth_headers(method, path, token)
    data = orjson.dumps(body) if body is not None else None
    return client.flask.open(path, method=method, headers=headers, data=data, content_type=FHIR_JSON)


def subscribe(client: ApiClient, party: Party, patient: str, body: dict[str, Any]) -> Any:
    return as_party(client, party, patient, "POST", f"{BASE}/Subscription", body)


def publish(client: ApiClient, patient: str, value: float) -> str:
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient, value=value))
    assert created.status_code == 201, created.get_json()
    return str(created.get_json()["id"])


def notify_events(services: Services, patient: str) -> list[tuple[str, str]]:
    entries = services.audit_log.search(TENANT_A, patient=patient, action=AuditAction.SUBSCRIPTION_NOTIFY)
    return [(e.action, e.outcome) for e in entries]


def test_out_of_range_measurement_reaches_the_loopback_endpoint_with_verified_token_and_proof(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    patient, other = fnr(), fnr()
    created = subscribe(client, follower, patient, subscription(patient, receiver.endpoint))
    assert created.status_code == 201, created.get_json()
    sub = created.get_json()
    assert sub["status"] == "active"
    assert created.headers["Location"].endswith(f"/Subscription/{sub['id']}")

    publish(client, patient, THRESHOLD)  # within the plan: no notification
    publish(client, other, THRESHOLD + 50)  # outside, but nobody follows this patient
    obs_id = publish(client, patient, THRESHOLD + 30)
    assert services.delivery.step(time.time()) == 1

    assert receiver.refused == []
    [got] = receiver.received
    assert got.claims["iss"] == services.settings.issuer_url
    assert got.claims["aud"] == receiver.endpoint
    assert got.claims["client_id"] == NOTIFIER_CLIENT_ID
    assert got.claims["cnf"]["jkt"] == got.proof_jkt
    bundle = got.body
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    status, focus = bundle["entry"]
    params = {p["name"]: p for p in status["resource"]["parameter"]}
    assert status["resource"]["resourceType"] == "Parameters"
    assert params["topic"]["valueCanonical"] == OBSERVATION_OUTSIDE_PLAN.url
    assert params["type"]["valueCode"] == "event-notification"
    assert params["events-since-subscription-start"]["valueString"] == "1"
    assert params["subscription"]["valueReference"]["reference"].endswith(f"/Subscription/{sub['id']}")
    event = {p["name"]: p for p in params["notification-event"]["part"]}
    assert event["focus"]["valueReference"]["reference"].endswith(f"/Observation/{obs_id}/_history/1")
    assert focus["resource"]["id"] == obs_id
    assert focus["resource"]["valueQuantity"]["value"] == THRESHOLD + 30
    assert notify_events(services, patient) == [(AuditAction.SUBSCRIPTION_NOTIFY, Outcome.SUCCESS)]
    assert services.delivery.step(time.time()) == 0  # delivered once, not again


def test_id_only_payload_names_the_measurement_without_its_content(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    patient = fnr()
    assert (
        subscribe(
            client, follower, patient, subscription(patient, receiver.endpoint, payload="id-only")
        ).status_code
        == 201
    )
    obs_id = publish(client, patient, THRESHOLD + 1)
    services.delivery.step(time.time())
    [got] = receiver.received
    focus = got.body["entry"][1]
    assert focus["fullUrl"].endswith(f"/Observation/{obs_id}")
    assert "resource" not in focus


def test_receiver_errors_are_retried_with_backoff_until_delivered(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    patient = fnr()
    assert subscribe(client, follower, patient, subscription(patient, receiver.endpoint)).status_code == 201
    publish(client, patient, THRESHOLD + 10)
    receiver.answers.extend([500, 503])
    backoff = services.delivery.backoff
    now = time.time()

    assert services.delivery.step(now) == 1  # attempt 1: 500
    [entry] = services.subscriptions.entries(
        TENANT_A, services.subscriptions.of_consumer(TENANT_A, HOSPITAL)[0].id
    )
    due = entry["next_attempt"] / 1_000_000
    tolerance = 1e-5  # the outbox keeps microseconds
    assert backoff.base / 2 - tolerance <= due - now <= backoff.base + tolerance  # equal jitter
    assert services.delivery.step(now + (due - now) / 2) == 0  # not due yet: nothing is sent early

    now = due + 0.001
    assert services.delivery.step(now) == 1  # attempt 2: 503
    [entry] = services.subscriptions.entries(TENANT_A, entry["subscription_id"])
    due = entry["next_attempt"] / 1_000_000
    assert backoff.base - tolerance <= due - now <= 2 * backoff.base + tolerance  # the ceiling doubled

    assert services.delivery.step(due + 0.001) == 1  # attempt 3: delivered
    [entry] = services.subscriptions.entries(TENANT_A, entry["subscription_id"])
    assert (entry["state"], entry["attempts"]) == ("delivered", 3)
    assert len(receiver.received) == 3
    assert [o for _, o in notify_events(services, patient)] == [
        Outcome.MINOR_FAILURE,
        Outcome.MINOR_FAILURE,
        Outcome.SUCCESS,
    ]


def test_after_the_last_attempt_the_subscription_is_in_error(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    services.delivery.backoff = Backoff(base=1.0, cap=1.0, max_attempts=2)
    patient = fnr()
    sub = subscribe(client, follower, patient, subscription(patient, receiver.endpoint)).get_json()
    publish(client, patient, THRESHOLD + 10)
    receiver.answers.extend([500, 500])
    now = time.time()
    assert services.delivery.step(now) == 1
    assert services.delivery.step(now + 1.001) == 1  # the wait is at most the 1 s cap
    assert services.delivery.step(now + 100) == 0  # given up
    [entry] = services.subscriptions.entries(TENANT_A, sub["id"])
    assert (entry["state"], entry["attempts"]) == ("failed", 2)
    read = as_party(client, follower, patient, "GET", f"{BASE}/Subscription/{sub['id']}")
    assert read.get_json()["status"] == "error"
    assert "after 2 attempts" in read.get_json()["error"]
    assert [o for _, o in notify_events(services, patient)] == [
        Outcome.MINOR_FAILURE,
        Outcome.SERIOUS_FAILURE,
    ]


def test_a_subscription_is_refused_when_the_agreement_lacks_the_topics_category(
    client: ApiClient, services: Services, receiver: loopback.Receiver
) -> None:
    gp = "974703300"
    services.policy.add_agreement(
        controller=TENANT_A,
        consumer=gp,
        categories=frozenset({"survey"}),
        purposes=frozenset(PurposeOfUse),
        valid_from=datetime(2020, 1, 1, tzinfo=UTC),
    )
    party = client.add_party(Party("gp", gp, frozenset({READ, *SUBSCRIBE})))
    patient = fnr()
    refused = subscribe(client, party, patient, subscription(patient, receiver.endpoint))
    assert refused.status_code == 403
    outcome = refused.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Subscription.criteria"]
    for category in OBSERVATION_OUTSIDE_PLAN.categories:
        assert category in outcome["issue"][0]["diagnostics"]
    assert services.subscriptions.of_consumer(TENANT_A, gp) == []
    refusals = services.audit_log.search(TENANT_A, organisation=gp, action=AuditAction.REQUEST_REFUSED)
    assert len(refusals) == 1


def test_nothing_is_delivered_once_the_patient_blocks_the_subscriber(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    patient = fnr()
    assert subscribe(client, follower, patient, subscription(patient, receiver.endpoint)).status_code == 201
    services.policy.create_directive(TENANT_A, directive_to_fhir(block(patient, HPR)))
    publish(client, patient, THRESHOLD + 40)
    assert services.delivery.step(time.time()) == 1
    assert receiver.received == []
    assert receiver.refused == []
    [entry] = services.subscriptions.entries(
        TENANT_A, services.subscriptions.of_consumer(TENANT_A, HOSPITAL)[0].id
    )
    assert entry["state"] == "dropped"
    [event] = services.audit_log.search(TENANT_A, patient=patient, action=AuditAction.SUBSCRIPTION_NOTIFY)
    assert event.outcome == Outcome.MINOR_FAILURE
    assert "blocked-practitioner" in event.event.decode()


def test_a_blocked_subscriber_may_subscribe_but_learns_nothing(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    """A refusal about the patient is never told (AZ-01): the subscription looks like any other."""
    patient = fnr()
    services.policy.create_directive(TENANT_A, directive_to_fhir(block(patient, HPR)))
    created = subscribe(client, follower, patient, subscription(patient, receiver.endpoint))
    assert created.status_code == 201
    assert created.get_json()["status"] == "active"
    publish(client, patient, THRESHOLD + 40)
    services.delivery.step(time.time())
    assert receiver.received == []


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = body
    for name in parents:
        node = node[name]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "expression"),
    [
        ("criteria", "urn:dho-share:SubscriptionTopic:nope", "Subscription.criteria"),
        ("channel.endpoint", "http://example.org/notify", "Subscription.channel.endpoint"),
        ("channel.endpoint", "https://user:pw@example.org/notify", "Subscription.channel.endpoint"),
        ("channel.type", "websocket", "Subscription.channel.type"),
        ("channel.header", ["Authorization: Bearer x"], "Subscription.channel.header"),
        ("channel.payload", "application/fhir+xml", "Subscription.channel.payload"),
        (
            "channel._payload",
            {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "everything"}]},
            "Subscription.channel._payload.extension",
        ),
        ("_criteria", None, "Subscription._criteria.extension"),
        (
            "_criteria",
            {
                "extension": [
                    {
                        "url": FILTER_CRITERIA,
                        "valueString": f"Observation?patient:identifier={FNR}|12345678901",
                    }
                ]
            },
            "Subscription._criteria.extension[0].valueString",
        ),
        ("reason", None, "Subscription.reason"),
        ("status", "off", "Subscription.status"),
        ("end", "2020-01-01T00:00:00Z", "Subscription.end"),
        ("extension", [{"url": "urn:x", "valueString": "y"}], "Subscription.extension"),
    ],
)
def test_bad_subscriptions_are_refused_naming_the_element(
    client: ApiClient,
    services: Services,
    follower: Party,
    receiver: loopback.Receiver,
    path: str,
    value: Any,
    expression: str,
) -> None:
    patient = fnr()
    refused = subscribe(
        client, follower, patient, _set(subscription(patient, receiver.endpoint), path, value)
    )
    assert refused.status_code == 400, refused.get_json()
    outcome = refused.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [expression]
    assert services.subscriptions.of_consumer(TENANT_A, HOSPITAL) == []


def test_the_attestation_must_name_the_subscribed_patient(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    patient, other = fnr(), fnr()
    token = client.token(follower, (FNR, other))
    path = f"{BASE}/Subscription"
    refused = client.flask.post(
        path,
        data=orjson.dumps(subscription(patient, receiver.endpoint)),
        content_type=FHIR_JSON,
        headers=client.auth_headers("POST", path, token),
    )
    assert refused.status_code == 403
    assert refused.get_json()["issue"][0]["expression"] == ["Subscription._criteria"]
    assert services.subscriptions.of_consumer(TENANT_A, HOSPITAL) == []


def test_only_the_subscribing_organisation_reads_lists_and_deletes_it(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    patient = fnr()
    sub = subscribe(client, follower, patient, subscription(patient, receiver.endpoint)).get_json()
    path = f"{BASE}/Subscription/{sub['id']}"
    other = client.add_party(Party("other-follower", "911222337", frozenset({READ, *SUBSCRIBE})))
    assert as_party(client, other, patient, "GET", path).status_code == 404
    assert as_party(client, other, patient, "DELETE", path).status_code == 404

    listed = as_party(client, follower, patient, "GET", f"{BASE}/Subscription?status=active")
    assert [e["resource"]["id"] for e in listed.get_json()["entry"]] == [sub["id"]]
    assert as_party(client, follower, patient, "GET", f"{BASE}/Subscription?nope=1").status_code == 400

    deleted = as_party(client, follower, patient, "DELETE", path)
    assert deleted.status_code == 200
    assert deleted.get_json()["status"] == "off"
    publish(client, patient, THRESHOLD + 5)
    assert services.delivery.step(time.time()) == 0
    assert receiver.received == []
    actions = [e.action for e in services.audit_log.search(TENANT_A, patient=patient, organisation=HOSPITAL)]
    for action in (
        AuditAction.SUBSCRIPTION_CREATE,
        AuditAction.SUBSCRIPTION_SEARCH,
        AuditAction.SUBSCRIPTION_DELETE,
    ):
        assert action in actions


def test_a_queued_notification_survives_a_restart(
    client: ApiClient, settings: Settings, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    """The outbox is in SQL: what one process queued, a freshly started one delivers."""
    patient = fnr()
    assert subscribe(client, follower, patient, subscription(patient, receiver.endpoint)).status_code == 201
    publish(client, patient, THRESHOLD + 20)
    restarted: Services = create_app(settings).extensions["dho"]
    try:
        assert restarted.delivery.step(time.time()) == 1
    finally:
        restarted.engine.dispose()
    assert len(receiver.received) == 1
    assert receiver.refused == []


def test_every_topic_is_in_the_capability_statement(client: ApiClient) -> None:
    statement = client.get(f"{BASE}/metadata").get_json()
    [resource] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription"]
    offered = {e["valueCanonical"] for e in resource["extension"]}
    assert offered == set(TOPICS)


def test_the_command_line_worker_delivers_what_the_api_queued(
    client: ApiClient,
    settings: Settings,
    services: Services,
    follower: Party,
    receiver: loopback.Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``dho-share subscriptions deliver``: for deployments that run no delivery thread in the API."""
    from click.testing import CliRunner

    from sharing_api.cli import main

    patient = fnr()
    assert subscribe(client, follower, patient, subscription(patient, receiver.endpoint)).status_code == 201
    publish(client, patient, THRESHOLD + 20)
    for name, value in {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_PUBLIC_URL": settings.base_url,
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
        "DHO_AUDIT_KEY_PATH": str(settings.audit_key_path),
        # the worker runs with the API's configuration: the receiver is on loopback (test_egress.py)
        "DHO_SUBSCRIPTION_HTTP_LOOPBACK": "true",
    }.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["subscriptions", "deliver"])
    assert result.exit_code == 0, result.output
    assert "handled 1 notifications" in result.output
    assert len(receiver.received) == 1
    assert receiver.refused == []


def test_full_resource_is_refused_where_the_server_cannot_load_the_topics_resource(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    services.delivery.loaders = {}  # as for CarePlan until its store registers a loader
    patient = fnr()
    refused = subscribe(client, follower, patient, subscription(patient, receiver.endpoint))
    assert refused.status_code == 400
    assert refused.get_json()["issue"][0]["expression"] == ["Subscription.channel._payload.extension"]
    id_only = subscribe(
        client, follower, patient, subscription(patient, receiver.endpoint, payload="id-only")
    )
    assert id_only.status_code == 201


def test_the_delivery_thread_of_the_api_delivers_on_its_own(
    client: ApiClient, settings: Settings, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    """With ``DHO_SUBSCRIPTION_DELIVERY_INTERVAL`` > 0 each API process delivers in the background."""
    patient = fnr()
    assert subscribe(client, follower, patient, subscription(patient, receiver.endpoint)).status_code == 201
    publish(client, patient, THRESHOLD + 20)
    serving = create_app(settings.model_copy(update={"subscription_delivery_interval": 0.05}))
    try:
        assert receiver.arrived.wait(60), "the background thread delivered nothing"
    finally:
        serving.extensions["dho_delivery"].stop()
        serving.extensions["dho"].engine.dispose()
    assert len(receiver.received) == 1
    assert receiver.refused == []


def test_the_subscription_and_the_notification_are_valid_fhir(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    """R4 shapes (fhir.resources, FHIR.js and our Bundle invariants) of what is served and sent."""
    from tests.fhir_validation import assert_valid_fhir

    patient = fnr()
    created = subscribe(client, follower, patient, subscription(patient, receiver.endpoint))
    assert_valid_fhir(created.get_json())
    publish(client, patient, THRESHOLD + 3)
    services.delivery.step(time.time())
    [got] = receiver.received
    assert_valid_fhir(got.body)
    listed = as_party(client, follower, patient, "GET", f"{BASE}/Subscription")
    assert_valid_fhir(listed.get_json())


def plan_subscription(patient: str, endpoint: str) -> dict[str, Any]:
    body = subscription(patient, endpoint, payload="id-only", topic=CAREPLAN_VERSION.url)
    body["_criteria"]["extension"][0]["valueString"] = f"CarePlan?patient:identifier={FNR}|{patient}"
    return body


def test_plan_versions_need_the_plan_category_and_reach_the_follower(
    client: ApiClient, services: Services, receiver: loopback.Receiver
) -> None:
    """``careplan-version``: refused while the agreement lacks ``plan``; once it grants it, an event
    emitted through the emitter API (as the CarePlan store does on every new version) is delivered."""
    party = client.add_party(
        Party(
            "plan-follower", HOSPITAL, frozenset({READ, PLAN_READ, *SUBSCRIBE}), point_of_care=HOSPITAL_UNIT
        )
    )
    patient = fnr()
    refused = subscribe(client, party, patient, plan_subscription(patient, receiver.endpoint))
    assert refused.status_code == 403  # the fixture's agreement shares vital-signs and survey only
    assert PLAN_CATEGORY in refused.get_json()["issue"][0]["diagnostics"]

    # Agreements in force together narrow each other (docs/sharing-policy.md): replace, do not add.
    [current] = services.policy.agreements(controller=TENANT_A, consumer=HOSPITAL)
    services.policy.end_agreement(current.id, datetime(2020, 1, 2, tzinfo=UTC))
    services.policy.add_agreement(
        controller=TENANT_A,
        consumer=HOSPITAL,
        categories=current.categories | {PLAN_CATEGORY},
        purposes=frozenset(PurposeOfUse),
        valid_from=datetime(2020, 1, 1, tzinfo=UTC),
    )
    created = subscribe(client, party, patient, plan_subscription(patient, receiver.endpoint))
    assert created.status_code == 201, created.get_json()
    reference = "CarePlan/plan-1/_history/2"
    assert services.notifications.emit(TENANT_A, CAREPLAN_VERSION, (FNR, patient), reference) == 1
    assert services.notifications.emit(TENANT_A, CAREPLAN_VERSION, (FNR, fnr()), reference) == 0
    assert services.delivery.step(time.time()) == 1
    [got] = receiver.received
    assert receiver.refused == []
    params = {p["name"]: p for p in got.body["entry"][0]["resource"]["parameter"]}
    assert params["topic"]["valueCanonical"] == CAREPLAN_VERSION.url
    event = {p["name"]: p for p in params["notification-event"]["part"]}
    assert event["focus"]["valueReference"]["reference"].endswith(f"/{reference}")
    assert "resource" not in got.body["entry"][1]


def test_subscribing_needs_the_topics_read_scope(
    client: ApiClient, services: Services, receiver: loopback.Receiver
) -> None:
    party = client.add_party(Party("no-read", HOSPITAL, frozenset(SUBSCRIBE), point_of_care=HOSPITAL_UNIT))
    patient = fnr()
    refused = subscribe(client, party, patient, subscription(patient, receiver.endpoint))
    assert refused.status_code == 403
    assert OBSERVATION_OUTSIDE_PLAN.read_scope in refused.headers["WWW-Authenticate"]
    assert services.subscriptions.of_consumer(TENANT_A, HOSPITAL) == []


def test_an_emergency_purpose_cannot_subscribe(
    client: ApiClient, services: Services, follower: Party, receiver: loopback.Receiver
) -> None:
    patient = fnr()
    token = client.token(follower, (FNR, patient), "ETREAT")
    path = f"{BASE}/Subscription"
    refused = client.flask.post(
        path,
        data=orjson.dumps(subscription(patient, receiver.endpoint)),
        content_type=FHIR_JSON,
        headers=client.auth_headers("POST", path, token),
    )
    assert refused.status_code == 403
    assert "emergency" in refused.get_json()["issue"][0]["diagnostics"]
    assert services.subscriptions.of_consumer(TENANT_A, HOSPITAL) == []
