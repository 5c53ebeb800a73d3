"""Request/response plumbing shared by the route modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from flask import Request, Response, current_app, g, request
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from auth.caller import Caller
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.auditing import RequestInfo, audit_facts
from sharing_api.errors import InvalidResource, NotFound, ServiceUnavailable
from sharing_api.fhir.body import parse_json
from sharing_api.services import Services
from sharing_api.store.tenants import TenantRecord

FHIR_JSON = "application/fhir+json; charset=utf-8"


def current_request() -> Request:
    """This request's object itself: a hook or route that reads several of its facts reads them from
    it directly rather than through the ``request`` proxy's context look-up on every attribute."""
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    return req


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


MAX_AUDITED_QUERY = 8192
"""Bytes of a request line, and of a search's form body, kept in the audit record: a hostile request of
megabytes (refused or not) never becomes megabytes in the append-only log."""


def require_id_of_url(body: Any, resource_id: str, resource_type: str) -> None:
    """An update's body must carry the id of its URL (FHIR R4 §3.1.0.4 "update": 400 when ``id`` is
    missing or differs). Bodies that are not objects are left to the resource's own validation."""
    if not isinstance(body, dict):
        return
    if "id" not in body:
        raise InvalidResource("an update must carry the resource id of the URL", f"{resource_type}.id")
    if body["id"] != resource_id:
        raise InvalidResource("the resource id must match the id in the URL", f"{resource_type}.id")


def bounded(raw: bytes, limit: int = MAX_AUDITED_QUERY) -> bytes:
    """``raw``, or its first ``limit`` bytes and a note of how long it was."""
    if len(raw) <= limit:
        return raw
    return raw[:limit] + f"...[{len(raw)} bytes, cut to {limit}]".encode()


def request_info(*, with_body: bool) -> RequestInfo:
    """The request as the audit log keeps it; ``with_body`` only for reads (a search's form)."""
    req = current_request()  # once: every ``request.x`` would look the request up again
    target = req.full_path.rstrip("?") if req.query_string else req.path
    body = req.get_data(cache=True) if with_body else None
    return RequestInfo(
        method=req.method,
        target=bounded(target.encode()).decode(errors="replace"),
        body=bounded(body) if body is not None else None,
        correlation_id=g.get("correlation_id", ""),
        source_address=req.remote_addr,
        server=services().settings.base_url,
    )


def audit(
    action: AuditAction,
    *,
    patient: tuple[str, str] | None,
    resources: Sequence[str] = (),
    outcome: Outcome | None = None,
    with_body: bool = False,
    conn: Connection | None = None,
    description: str | None = None,
) -> None:
    """Record this request in the tenant's audit log; fail closed (503, no data) if that fails.

    Reads record and commit before their data is returned; writes pass ``conn`` to record in the same
    transaction as the data.
    """
    state = g._get_current_object()
    decision = state.get("decision")
    if outcome is None:
        outcome = Outcome.SUCCESS if decision is None or decision.permit else Outcome.MINOR_FAILURE
    auditor = services().auditor
    facts = audit_facts(
        action=action,
        outcome=outcome,
        tenant=state.tenant.orgnr,
        caller=state.get("caller"),
        request=request_info(with_body=with_body),
        patient=patient,
        resources=resources,
        decision=decision,
        categories=sorted(decision.categories) if decision is not None and decision.categories else (),
        description=description,
        pid_hash=auditor.pid_hash,
    )
    if conn is not None:
        auditor.record_in(conn, facts)
        return
    try:
        auditor.record(facts)
    except SQLAlchemyError as exc:
        raise ServiceUnavailable("the audit log cannot be written; nothing is returned without it") from exc


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
