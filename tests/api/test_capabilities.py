"""The CapabilityStatement and the OpenAPI document are generated from the route map (issue 8).

Every route served under ``/{orgnr}/fhir`` must be described in both, and everything they describe must
be served; a route added without a declaration fails here.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from openapi_spec_validator import validate

from auth.server import TOKEN_PATH
from sharing_api.fhir import search
from sharing_api.fhir.capabilities import DECLARED, ENDPOINTS, RESOURCES, openapi_path, search_params
from sharing_api.routes.audit_api import AUDIT_EVENT_SEARCH
from sharing_api.routes.guard import RULES
from sharing_api.routes.system import FHIR_PREFIX, SEARCH_REGISTRY, fhir_routes
from tests.api_client import ApiClient
from tests.conftest import TENANT_A

BASE = f"/{TENANT_A}/fhir"


def served(app: Flask) -> list[tuple[str, str, str]]:
    with app.app_context():
        return fhir_routes()


def undescribed(app: Flask) -> set[str]:
    """Endpoints served under /{orgnr}/fhir without a declaration."""
    return {endpoint for _, _, endpoint in served(app)} - set(DECLARED)


def test_every_route_is_declared_and_every_declaration_is_served(app: Flask) -> None:
    endpoints = {endpoint for _, _, endpoint in served(app)}
    assert endpoints, "the route map has FHIR routes"
    assert undescribed(app) == set()
    assert set(DECLARED) - endpoints == set(), "a declaration without a route"


def test_a_route_added_without_a_declaration_is_caught(app: Flask) -> None:
    app.add_url_rule(
        f"{FHIR_PREFIX}/Patient/$match", "fhir.match_probe", lambda: Response(), methods=["POST"]
    )
    assert undescribed(app) == {"fhir.match_probe"}


def _statement_items(statement: dict[str, Any]) -> set[tuple[str | None, str]]:
    """(resource type or None for system, interaction code or $operation) pairs in the statement."""
    [rest] = statement["rest"]
    items: set[tuple[str | None, str]] = {(None, i["code"]) for i in rest.get("interaction", ())}
    for resource in rest["resource"]:
        items |= {(resource["type"], i["code"]) for i in resource["interaction"]}
        items |= {(resource["type"], "$" + o["name"]) for o in resource.get("operation", ())}
    return items


def _route_items(app: Flask) -> set[tuple[str | None, str]]:
    items: set[tuple[str | None, str]] = set()
    for _, _, endpoint in served(app):
        declared = DECLARED[endpoint]
        items |= {(declared.resource, code) for code in declared.interactions}
        if declared.operation is not None:
            items.add((declared.resource, "$" + declared.operation.name))
    return items


def test_capability_statement_describes_exactly_the_served_routes(app: Flask, client: ApiClient) -> None:
    response = client.get(f"{BASE}/metadata", auth=False)
    assert response.status_code == 200
    statement = response.get_json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert _statement_items(statement) == _route_items(app)
    types = {r["type"] for r in statement["rest"][0]["resource"]}
    assert types == {"Observation", "Patient", "Consent", "AuditEvent", "CarePlan", "Goal"}
    operations = {op for _, op in _statement_items(statement) if op.startswith("$")}
    assert {
        "$lastn",
        "$export",
        "$checkpoint",
        "$inclusion-proof",
        "$consistency-proof",
        "$access-log",
        "$match",
        "$evaluate",
    } <= (operations)


def test_capability_statement_search_parameters_come_from_the_registries(client: ApiClient) -> None:
    statement = client.get(f"{BASE}/metadata", auth=False).get_json()
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    observation = by_type["Observation"]
    assert observation["versioning"] == "versioned-update"
    assert observation["updateCreate"] is False
    declared = {p["name"] for p in observation["searchParam"]}
    assert declared == {p.name for p in search_params("Observation", SEARCH_REGISTRY)}
    assert declared <= set(search.SUPPORTED)
    registry = {p.name for p in search.SEARCH_PARAMETERS["Observation"]}
    assert registry | {r.name for r in search.RESULT_PARAMETERS["Observation"]} <= declared
    date = next(p for p in observation["searchParam"] if p["name"] == "date")
    for prefix in search.DATE_PREFIXES:
        assert prefix in date["documentation"]
    code = next(p for p in observation["searchParam"] if p["name"] == "code")
    assert ":not" in code["documentation"]
    for name in RESOURCES:
        assert {p["name"] for p in by_type[name].get("searchParam", ())} == {
            p.name for p in search_params(name, SEARCH_REGISTRY)
        }
    audit_names = {p["name"] for p in by_type["AuditEvent"]["searchParam"]}
    assert {p.name for p in AUDIT_EVENT_SEARCH} <= audit_names


def test_capability_statement_security_names_the_token_endpoint_and_dpop(
    client: ApiClient, app: Flask
) -> None:
    statement = client.get(f"{BASE}/metadata", auth=False).get_json()
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "OAuth"
    [uris] = security["extension"]
    token = {e["url"]: e["valueUri"] for e in uris["extension"]}["token"]
    assert token == client.issuer + TOKEN_PATH
    assert client.flask.post(TOKEN_PATH, data={}).status_code in (400, 401)
    assert "DPoP" in security["description"]


def test_refused_search_features_are_said_and_refused(client: ApiClient) -> None:
    """The statement lists the unsupported prefixes; a search using one gets 400 naming the parameter."""
    from sharing_api.fhir.capabilities import REFUSED_DATE_PREFIXES

    statement = client.get(f"{BASE}/metadata", auth=False).get_json()
    documentation = statement["rest"][0]["documentation"]
    patient = "01017012345"
    for prefix in REFUSED_DATE_PREFIXES:
        assert prefix in documentation
        response = client.post(
            f"{BASE}/Observation/_search",
            data={"patient.identifier": f"urn:oid:2.16.578.1.12.4.1.4.1|{patient}", "date": f"{prefix}2025"},
        )
        assert response.status_code == 400, prefix
        assert response.get_json()["issue"][0]["expression"] == ["date"]


def test_openapi_document_is_valid_and_covers_every_route(app: Flask, client: ApiClient) -> None:
    response = client.flask.get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises when the document is not valid OpenAPI 3.1
    described = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert described == {(method, openapi_path(rule)) for method, rule, _ in served(app)}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            endpoint = next(e for m, r, e in served(app) if m == method.upper() and openapi_path(r) == path)
            if endpoint in RULES:
                assert operation["security"] == [{"dpop": [], "oauth2": [RULES[endpoint][0]]}]
    assert len(ENDPOINTS) == len(DECLARED)


def test_refused_modifiers_are_said_and_refused(client: ApiClient) -> None:
    from sharing_api.fhir.capabilities import REFUSED_MODIFIERS

    statement = client.get(f"{BASE}/metadata", auth=False).get_json()
    documentation = statement["rest"][0]["documentation"]
    patient = "01017012345"
    for modifier in REFUSED_MODIFIERS:
        assert modifier in documentation
        response = client.post(
            f"{BASE}/Observation/_search",
            data={
                "patient.identifier": f"urn:oid:2.16.578.1.12.4.1.4.1|{patient}",
                f"code{modifier}": "8867-4",
            },
        )
        assert response.status_code == 400, modifier
        assert response.get_json()["issue"][0]["expression"] == [f"code{modifier}"]
