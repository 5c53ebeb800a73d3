"""What the FHIR API offers, declared once: one :class:`Endpoint` per route under ``/{orgnr}/fhir``.

The CapabilityStatement (FHIR R4 §2.38 "CapabilityStatement") and the OpenAPI 3.1 document are both
generated from :data:`ENDPOINTS`, :data:`RESOURCES` and the routes the app actually serves (the Flask
route map, passed in as plain ``(method, rule, endpoint)`` triples), so neither can drift from the code:
a test fails when a served route has no declaration here or a declaration has no route.

Adding a route means adding one :class:`Endpoint` (keyed by its Flask endpoint name); adding a search
parameter means adding one :class:`SearchParam` to its resource (Observation's come from the search
parser's own registry in :mod:`sharing_api.fhir.search`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sharing_api.fhir import search

Body = Literal["resource", "bundle", "form", "none"]
Answer = Literal["fhir", "json", "ndjson"]

FHIR_VERSION = "4.0.1"
FHIR_JSON = "application/fhir+json"
VKP_PROFILE = "http://hl7.no/fhir/vkpobservation/StructureDefinition/vkp-Observation"
OPERATIONS = "urn:dho-share:OperationDefinition:"
"""Canonical prefix of this project's own operations (those with no HL7 definition)."""

REFUSED_DATE_PREFIXES = tuple(p for p in search.FHIR_DATE_PREFIXES if p not in search.DATE_PREFIXES)
"""FHIR R4 date prefixes this server does not implement; a search using one gets 400 naming it."""
REFUSED_MODIFIERS = tuple(
    f":{m}"
    for m in search.FHIR_MODIFIERS
    if not any(m in p.modifiers for params in search.SEARCH_PARAMETERS.values() for p in params)
)
"""Modifiers no parameter here implements (the search registry refuses them: 400 naming the parameter)."""


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter: its FHIR ``SearchParamType``, what it accepts and what it refuses."""

    name: str
    type: str
    documentation: str = ""
    form_only: bool = False
    """Only in a form body (``POST _search``): it carries a personal identifier, which never goes in a URL."""


@dataclass(frozen=True, slots=True)
class Operation:
    """A FHIR operation (``$name``) and its OperationDefinition canonical."""

    name: str
    definition: str
    documentation: str


@dataclass(frozen=True, slots=True)
class Query:
    """A plain query parameter of an endpoint (an operation's input, or a paging cursor)."""

    name: str
    type: Literal["string", "integer"] = "string"
    required: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route's contract: the FHIR interaction(s) or operation it implements and its wire shapes."""

    endpoint: str
    """The Flask endpoint name (``blueprint.function``)."""
    summary: str
    resource: str | None = None
    """The resource type it serves; ``None`` for system-level interactions (Bundles, metadata)."""
    interactions: tuple[str, ...] = ()
    """FHIR ``TypeRestfulInteraction``/``SystemRestfulInteraction`` codes."""
    operation: Operation | None = None
    search: bool = False
    """Takes the resource's search parameters (in the query, or in the form body for ``POST``)."""
    query: tuple[Query, ...] = ()
    body: Body = "none"
    answer: Answer = "fhir"
    ok: int = 200
    public: bool = False
    headers: tuple[str, ...] = ()
    """Request headers it honours (documented in OpenAPI)."""


@dataclass(frozen=True, slots=True)
class Resource:
    """What the server says about one resource type beyond its endpoints."""

    type: str
    profiles: tuple[str, ...] = ()
    versioning: str = "versioned-update"
    conditional_create: bool = False
    documentation: str = ""


_TOKEN = "token"  # noqa: S105 (the FHIR search-parameter type, not a secret)
_RESULT_TYPES = {"_count": "number", "_sort": "string", "_elements": "string"}


def _documented(p: search.SearchParameter) -> SearchParam:
    """A registry parameter, with what it applies and what it refuses in its documentation."""
    said = [p.documentation]
    if p.modifiers:
        said.append("modifiers " + ", ".join(f":{m}" for m in p.modifiers))
    if p.chains:
        said.append("chains " + ", ".join(f".{c}" for c in p.chains))
    if p.prefixes:
        refused = [x for x in search.FHIR_DATE_PREFIXES if x not in p.prefixes]
        said.append(
            f"prefixes {', '.join(p.prefixes)}" + (f"; refused: {', '.join(refused)}" if refused else "")
        )
    said.append("any other modifier is refused (400)")
    return SearchParam(p.name, p.type, "; ".join(said))


Registry = Mapping[str, Sequence[search.SearchParameter]]


def search_params(resource: str, registry: Registry) -> tuple[SearchParam, ...]:
    """``resource``'s parameters: the search registry's (:data:`search.SEARCH_PARAMETERS`, plus those
    the route layer adds, e.g. AuditEvent's), then its result parameters
    (:data:`search.RESULT_PARAMETERS`) and ``_format`` (JSON only)."""
    params = [_documented(p) for p in registry.get(resource, ())]
    results = search.RESULT_PARAMETERS.get(resource, ())
    params += [
        SearchParam(
            r.name,
            _RESULT_TYPES.get(r.name, _TOKEN),
            r.documentation + (f": {', '.join(r.values)}" if r.values else ""),
        )
        for r in results
    ]
    if results:
        params.append(SearchParam("_format", _TOKEN, "json or application/fhir+json only; others get 406"))
    return tuple(params)


RESOURCES: Mapping[str, Resource] = {
    "Observation": Resource(
        "Observation",
        profiles=(VKP_PROFILE,),
        conditional_create=True,
        documentation="VkpObservation measurements; corrections are new versions (If-Match).",
    ),
    "Patient": Resource(
        "Patient",
        versioning="no-version",
        documentation=(
            "Only as the answer of Patient/$match or Patient/_search: an opaque id bound to the requester, "
            "the attestation and the tenant, to search Observations by GET (subject=Patient/<id>)."
        ),
    ),
    "Consent": Resource(
        "Consent",
        documentation="The patient's directives: reservations, blocks, explicit consent.",
    ),
    "CarePlan": Resource(
        "CarePlan",
        documentation=(
            "Treatment and self-treatment plans (DBEP): measurement activities from the project value set "
            "urn:dho-share:ValueSet:careplan-activity; updates need If-Match (428 without, 412 stale); each "
            "version records its author in meta.extension urn:dho-share:StructureDefinition/version-author."
        ),
    ),
    "Goal": Resource(
        "Goal",
        documentation=(
            "A plan's thresholds: Goal.target with a measure of the vital-sign registry and a UCUM "
            "detailQuantity (with comparator) or detailRange; versioned like CarePlan."
        ),
    ),
    "AuditEvent": Resource(
        "AuditEvent",
        versioning="no-version",
        documentation="The tenant's tamper-evident audit log (IHE BALP, HL7 Norway trust framework).",
    ),
}

_CURSOR = Query("_cursor", description="an opaque paging cursor from a Bundle link, used alone")
_PREFER = ("Prefer",)
_WRITE_HEADERS = ("Prefer", "If-Match")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("fhir.metadata", "the CapabilityStatement", public=True),
    Endpoint(
        "fhir.bundle",
        "a batch or transaction Bundle of Observations",
        interactions=("batch", "transaction"),
        body="bundle",
    ),
    Endpoint(
        "fhir.create",
        "publish an Observation (idempotent by business identifier)",
        "Observation",
        ("create",),
        body="resource",
        ok=201,
        headers=("Prefer", "If-None-Exist"),
    ),
    Endpoint("fhir.read", "read an Observation", "Observation", ("read",), headers=("If-None-Match",)),
    Endpoint(
        "fhir.update",
        "correct an Observation (a new version)",
        "Observation",
        ("update",),
        body="resource",
        headers=_WRITE_HEADERS,
    ),
    Endpoint("fhir.history", "the versions of an Observation", "Observation", ("history-instance",)),
    Endpoint("fhir.vread", "one version of an Observation", "Observation", ("vread",)),
    Endpoint(
        "fhir.search_get",
        "search Observations (no personal identifiers in the URL), or page with a cursor",
        "Observation",
        ("search-type",),
        search=True,
        query=(_CURSOR,),
        headers=_PREFER,
    ),
    Endpoint(
        "fhir.search_post",
        "search Observations with a form body",
        "Observation",
        ("search-type",),
        search=True,
        body="form",
        headers=_PREFER,
    ),
    Endpoint(
        "fhir.lastn",
        "the most recent Observations per code",
        "Observation",
        operation=Operation(
            "lastn",
            "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
            "max: how many per code (default 1); GET without personal identifiers, or POST a form",
        ),
        search=True,
        query=(Query("max", "integer", description="how many per code"),),
        body="form",
        headers=_PREFER,
    ),
    Endpoint(
        "fhir.patient_match",
        "an opaque Patient id for an identifier (Parameters body with a Patient)",
        "Patient",
        operation=Operation(
            "match",
            "http://hl7.org/fhir/OperationDefinition/Patient-match",
            "resource: a Patient with one identifier (FNR/DNR/FHN); answers a searchset with one Patient",
        ),
        body="resource",
    ),
    Endpoint(
        "fhir.patient_search",
        "an opaque Patient id for identifier=system|value (form body)",
        "Patient",
        ("search-type",),
        search=True,
        body="form",
    ),
    Endpoint("fhir.patient_read", "the Patient of a $match binding", "Patient", ("read",)),
    Endpoint("fhir.consent_create", "record a directive", "Consent", ("create",), body="resource", ok=201),
    Endpoint("fhir.consent_read", "read a directive", "Consent", ("read",)),
    Endpoint("fhir.consent_update", "change a directive", "Consent", ("update",), body="resource"),
    Endpoint("fhir.consent_revoke", "revoke a directive (it becomes inactive)", "Consent", ("delete",)),
    Endpoint(
        "fhir.consent_search", "the directives of one patient", "Consent", ("search-type",), search=True
    ),
    *(
        endpoint
        for kind in ("CarePlan", "Goal")
        for endpoint in (
            Endpoint(
                f"fhir.{kind.lower()}_create",
                f"create a {kind} (the attestation names its patient)",
                kind,
                ("create",),
                body="resource",
                ok=201,
            ),
            Endpoint(f"fhir.{kind.lower()}_read", f"read a {kind}", kind, ("read",)),
            Endpoint(
                f"fhir.{kind.lower()}_update",
                f"change a {kind}: a new version; If-Match required (428 without, 412 when stale)",
                kind,
                ("update",),
                body="resource",
                headers=("If-Match",),
            ),
            Endpoint(
                f"fhir.{kind.lower()}_history", f"the versions of a {kind}", kind, ("history-instance",)
            ),
            Endpoint(f"fhir.{kind.lower()}_vread", f"one version of a {kind}", kind, ("vread",)),
        )
    ),
    Endpoint(
        "fhir.careplan_search",
        "the plans of one patient (patient.identifier in the form body), by status, category, date",
        "CarePlan",
        ("search-type",),
        search=True,
        body="form",
    ),
    Endpoint(
        "fhir.evaluate",
        "the patient's latest measurements against the active plan's thresholds",
        "Observation",
        operation=Operation(
            "evaluate",
            OPERATIONS + "Observation-evaluate",
            "patient.identifier=system|value (form body); a Parameters resource with one evaluation per "
            "threshold: within, outside or no-data, the latest value and since when; needs observation.read "
            "and careplan.read",
        ),
        body="form",
    ),
    Endpoint(
        "fhir.audit_search_get",
        "search the audit log, or page with a cursor",
        "AuditEvent",
        ("search-type",),
        search=True,
        query=(_CURSOR,),
    ),
    Endpoint(
        "fhir.audit_search_post",
        "search the audit log with a form body",
        "AuditEvent",
        ("search-type",),
        search=True,
        body="form",
    ),
    Endpoint("fhir.audit_read", "one AuditEvent by the id a search gave it", "AuditEvent", ("read",)),
    Endpoint(
        "fhir.audit_export",
        "export the audit log",
        "AuditEvent",
        operation=Operation(
            "export",
            OPERATIONS + "AuditEvent-export",
            "NDJSON of entries with signed checkpoints and the compact range (from, to)",
        ),
        query=(Query("from", "integer"), Query("to", "integer")),
        answer="ndjson",
    ),
    Endpoint(
        "fhir.audit_checkpoint",
        "a signed checkpoint of the audit log",
        "AuditEvent",
        operation=Operation(
            "checkpoint", OPERATIONS + "AuditEvent-checkpoint", "the signed tree head (RFC 9162 §4.10)"
        ),
        answer="json",
    ),
    Endpoint(
        "fhir.audit_inclusion",
        "an RFC 9162 inclusion proof",
        "AuditEvent",
        operation=Operation(
            "inclusion-proof", OPERATIONS + "AuditEvent-inclusion-proof", "index, size (RFC 9162 §2.1.3)"
        ),
        query=(Query("index", "integer", True), Query("size", "integer", True)),
        answer="json",
    ),
    Endpoint(
        "fhir.audit_consistency",
        "an RFC 9162 consistency proof",
        "AuditEvent",
        operation=Operation(
            "consistency-proof", OPERATIONS + "AuditEvent-consistency-proof", "old, new (RFC 9162 §2.1.4)"
        ),
        query=(Query("old", "integer", True), Query("new", "integer", True)),
        answer="json",
    ),
    Endpoint(
        "fhir.access_log",
        "the patient's own access log",
        "AuditEvent",
        operation=Operation(
            "access-log", OPERATIONS + "AuditEvent-access-log", "who looked, from where, when and why"
        ),
        answer="json",
    ),
)
DECLARED: Mapping[str, Endpoint] = {e.endpoint: e for e in ENDPOINTS}


@dataclass(frozen=True, slots=True)
class Route:
    """A served route: HTTP method, Werkzeug rule (``/<orgnr>/fhir/...``) and its endpoint name."""

    method: str
    rule: str
    endpoint: str
    declaration: Endpoint = field(compare=False)


def served(routes: Iterable[tuple[str, str, str]]) -> list[Route]:
    """The served routes that have a declaration, in declaration order (undeclared ones are the
    route-map test's business: it fails on them)."""
    found = [Route(m, r, e, DECLARED[e]) for m, r, e in routes if e in DECLARED]
    order = {e.endpoint: i for i, e in enumerate(ENDPOINTS)}
    return sorted(found, key=lambda r: (order[r.endpoint], r.rule, r.method))


def capability_statement(
    routes: Iterable[tuple[str, str, str]],
    *,
    base: str,
    token_url: str,
    software_version: str,
    registry: Registry = search.SEARCH_PARAMETERS,
) -> dict[str, Any]:
    """The CapabilityStatement for ``routes`` (FHIR R4 CapabilityStatement, kind ``instance``) with the
    search parameters of ``registry``."""
    present = served(routes)
    resources: list[dict[str, Any]] = []
    for kind, info in RESOURCES.items():
        mine = [r.declaration for r in present if r.declaration.resource == kind]
        if not mine:
            continue
        interactions = sorted({i for d in mine for i in d.interactions})
        entry: dict[str, Any] = {"type": kind}
        if info.profiles:
            entry["supportedProfile"] = list(info.profiles)
        if info.documentation:
            entry["documentation"] = info.documentation
        entry["interaction"] = [{"code": c} for c in interactions]
        entry["versioning"] = info.versioning
        if info.versioning != "no-version":
            entry["readHistory"] = "vread" in interactions
        if "update" in interactions:
            entry["updateCreate"] = False
        if "create" in interactions:
            entry["conditionalCreate"] = info.conditional_create
        params = search_params(kind, registry)
        if any(d.search for d in mine) and params:
            entry["searchParam"] = [
                {
                    "name": p.name,
                    "type": p.type,
                    **({"documentation": p.documentation} if p.documentation else {}),
                }
                for p in params
            ]
        operations = {d.operation.name: d.operation for d in mine if d.operation is not None}
        if operations:
            entry["operation"] = [
                {"name": o.name, "definition": o.definition, "documentation": o.documentation}
                for o in operations.values()
            ]
        resources.append(entry)
    system = sorted(
        {i for r in present if r.declaration.resource is None for i in r.declaration.interactions}
    )
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": (
            f"Not supported, and refused with 400 naming the parameter: the date prefixes "
            f"{', '.join(REFUSED_DATE_PREFIXES)} and the modifiers {', '.join(REFUSED_MODIFIERS)} (and "
            "any modifier a parameter does not list). "
            "Only JSON is served (_format or Accept asking for anything else: 406; fhirVersion other than "
            "4.0: 406)."
        ),
        "security": {
            "cors": False,
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "OAuth",
                        }
                    ],
                    "text": "OAuth 2.0 client credentials with private_key_jwt and DPoP (RFC 9449)",
                }
            ],
            "extension": [
                {
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": token_url}],
                }
            ],
            "description": (
                "Access tokens are DPoP-bound (RFC 9449): send `Authorization: DPoP <token>` and a "
                f"`DPoP` proof for each request. Tokens come from {token_url} (client_credentials, "
                "private_key_jwt per RFC 7523, a DPoP proof; reads carry the trust-framework attestation)."
            ),
        },
        "resource": resources,
    }
    if system:
        rest["interaction"] = [{"code": c} for c in system]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-02",
        "publisher": "dho-share",
        "kind": "instance",
        "software": {"name": "dho-share", "version": software_version},
        "implementation": {"description": "DHO measurement sharing API", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json", FHIR_JSON],
        "rest": [rest],
    }


_PARAM = re.compile(r"<(?:[a-z]+:)?([A-Za-z_]+)>")


def openapi_path(rule: str) -> str:
    """``/<orgnr>/fhir/Observation/<int:version_id>`` -> ``/{orgnr}/fhir/Observation/{version_id}``."""
    return _PARAM.sub(r"{\1}", rule)


_FHIR_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string"}},
}
_OUTCOME = {"$ref": "#/components/schemas/OperationOutcome"}
_ANSWERS: dict[str, tuple[str, dict[str, Any]]] = {
    "fhir": (FHIR_JSON, {"$ref": "#/components/schemas/Resource"}),
    "json": ("application/json", {"type": "object"}),
    "ndjson": ("application/x-ndjson", {"type": "string"}),
}


def _parameters(route: Route, registry: Registry) -> list[dict[str, Any]]:
    d = route.declaration
    out: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "integer" if kind else "string"}}
        for kind, name in re.findall(r"<(int:)?([A-Za-z_]+)>", route.rule)
    ]
    if route.method == "GET" and d.search and d.resource is not None:
        out += [
            {"name": p.name, "in": "query", "required": False, "schema": {"type": "string"}}
            for p in search_params(d.resource, registry)
            if not p.form_only
        ]
    if route.method == "GET":
        out += [
            {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "schema": {"type": q.type},
                **({"description": q.description} if q.description else {}),
            }
            for q in d.query
        ]
    out += [
        {"name": h, "in": "header", "required": False, "schema": {"type": "string"}}
        for h in d.headers
        if not (h == "If-Match" and route.method != "PUT")
    ]
    return out


def _request_body(route: Route, registry: Registry) -> dict[str, Any] | None:
    d = route.declaration
    if route.method not in ("POST", "PUT") or d.body == "none":
        return None
    if d.body == "form":
        params = search_params(d.resource, registry) if d.resource is not None else ()
        names = sorted({p.name for p in params})
        props = {n: {"type": "string"} for n in names} | {q.name: {"type": "string"} for q in d.query}
        schema: dict[str, Any] = {"type": "object", "properties": props}
        return {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}
    ref = "#/components/schemas/Bundle" if d.body == "bundle" else "#/components/schemas/Resource"
    return {"required": True, "content": {FHIR_JSON: {"schema": {"$ref": ref}}}}


def openapi_document(
    routes: Iterable[tuple[str, str, str]],
    *,
    server: str,
    token_url: str,
    scopes: Mapping[str, str],
    software_version: str,
    registry: Registry = search.SEARCH_PARAMETERS,
) -> dict[str, Any]:
    """An OpenAPI 3.1 document of the FHIR routes in ``routes``; ``scopes`` maps endpoint -> scope."""
    paths: dict[str, dict[str, Any]] = {}
    for route in served(routes):
        d = route.declaration
        media, schema = _ANSWERS[d.answer]
        operation: dict[str, Any] = {
            "operationId": f"{d.endpoint.split('.', 1)[1]}_{route.method.lower()}",
            "summary": d.summary,
            "parameters": _parameters(route, registry),
            "responses": {
                str(d.ok): {"description": "success", "content": {media: {"schema": schema}}},
                "default": {
                    "description": "an error, as an OperationOutcome",
                    "content": {FHIR_JSON: {"schema": _OUTCOME}},
                },
            },
        }
        if d.resource is not None:
            operation["tags"] = [d.resource]
        if route.method == "GET" and "read" in d.interactions:
            operation["responses"]["304"] = {"description": "not modified (If-None-Match)"}
        body = _request_body(route, registry)
        if body is not None:
            operation["requestBody"] = body
        if d.public:
            operation["security"] = []
        else:
            scope = scopes.get(d.endpoint)
            operation["security"] = [{"dpop": [], "oauth2": [scope] if scope else []}]
        paths.setdefault(openapi_path(route.rule), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dho-share FHIR API",
            "version": software_version,
            "description": "Generated from the route map and sharing_api/fhir/capabilities.py.",
        },
        "servers": [{"url": server}],
        "paths": paths,
        "components": {
            "schemas": {
                "Resource": _FHIR_OBJECT,
                "Bundle": {
                    "type": "object",
                    "required": ["resourceType", "type"],
                    "properties": {
                        "resourceType": {"const": "Bundle"},
                        "type": {"type": "string"},
                        "entry": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "OperationOutcome": {
                    "type": "object",
                    "required": ["resourceType", "issue"],
                    "properties": {
                        "resourceType": {"const": "OperationOutcome"},
                        "issue": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                    },
                },
            },
            "securitySchemes": {
                "dpop": {
                    "type": "http",
                    "scheme": "DPoP",
                    "description": "a DPoP-bound access token plus a DPoP proof header (RFC 9449)",
                },
                "oauth2": {
                    "type": "oauth2",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": token_url,
                            "scopes": {s: s for s in sorted(set(scopes.values()))},
                        }
                    },
                },
            },
        },
    }
