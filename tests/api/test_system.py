"""Health, readiness, the CapabilityStatement, security headers and the route inventory (RES-05, RES-06)."""

from __future__ import annotations

import pytest
from flask import Flask, session

from sharing_api.services import Services
from tests.api_client import ApiClient
from tests.conftest import TENANT_A

BASE = f"/{TENANT_A}/fhir"

# Every route the app serves; a new route must be added here on purpose (and protected, documented).
ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),  # Prometheus, only with DHO_METRICS_TOKEN (tests/api/test_metrics.py)
    ("GET", "/<orgnr>/fhir/metadata"),
    ("POST", "/<orgnr>/fhir"),
    ("POST", "/<orgnr>/fhir/Observation"),
    ("GET", "/<orgnr>/fhir/Observation"),
    ("POST", "/<orgnr>/fhir/Observation/_search"),
    ("GET", "/<orgnr>/fhir/Observation/$lastn"),
    ("POST", "/<orgnr>/fhir/Observation/$lastn"),
    ("GET", "/<orgnr>/fhir/Observation/<obs_id>"),
    ("PUT", "/<orgnr>/fhir/Observation/<obs_id>"),
    ("GET", "/<orgnr>/fhir/Observation/<obs_id>/_history"),
    ("GET", "/<orgnr>/fhir/Observation/<obs_id>/_history/<int:version_id>"),
    ("POST", "/<orgnr>/fhir/Consent"),
    ("POST", "/<orgnr>/fhir/Consent/_search"),
    ("POST", "/<orgnr>/fhir/Patient/$match"),
    ("POST", "/<orgnr>/fhir/Patient/_search"),
    ("GET", "/<orgnr>/fhir/Patient/<patient_id>"),
    ("GET", "/<orgnr>/fhir/Consent/<directive_id>"),
    ("PUT", "/<orgnr>/fhir/Consent/<directive_id>"),
    ("DELETE", "/<orgnr>/fhir/Consent/<directive_id>"),
    ("POST", "/<orgnr>/fhir/CarePlan"),
    ("POST", "/<orgnr>/fhir/CarePlan/_search"),
    ("GET", "/<orgnr>/fhir/CarePlan/<plan_id>"),
    ("PUT", "/<orgnr>/fhir/CarePlan/<plan_id>"),
    ("GET", "/<orgnr>/fhir/CarePlan/<plan_id>/_history"),
    ("GET", "/<orgnr>/fhir/CarePlan/<plan_id>/_history/<int:version_id>"),
    ("POST", "/<orgnr>/fhir/Goal"),
    ("GET", "/<orgnr>/fhir/Goal/<goal_id>"),
    ("PUT", "/<orgnr>/fhir/Goal/<goal_id>"),
    ("GET", "/<orgnr>/fhir/Goal/<goal_id>/_history"),
    ("GET", "/<orgnr>/fhir/Goal/<goal_id>/_history/<int:version_id>"),
    ("POST", "/<orgnr>/fhir/Observation/$evaluate"),
    ("GET", "/<orgnr>/admin/agreements"),
    ("POST", "/<orgnr>/admin/agreements"),
    ("POST", "/<orgnr>/admin/agreements/<agreement_id>/end"),
    ("GET", "/<orgnr>/fhir/AuditEvent"),
    ("POST", "/<orgnr>/fhir/AuditEvent/_search"),
    ("GET", "/<orgnr>/fhir/AuditEvent/<event_id>"),
    ("GET", "/<orgnr>/fhir/AuditEvent/$export"),
    ("GET", "/<orgnr>/fhir/AuditEvent/$checkpoint"),
    ("GET", "/<orgnr>/fhir/AuditEvent/$inclusion-proof"),
    ("GET", "/<orgnr>/fhir/AuditEvent/$consistency-proof"),
    ("GET", "/<orgnr>/fhir/AuditEvent/$access-log"),
    ("POST", "/<orgnr>/fhir/Subscription"),
    ("GET", "/<orgnr>/fhir/Subscription"),
    ("GET", "/<orgnr>/fhir/Subscription/<sub_id>"),
    ("DELETE", "/<orgnr>/fhir/Subscription/<sub_id>"),
    ("POST", "/connect/token"),
    ("POST", "/connect/introspect"),
    ("POST", "/connect/revocation"),
    ("GET", "/.well-known/openid-configuration"),
    ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/.well-known/openid-configuration/jwks"),
    # The auditor console (tests/console/: every page but login and static files needs a session).
    ("GET", "/console/"),
    ("GET", "/console/api/daily"),
    ("GET", "/console/cases"),
    ("GET", "/console/cases/<int:case_id>"),
    ("POST", "/console/cases/<int:case_id>"),
    ("GET", "/console/events"),
    ("POST", "/console/events"),
    ("POST", "/console/events.csv"),
    ("GET", "/console/events/<int:seq>"),
    ("GET", "/console/integrity"),
    ("POST", "/console/integrity/verify"),
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("POST", "/console/logout"),
    ("GET", "/console/organisations"),
    ("GET", "/console/patient"),
    ("POST", "/console/patient"),
    ("POST", "/console/patient.pdf"),
    ("GET", "/console/report"),
    ("GET", "/console/review"),
    ("POST", "/console/review/triage"),
    ("GET", "/console/static/<path:filename>"),
    ("GET", "/console/workers"),
    ("GET", "/console/workers/<hpr>"),
}


def test_route_inventory(app: Flask) -> None:
    from sharing_api.routes.guard import PUBLIC, RULES

    protected = {rule.endpoint for rule in app.url_map.iter_rules() if "<orgnr>" in rule.rule}
    assert protected <= set(RULES) | PUBLIC, "every tenant route has a scope and rule in the guard"
    served = {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    assert served == ROUTES


def test_health_and_readiness(client: ApiClient, services: Services) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    partitioned = services.engine.dialect.name == "postgresql"  # the audit table's months (0006)
    expected = {"database": "ok", "redis": "ok"} | ({"audit_partitions": "ok"} if partitioned else {})
    assert ready.get_json()["checks"] == expected


def test_security_headers_and_no_stack_traces(client: ApiClient) -> None:
    response = client.get(f"{BASE}/Observation/nope", patient="01017012345")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Traceback" not in response.get_data(as_text=True)


def test_unknown_paths_and_methods_are_operation_outcomes(client: ApiClient) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.get_json()["resourceType"] == "OperationOutcome"
    wrong = client.delete(f"{BASE}/Observation/x")
    assert wrong.status_code == 405
    assert wrong.get_json()["resourceType"] == "OperationOutcome"


def test_no_cookie_session_is_kept_or_sent(app: Flask, client: ApiClient) -> None:
    """The app keeps no Flask cookie session: reading one finds nothing, writing one is refused, and no
    answer sets a cookie."""
    with app.test_request_context("/healthz"):
        assert session.get("user") is None
        with pytest.raises(RuntimeError):
            session["user"] = "someone"
    for path in ("/healthz", f"{BASE}/metadata", "/nowhere"):
        assert "Set-Cookie" not in client.flask.get(path).headers
