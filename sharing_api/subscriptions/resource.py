"""A client's ``Subscription``: FHIR R4 structure, then the backport-IG subset this server implements.

What is accepted (docs/subscriptions.md, "The Subscription resource"); anything else is refused with an
OperationOutcome naming the element, and nothing is stored (never silently ignored):

* ``criteria``: the canonical URL of a topic in :data:`~sharing_api.subscriptions.topics.TOPICS`;
* ``_criteria.extension``: exactly one ``backport-filter-criteria`` whose value is
  ``<Resource>?patient:identifier=<system>|<value>`` (``subject:identifier`` is read alike), naming one
  patient by FNR, DNR or FHN with valid control digits; ``<Resource>`` is the topic's resource;
* ``status``: ``requested`` (or ``active``); the server sets ``active``;
* ``channel.type`` ``rest-hook``; ``channel.endpoint`` an ``https`` URL (plain ``http`` to a loopback
  address only where the setting allows it, for tests and development); ``channel.payload``
  ``application/fhir+json``; ``channel._payload.extension`` ``backport-payload-content`` with
  ``id-only`` (the default) or ``full-resource``; no ``channel.header`` (the server authenticates with
  its own DPoP-bound token);
* ``end`` (optional, in the future), ``reason`` (required by R4), ``contact``, ``meta.profile``;
* no other ``extension`` or ``modifierExtension`` (heartbeat, timeout and max-count are not offered).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from fhir.resources.R4B.subscription import Subscription as FhirSubscription
from pydantic import ValidationError

from sharing_api.errors import InvalidResource
from sharing_api.fhir.dates import DateFormatError, parse_range
from sharing_api.fhir.identifiers import check_patient_identifier
from sharing_api.subscriptions.topics import TOPICS, Topic

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER_CRITERIA = BACKPORT + "backport-filter-criteria"
PAYLOAD_CONTENT = BACKPORT + "backport-payload-content"
SUBSCRIPTION_PROFILE = BACKPORT + "backport-subscription"
PAYLOADS = ("id-only", "full-resource")
FHIR_JSON = "application/fhir+json"
_PATIENT_KEYS = ("patient:identifier", "subject:identifier")
_LOOPBACK_NAMES = frozenset({"localhost"})
MAX_ENDPOINT = 2048


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """What a valid ``Subscription`` asks for."""

    topic: Topic
    patient: tuple[str, str]
    endpoint: str
    payload: str
    end: int | None
    """Microseconds since the epoch (exclusive), or ``None``."""
    resource: dict[str, Any]


def _structure(resource: Any) -> dict[str, Any]:
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        raise InvalidResource("expected a Subscription resource", "Subscription.resourceType")
    for where, part in (("Subscription", resource), ("Subscription.channel", resource.get("channel"))):
        if isinstance(part, dict) and "modifierExtension" in part:
            raise InvalidResource("modifierExtension is not supported", f"{where}.modifierExtension")
        if isinstance(part, dict) and "extension" in part:
            raise InvalidResource(
                "no extension is supported here (heartbeat, timeout and max-count are not offered)",
                f"{where}.extension",
            )
    try:
        FhirSubscription.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = "Subscription" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise InvalidResource(first["msg"], where) from exc
    except (ValueError, TypeError) as exc:
        raise InvalidResource(str(exc), "Subscription") from exc
    return resource


def _extensions(element: Any, where: str, allowed: str) -> list[dict[str, Any]]:
    """The extensions of a primitive's ``_element``; any but ``allowed`` is refused."""
    if element is None:
        return []
    found = element.get("extension") or [] if isinstance(element, dict) else []
    for i, ext in enumerate(found):
        if ext.get("url") != allowed:
            raise InvalidResource(f"unsupported extension {ext.get('url')!r}", f"{where}.extension[{i}]")
    if isinstance(element, dict) and set(element) - {"extension"}:
        raise InvalidResource("only extensions are supported here", where)
    return list(found)


def _patient(resource: dict[str, Any], subscribed: Topic) -> tuple[str, str]:
    where = "Subscription._criteria"
    filters = _extensions(resource.get("_criteria"), where, FILTER_CRITERIA)
    if len(filters) != 1 or not isinstance(filters[0].get("valueString"), str):
        raise InvalidResource(
            f"name exactly one patient: one backport-filter-criteria with valueString "
            f"'{subscribed.resource}?patient:identifier=<system>|<value>'",
            f"{where}.extension",
        )
    where = f"{where}.extension[0].valueString"
    text: str = filters[0]["valueString"]
    kind, _, query = text.partition("?")
    if kind != subscribed.resource:
        raise InvalidResource(f"the topic's filter is on {subscribed.resource}, not {kind!r}", where)
    key, eq, value = query.partition("=")
    if key not in _PATIENT_KEYS or not eq or "&" in value or "," in value:
        raise InvalidResource("the only filter is one patient: patient:identifier=<system>|<value>", where)
    system, bar, number = unquote(value).partition("|")
    if not bar:
        raise InvalidResource("the patient identifier is <system>|<value>", where)
    wrong = check_patient_identifier(system, number)
    if wrong is not None:
        raise InvalidResource(f"the patient identifier {wrong}", where)
    return system, number


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: Any, *, allow_http_loopback: bool) -> str:
    """The rest-hook endpoint: an absolute ``https`` URL without credentials or fragment; ``http`` only
    to a loopback address and only when ``allow_http_loopback`` (tests, development)."""
    where = "Subscription.channel.endpoint"
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > MAX_ENDPOINT:
        raise InvalidResource(f"the rest-hook endpoint is a URL of at most {MAX_ENDPOINT} characters", where)
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise InvalidResource("the endpoint is not a valid URL", where) from exc
    if not host or parts.username is not None or parts.password is not None or parts.fragment:
        raise InvalidResource("the endpoint is an absolute URL without credentials or fragment", where)
    if parts.scheme == "https":
        return endpoint
    if parts.scheme == "http" and allow_http_loopback and _is_loopback(host):
        return endpoint
    raise InvalidResource("the endpoint must be an https URL", where)


def parse_subscription(resource: Any, *, allow_http_loopback: bool, now: int) -> SubscriptionRequest:
    """Validate a ``Subscription`` sent by a client (see the module docstring); ``now`` in microseconds."""
    resource = _structure(resource)
    criteria = resource["criteria"]
    subscribed = TOPICS.get(criteria)
    if subscribed is None:
        known = ", ".join(sorted(TOPICS))
        raise InvalidResource(
            f"criteria must be the canonical URL of a topic served here: {known}", "Subscription.criteria"
        )
    if resource["status"] not in ("requested", "active"):
        raise InvalidResource("a new subscription has status requested", "Subscription.status")
    patient = _patient(resource, subscribed)
    channel = resource["channel"]
    if channel["type"] != "rest-hook":
        raise InvalidResource("only the rest-hook channel is offered", "Subscription.channel.type")
    if "header" in channel:
        raise InvalidResource(
            "channel.header is not supported: notifications carry the server's own DPoP-bound token",
            "Subscription.channel.header",
        )
    endpoint = check_endpoint(channel.get("endpoint"), allow_http_loopback=allow_http_loopback)
    if channel.get("payload", FHIR_JSON) != FHIR_JSON:
        raise InvalidResource(f"channel.payload must be {FHIR_JSON}", "Subscription.channel.payload")
    contents = _extensions(channel.get("_payload"), "Subscription.channel._payload", PAYLOAD_CONTENT)
    payload = "id-only"
    if contents:
        payload = contents[0].get("valueCode", "")
        if len(contents) != 1 or payload not in PAYLOADS:
            raise InvalidResource(
                f"payload content is one of {', '.join(PAYLOADS)}", "Subscription.channel._payload.extension"
            )
    end = None
    if "end" in resource:
        try:
            end = parse_range(resource["end"])[0]
        except DateFormatError as exc:
            raise InvalidResource(str(exc), "Subscription.end") from exc
        if end <= now:
            raise InvalidResource("end lies in the past", "Subscription.end")
    for element in ("error", "_status", "_end"):
        if element in resource:
            raise InvalidResource(f"{element} is set by the server", f"Subscription.{element}")
    return SubscriptionRequest(subscribed, patient, endpoint, payload, end, resource)
