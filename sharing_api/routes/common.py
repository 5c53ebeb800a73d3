"""Request/response plumbing shared by the route modules."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, current_app, g, request

from auth.caller import Caller
from sharing_api.errors import NotFound
from sharing_api.fhir.body import parse_json
from sharing_api.services import Services
from sharing_api.store.tenants import TenantRecord

FHIR_JSON = "application/fhir+json; charset=utf-8"


def services() -> Services:
    svc: Services = current_app.extensions["dho"]
    return svc


def tenant() -> TenantRecord:
    record: TenantRecord = g.tenant
    return record


def resolve_tenant(orgnr: str) -> TenantRecord:
    record = services().tenants.get(orgnr)
    if record is None:
        raise NotFound(f"no data controller {orgnr!r} is served here", "orgnr")
    return record


def tenant_base() -> str:
    return f"{services().settings.base_url}/{tenant().orgnr}/fhir"


def fhir_response(
    body: bytes | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(data, status=status, headers=headers or {}, content_type=FHIR_JSON)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Plain JSON (the token service speaks OAuth, not FHIR)."""
    return Response(orjson.dumps(body), status=status, headers=headers or {}, content_type="application/json")


def json_body() -> Any:
    return parse_json(
        request.get_data(cache=False), request.content_type, max_depth=services().settings.max_json_depth
    )


def prefers_strict() -> bool:
    return "handling=strict" in request.headers.get("Prefer", "").replace(" ", "")


def caller() -> Caller:
    """The authenticated caller of this request (set by the guard before any route runs)."""
    who: Caller = g.caller
    return who


def requester() -> str:
    """Who a paging cursor is bound to: the client system, its organisation and the health worker."""
    who = caller()
    return "|".join((who.issuer, who.client_id, who.organisation or "", who.practitioner_hpr or ""))
