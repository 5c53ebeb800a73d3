"""Operational endpoints: liveness, readiness, the CapabilityStatement and the OpenAPI document."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import redis
from flask import Blueprint, Response, current_app
from sqlalchemy import text

from auth.server import TOKEN_PATH
from sharing_api.fhir.capabilities import capability_statement, openapi_document
from sharing_api.fhir.search import SEARCH_PARAMETERS
from sharing_api.routes.audit_api import AUDIT_EVENT_SEARCH
from sharing_api.routes.common import fhir_response, json_response, services, tenant_base
from sharing_api.routes.guard import RULES
from sharing_api.routes.observations import bp as observations_bp

FHIR_PREFIX = "/<orgnr>/fhir"
SEARCH_REGISTRY = {**SEARCH_PARAMETERS, "AuditEvent": AUDIT_EVENT_SEARCH}
"""Every resource's search parameters: the search parser's registry and the audit API's own."""

bp = Blueprint("system", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive (no dependency checks: restarting would not fix them)."""
    return fhir_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready to serve: the database answers, and Redis too when one is configured.

    On PostgreSQL also the audit table's monthly partitions (``store.audit_partitions``): a missing
    current month is ``unavailable`` (audited requests would get 503), a missing next month ``degraded``
    (reported, still ready: an alarm before it is an outage)."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        months = svc.audit_log.partition_status(ahead=1)
        if months is not None:
            checks["audit_partitions"] = months.detail
    except Exception as exc:  # readiness reports any failure; it must not raise
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if svc.redis_url:
        try:
            svc.redis_client.ping()  # Sentinel and Cluster URLs too (sharing_api/redis_connection.py)
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" or v.startswith("degraded") for v in checks.values())
    return fhir_response(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


def fhir_routes() -> list[tuple[str, str, str]]:
    """Every served ``(method, rule, endpoint)`` under ``/<orgnr>/fhir``, from the Flask route map."""
    return sorted(
        (method, rule.rule, rule.endpoint)
        for rule in current_app.url_map.iter_rules()
        if rule.rule.startswith(FHIR_PREFIX)
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    )


def _version() -> str:
    try:
        return package_version("dho-share")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0"


@observations_bp.get("/metadata")
def metadata() -> Response:
    """The CapabilityStatement, generated from the route map (FHIR R4 ``capabilities`` interaction)."""
    statement = capability_statement(
        fhir_routes(),
        base=tenant_base(),
        token_url=services().settings.issuer_url + TOKEN_PATH,
        software_version=_version(),
        registry=SEARCH_REGISTRY,
    )
    return fhir_response(statement)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of the FHIR routes, generated like the CapabilityStatement."""
    settings = services().settings
    document = openapi_document(
        fhir_routes(),
        server=settings.base_url,
        token_url=settings.issuer_url + TOKEN_PATH,
        scopes={endpoint: scope for endpoint, (scope, _) in RULES.items()},
        software_version=_version(),
        registry=SEARCH_REGISTRY,
    )
    return json_response(document)
