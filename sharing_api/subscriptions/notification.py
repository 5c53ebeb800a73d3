"""The notification Bundle (Subscriptions R5 Backport IG, R4 shape): a ``history`` Bundle whose first
entry is the ``Parameters`` status resource (profile ``backport-subscription-status-r4``) and whose
next entry is the focus: with the resource for ``full-resource``, the ``fullUrl`` only for ``id-only``.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
STATUS_PROFILE = BACKPORT + "backport-subscription-status-r4"
NOTIFICATION_PROFILE = BACKPORT + "backport-subscription-notification-r4"


def notification_bundle(
    *,
    base: str,
    subscription_id: str,
    topic: str,
    event_number: int,
    timestamp: str,
    focus: str,
    resource: bytes | None,
) -> bytes:
    """An ``event-notification`` for one event. ``base`` is the tenant's FHIR base URL; ``focus`` a
    versioned reference (``Observation/<id>/_history/<n>``); ``resource`` the focus's stored JSON for a
    ``full-resource`` payload, ``None`` for ``id-only``."""
    subscription_url = f"{base}/Subscription/{subscription_id}"
    status_id = str(uuid.uuid4())
    status: dict[str, Any] = {
        "resourceType": "Parameters",
        "id": status_id,
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": subscription_url}},
            {"name": "topic", "valueCanonical": topic},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": str(event_number)},
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(event_number)},
                    {"name": "timestamp", "valueInstant": timestamp},
                    {"name": "focus", "valueReference": {"reference": f"{base}/{focus}"}},
                ],
            },
        ],
    }
    kind, resource_id = focus.split("/")[:2]
    focus_entry: dict[str, Any] = {
        "fullUrl": f"{base}/{kind}/{resource_id}",
        "request": {
            "method": "POST" if focus.endswith("/_history/1") else "PUT",
            "url": f"{kind}/{resource_id}",
        },
        "response": {"status": "201" if focus.endswith("/_history/1") else "200"},
    }
    head = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": timestamp,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{status_id}",
                "resource": status,
                "request": {"method": "GET", "url": f"{subscription_url}/$status"},
                "response": {"status": "200"},
            },
            focus_entry,
        ],
    }
    if resource is None:
        return orjson.dumps(head)
    # The stored bytes are served as they are (never re-serialised): splice them into the focus entry.
    body = orjson.dumps(head)
    closing = b"}]}"
    assert body.endswith(closing)
    return body[: -len(closing)] + b',"resource":' + resource + closing
