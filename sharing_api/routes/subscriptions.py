"""``/{orgnr}/fhir/Subscription``: topic-based subscriptions to a patient's events (docs/subscriptions.md).

Who may subscribe: a client with ``dho-share/subscription.write`` and the topic's read scope, whose
token's attestation names the one patient the subscription filters on (trust-framework rule, as for
reads), for a non-emergency purpose, and whose organisation's agreement with this controller grants the
topic's data category. A denial about the organisations (no agreement, the category not agreed) is
said plainly (403); one about the patient (a reservation, a block) is not: the subscription is
accepted and simply never delivers, which is decided afresh at every delivery and audited.

A subscription is the subscribing organisation's: only its clients read, list or delete it (anyone
else gets the answer for a missing one). ``DELETE`` turns it ``off``; the record is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
from flask import Response, g, request

from auth.errors import InsufficientScope
from consent.model import PatientId, PurposeOfUse
from consent.policy import AccessRequest
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.errors import Forbidden, InvalidResource, InvalidSearch, NotFound
from sharing_api.routes.common import audit, caller, fhir_response, json_body, services, tenant, tenant_base
from sharing_api.routes.guard import refused
from sharing_api.routes.observations import REFUSALS, attested_patient, bp
from sharing_api.searching import searchset
from sharing_api.subscriptions.resource import parse_subscription
from sharing_api.subscriptions.store import ACTIVE, ERROR, OFF, StoredSubscription, Subscriber
from sharing_api.subscriptions.topics import TOPICS

_STATUSES = (ACTIVE, ERROR, OFF)


def _own(sub_id: str) -> StoredSubscription:
    """The subscription if it is the caller's organisation's; the same 404 whether missing or not yours."""
    stored = services().subscriptions.get(tenant().orgnr, sub_id)
    if stored is None or stored.subscriber.consumer != caller().organisation:
        raise NotFound(f"Subscription/{sub_id} is not known", "Subscription.id")
    return stored


def _location(stored: StoredSubscription) -> dict[str, str]:
    return {"Location": f"{tenant_base()}/Subscription/{stored.id}"}


@bp.post("/Subscription")
def subscription_create() -> Response:
    svc = services()
    who = caller()
    wanted = parse_subscription(
        json_body(),
        allow_http_loopback=svc.settings.subscription_http_loopback,
        now=svc.subscriptions.clock(),
    )
    unreachable = svc.delivery.sender.egress.literal_refusal(wanted.endpoint)
    if unreachable is not None:
        raise InvalidResource(f"the endpoint is not allowed: {unreachable}", "Subscription.channel.endpoint")
    topic = wanted.topic
    if wanted.payload == "full-resource" and topic.resource not in svc.delivery.loaders:
        raise InvalidResource(
            f"full-resource is not available for {topic.resource} notifications here; use id-only",
            "Subscription.channel._payload.extension",
        )
    if not who.has_scope(topic.read_scope):
        raise refused(
            InsufficientScope(f"the topic needs the scope `{topic.read_scope}`", scope=topic.read_scope)
        )
    system, value = attested_patient()
    if wanted.patient != (system, value):
        raise Forbidden(
            "the attestation is for another patient than the one the subscription names",
            "Subscription._criteria",
        )
    purpose = PurposeOfUse(str(who.purpose_of_use or PurposeOfUse.TREAT))
    if purpose.is_emergency:
        raise Forbidden("a standing subscription is not an emergency access: subscribe for TREAT or COC")
    consumer = who.organisation
    if consumer is None:
        raise Forbidden("the token names no organisation (orgnr_parent) to subscribe for")
    point_of_care = who.point_of_care if who.point_of_care != consumer else None
    decision = svc.access.decide(
        AccessRequest(
            controller=tenant().orgnr,
            consumer=consumer,
            purpose=purpose,
            patient=PatientId(system, value),
            at=datetime.now(UTC),
            point_of_care=point_of_care,
            practitioner_hpr=who.practitioner_hpr,
            categories=topic.categories,
        ),
        tenant(),
    )
    g.decision = decision
    if not decision.permit and decision.reveals_existence:
        reason = decision.reasons[0]
        categories = ", ".join(sorted(topic.categories))
        raise Forbidden(
            f"subscribing is not permitted here ({reason}): {REFUSALS.get(reason, reason)}; "
            f"the topic needs the data category {categories}",
            "Subscription.criteria",
        )
    subs = svc.subscriptions
    with subs.writing() as conn:
        stored = subs.create_in(
            conn,
            tenant().orgnr,
            topic=topic.url,
            patient=wanted.patient,
            subscriber=Subscriber(who.client_id, consumer, point_of_care, who.practitioner_hpr, str(purpose)),
            endpoint=wanted.endpoint,
            payload=wanted.payload,
            end_at=wanted.end,
            resource=wanted.resource,
        )
        # Stored and audited together. A patient-level denial is recorded here, never told to the caller.
        audit(
            AuditAction.SUBSCRIPTION_CREATE,
            patient=stored.patient,
            resources=[f"Subscription/{stored.id}"],
            outcome=Outcome.SUCCESS,
            conn=conn,
        )
    return fhir_response(stored.resource(), 201, _location(stored))


@bp.get("/Subscription/<sub_id>")
def subscription_read(sub_id: str) -> Response:
    stored = _own(sub_id)
    audit(AuditAction.SUBSCRIPTION_READ, patient=stored.patient, resources=[f"Subscription/{stored.id}"])
    return fhir_response(stored.resource())


@bp.delete("/Subscription/<sub_id>")
def subscription_delete(sub_id: str) -> Response:
    stored = _own(sub_id)
    subs = services().subscriptions
    with subs.writing() as conn:
        subs.set_status(conn, stored.tenant, stored.id, OFF)
        audit(
            AuditAction.SUBSCRIPTION_DELETE,
            patient=stored.patient,
            resources=[f"Subscription/{stored.id}"],
            conn=conn,
        )
    current = subs.get(stored.tenant, stored.id)
    assert current is not None
    return fhir_response(current.resource())


def _filters(params: Sequence[tuple[str, str]]) -> tuple[str | None, str | None]:
    status = criteria = None
    for name, value in params:
        if name == "_format":
            continue
        if name == "status":
            if value not in _STATUSES:
                raise InvalidSearch(f"status is one of {', '.join(_STATUSES)}", "status")
            status = value
        elif name == "criteria":
            if value not in TOPICS:
                raise InvalidSearch("criteria is the canonical URL of a topic served here", "criteria")
            criteria = value
        else:
            raise InvalidSearch(f"unknown search parameter {name!r} (supported: status, criteria)", name)
    return status, criteria


@bp.get("/Subscription")
def subscription_search() -> Response:
    """The caller's organisation's subscriptions at this controller, by ``status`` and ``criteria``."""
    status, criteria = _filters(list(request.args.items(multi=True)))
    found = services().subscriptions.of_consumer(
        tenant().orgnr, caller().organisation or "", status=status, topic=criteria
    )
    patients: list[tuple[str, str] | None] = [*sorted({s.patient for s in found})]
    for patient in patients or [None]:
        audit(
            AuditAction.SUBSCRIPTION_SEARCH,
            patient=patient,
            resources=[f"Subscription/{s.id}" for s in found if s.patient == patient],
        )
    body = searchset(
        tenant_base(),
        [orjson.dumps(s.resource()) for s in found],
        total=len(found),
        links=[],
        resource_type="Subscription",
        ids=[s.id for s in found],
    )
    return fhir_response(body)
