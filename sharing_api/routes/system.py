"""Operational endpoints: liveness, readiness and the CapabilityStatement."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response
from sqlalchemy import text

from sharing_api.fhir.search import SORTS
from sharing_api.routes.common import fhir_response, services, tenant_base
from sharing_api.routes.observations import bp as observations_bp

bp = Blueprint("system", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive (no dependency checks: restarting would not fix them)."""
    return fhir_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready to serve: the database answers, and Redis too when one is configured."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports any failure; it must not raise
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if svc.redis_url:
        try:
            svc.redis_client.ping()  # Sentinel and Cluster URLs too (sharing_api/redis_connection.py)
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return fhir_response(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


def capability_statement(base: str) -> dict[str, Any]:
    """What this server implements, and nothing more (kept in step by a test against the route map)."""
    token_type = "token"  # noqa: S105 (the FHIR search-parameter type, not a secret)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "dho-share", "version": "0.1.0"},
        "implementation": {"description": "DHO measurement sharing API", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": "Observation",
                        "supportedProfile": [
                            "http://hl7.no/fhir/vkpobservation/StructureDefinition/vkp-Observation"
                        ],
                        "interaction": [
                            {"code": c}
                            for c in ("read", "vread", "update", "history-instance", "create", "search-type")
                        ],
                        "versioning": "versioned",
                        "readHistory": True,
                        "updateCreate": False,
                        "conditionalCreate": True,
                        "searchParam": [
                            {"name": "patient.identifier", "type": token_type},
                            {"name": "subject:identifier", "type": token_type},
                            {"name": "code", "type": token_type},
                            {"name": "category", "type": token_type},
                            {"name": "identifier", "type": token_type},
                            {"name": "status", "type": token_type},
                            {"name": "date", "type": "date"},
                            {"name": "_lastUpdated", "type": "date"},
                            {"name": "_count", "type": "number"},
                            {"name": "_sort", "type": "string", "documentation": ", ".join(SORTS)},
                            {"name": "_summary", "type": token_type, "documentation": "count"},
                            {"name": "_total", "type": token_type},
                        ],
                        "operation": [
                            {
                                "name": "lastn",
                                "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
                            }
                        ],
                    }
                ],
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
            }
        ],
    }


@observations_bp.get("/metadata")
def metadata() -> Response:
    return fhir_response(capability_statement(tenant_base()))
