"""``/{orgnr}/fhir/CarePlan`` and ``/Goal``: treatment and self-treatment plans (DBEP, issue 11), and
``Observation/$evaluate``: the patient's latest measurements against the active plan's thresholds.

Who may do what (docs/careplans.md): every request carries an attestation naming the one patient, as a
measurement read does, and the sharing decision is taken for data category ``plan``
(``consent.policy.decide``): reads need ``dho-share/careplan.read`` and an agreement sharing ``plan``
(or the controller's own organisation); changes need ``dho-share/careplan.write`` and, from another
organisation, an agreement that lets it write ``plan``. Reservations, blocks, consent and emergency
rules apply unchanged. A denial about the patient looks like "no such data" (404, or an empty search);
every read and write is audited (a write in the same transaction as the data).

Updates are ``PUT`` with ``If-Match`` required: without it 428, with a stale version 412 naming the
current one (``sharing_api.store.careplans``: compare-and-set on the version).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from flask import Response, request
from sqlalchemy import Connection

from auth.errors import InsufficientScope
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.careplans.evaluation import Result, active_targets, assess, evaluation_parameters
from sharing_api.careplans.thresholds import Target
from sharing_api.careplans.validation import VALIDATORS
from sharing_api.errors import Forbidden, InvalidResource, InvalidSearch, NotFound, PreconditionRequired
from sharing_api.fhir import vitals
from sharing_api.fhir.bundles import history_entry
from sharing_api.fhir.dates import format_instant
from sharing_api.fhir.search import (
    PATIENT_PARAMS,
    SEARCH_PARAMETERS,
    Token,
    check_limits,
    parse_date_bound,
    parse_search,
    refuse_modifier,
    refuse_pii_in_url,
    whole_number,
)
from sharing_api.fhir.validation import refuse_server_labels
from sharing_api.routes.common import (
    audit,
    caller,
    fhir_response,
    json_body,
    require_id_of_url,
    services,
    tenant,
    tenant_base,
)
from sharing_api.routes.guard import PLAN_READ, refused
from sharing_api.routes.observations import attested_patient, bp, decide_access, if_match
from sharing_api.searching import searchset
from sharing_api.store.careplans import Author, PlanQuery, StoredPlan
from sharing_api.store.observations import ReadScope

PLAN = frozenset({"plan"})
"""The data category of plans in sharing agreements (``dho-share agreements add --category plan``)."""
ACTIONS = {
    "CarePlan": {
        "create": AuditAction.CAREPLAN_CREATE,
        "update": AuditAction.CAREPLAN_UPDATE,
        "read": AuditAction.CAREPLAN_READ,
        "history": AuditAction.CAREPLAN_HISTORY,
    },
    "Goal": {
        "create": AuditAction.GOAL_CREATE,
        "update": AuditAction.GOAL_UPDATE,
        "read": AuditAction.GOAL_READ,
        "history": AuditAction.GOAL_HISTORY,
    },
}


def _author() -> Author:
    who = caller()
    return Author(who.organisation, who.practitioner_hpr, who.client_id)


def _headers(stored: StoredPlan, *, location: bool = False) -> dict[str, str]:
    headers = {"ETag": f'W/"{stored.version_id}"', "Last-Modified": format_instant(stored.last_updated)}
    if location:
        headers["Location"] = (
            f"{tenant_base()}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
        )
    return headers


def _audited(action: AuditAction) -> Callable[[Connection, StoredPlan], None]:
    def record(conn: Connection, stored: StoredPlan) -> None:
        audit(
            action,
            patient=stored.patient,
            resources=[f"{stored.resource_type}/{stored.id}/_history/{stored.version_id}"],
            conn=conn,
        )

    return record


def _permitted(patient: tuple[str, str], *, write: bool) -> bool:
    """The sharing decision for ``plan`` (403 when it concerns only the organisations); ``False`` when
    it denies for a reason about the patient, which the caller must answer like "no such data"."""
    scope = decide_access(patient, categories=PLAN, write=write)
    return not scope.nothing


def _denied(action: AuditAction, patient: tuple[str, str], missing: NotFound) -> NotFound:
    """Record the refused attempt (the block or reservation it hit is in the decision), then answer as
    for a resource that does not exist."""
    audit(action, patient=patient, outcome=Outcome.MINOR_FAILURE)
    return missing


def _valid_body(kind: str) -> Any:
    body = json_body()
    refuse_server_labels(body, kind)
    return VALIDATORS[kind](body)


def _create(kind: str) -> Response:
    patient = attested_patient()
    valid = _valid_body(kind)
    if valid.patient != patient:
        raise Forbidden(
            "the attestation is for another patient than the one in the resource", f"{kind}.subject"
        )
    if not _permitted(patient, write=True):
        # A reason about the patient (a block, a reservation): the answer for a patient not known here.
        missing = NotFound(f"no patient with this identifier is known here ({kind})", f"{kind}.subject")
        raise _denied(ACTIONS[kind]["create"], patient, missing)
    stored = services().plans.create(tenant().orgnr, valid, _author(), _audited(ACTIONS[kind]["create"]))
    return fhir_response(stored.data, 201, _headers(stored, location=True))


def _update(kind: str, resource_id: str) -> Response:
    patient = attested_patient()
    missing = NotFound(f"{kind}/{resource_id} is not known", f"{kind}.id")
    if not _permitted(patient, write=True):
        raise _denied(ACTIONS[kind]["update"], patient, missing)
    expected = if_match()
    body = json_body()
    refuse_server_labels(body, kind)
    require_id_of_url(body, resource_id, kind)
    current = services().plans.read(tenant().orgnr, kind, resource_id)
    if current is None or current.patient != patient:
        raise missing
    if expected is None:
        raise PreconditionRequired(
            f"an update of a {kind} must say which version it changes: If-Match: "
            f'W/"<versionId>" (the current one is {current.version_id})',
            "If-Match",
        )
    valid = VALIDATORS[kind](body)
    stored = services().plans.update(
        tenant().orgnr,
        resource_id,
        valid,
        expected=expected,
        author=_author(),
        audit=_audited(ACTIONS[kind]["update"]),
    )
    return fhir_response(stored.data, 200, _headers(stored, location=True))


def _readable(kind: str, resource_id: str) -> StoredPlan:
    """The resource if it is the attested patient's and the decision lets it be seen; otherwise the
    answer for a missing one. The decision comes before the lookup (AZ-02, AZ-09)."""
    patient = attested_patient()
    missing = NotFound(f"{kind}/{resource_id} is not known", f"{kind}.id")
    if not _permitted(patient, write=False):
        raise _denied(ACTIONS[kind]["read"], patient, missing)
    stored = services().plans.read(tenant().orgnr, kind, resource_id)
    if stored is None or stored.patient != patient:
        raise missing
    return stored


def _read(kind: str, resource_id: str) -> Response:
    stored = _readable(kind, resource_id)
    audit(ACTIONS[kind]["read"], patient=stored.patient, resources=[f"{kind}/{resource_id}"])
    return fhir_response(stored.data, headers=_headers(stored))


def _history(kind: str, resource_id: str) -> Response:
    current = _readable(kind, resource_id)
    versions = services().plans.history(tenant().orgnr, kind, resource_id)
    base = tenant_base()
    entries = [
        history_entry(base, v.id, v.version_id, format_instant(v.last_updated), kind)
        + b',"resource":'
        + v.data
        + b"}"
        for v in versions
    ]
    audit(
        ACTIONS[kind]["history"],
        patient=current.patient,
        resources=[f"{kind}/{resource_id}/_history/{v.version_id}" for v in versions],
    )
    head = b'{"resourceType":"Bundle","type":"history","total":' + str(len(versions)).encode()
    return fhir_response(head + b',"entry":[' + b",".join(entries) + b"]}")


def _vread(kind: str, resource_id: str, version_id: int) -> Response:
    current = _readable(kind, resource_id)
    stored = services().plans.version(tenant().orgnr, kind, resource_id, version_id)
    if stored is None:
        raise NotFound(f"{kind}/{resource_id}/_history/{version_id} is not known", f"{kind}.meta.versionId")
    audit(
        ACTIONS[kind]["read"],
        patient=current.patient,
        resources=[f"{kind}/{resource_id}/_history/{version_id}"],
    )
    return fhir_response(stored.data, headers=_headers(stored))


@bp.post("/CarePlan")
def careplan_create() -> Response:
    return _create("CarePlan")


@bp.put("/CarePlan/<plan_id>")
def careplan_update(plan_id: str) -> Response:
    return _update("CarePlan", plan_id)


@bp.get("/CarePlan/<plan_id>")
def careplan_read(plan_id: str) -> Response:
    return _read("CarePlan", plan_id)


@bp.get("/CarePlan/<plan_id>/_history")
def careplan_history(plan_id: str) -> Response:
    return _history("CarePlan", plan_id)


@bp.get("/CarePlan/<plan_id>/_history/<int:version_id>")
def careplan_vread(plan_id: str, version_id: int) -> Response:
    return _vread("CarePlan", plan_id, version_id)


@bp.post("/Goal")
def goal_create() -> Response:
    return _create("Goal")


@bp.put("/Goal/<goal_id>")
def goal_update(goal_id: str) -> Response:
    return _update("Goal", goal_id)


@bp.get("/Goal/<goal_id>")
def goal_read(goal_id: str) -> Response:
    return _read("Goal", goal_id)


@bp.get("/Goal/<goal_id>/_history")
def goal_history(goal_id: str) -> Response:
    return _history("Goal", goal_id)


@bp.get("/Goal/<goal_id>/_history/<int:version_id>")
def goal_vread(goal_id: str, version_id: int) -> Response:
    return _vread("Goal", goal_id, version_id)


def _patient_form(params: list[tuple[str, str]], resource: str) -> tuple[str, str]:
    """The one patient a form names (``patient.identifier=system|value``); it must be the attested one."""
    attested = attested_patient()
    named = [Token.parse(v, n) for n, raw in params if n in PATIENT_PARAMS for v in raw.split(",")]
    if len(named) != 1 or named[0].code is None:
        raise Forbidden(
            f"{resource}: one patient at a time, as patient.identifier=system|value in the form body",
            "patient.identifier",
        )
    if named[0].code != attested[1] or named[0].system not in (None, attested[0]):
        raise Forbidden("the attestation is for another patient than the one searched", "patient.identifier")
    return attested


def parse_plan_search(params: list[tuple[str, str]], patient: tuple[str, str]) -> PlanQuery:
    """The CarePlan search parameters (``SEARCH_PARAMETERS["CarePlan"]``); anything else is refused
    with 400 naming it: a plan search that silently ignored ``status`` could show a revoked plan as
    the plan in force."""
    supported = SEARCH_PARAMETERS["CarePlan"]
    statuses: list[tuple[str, ...]] = []
    categories: list[tuple[Token, ...]] = []
    dates = []
    for name, raw in params:
        if name in PATIENT_PARAMS:
            continue
        refuse_modifier("CarePlan", name, supported)
        if name == "status":
            statuses.append(tuple(raw.split(",")))
        elif name == "category":
            categories.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "date":
            dates.append(parse_date_bound(name, raw))
        elif name == "_count":
            whole_number(name, raw)
        elif name != "_format":
            raise InvalidSearch(f"unknown CarePlan search parameter {name!r}", name)
    return PlanQuery(patient, tuple(statuses), tuple(categories), tuple(dates))


@bp.post("/CarePlan/_search")
def careplan_search() -> Response:
    refuse_pii_in_url(list(request.args.items(multi=True)))
    params = list(request.form.items(multi=True))
    check_limits(params, services().settings.search_limits())
    patient = _patient_form(params, "CarePlan")
    query = parse_plan_search(params, patient)
    found = (
        services().plans.search(tenant().orgnr, query, services().settings.max_page_size)
        if _permitted(patient, write=False)
        else []
    )
    audit(
        AuditAction.CAREPLAN_SEARCH,
        patient=patient,
        resources=[f"CarePlan/{s.id}" for s in found],
        with_body=True,
    )
    return fhir_response(
        searchset(
            tenant_base(), [s.data for s in found], total=len(found), links=[], resource_type="CarePlan"
        )
    )


MAX_SERIES = 500
"""Measurements read per threshold for "since when": the run cannot be traced further back."""


def _series(patient: tuple[str, str], target: Target, scope: ReadScope) -> list[dict[str, Any]]:
    """The patient's measurements of ``target``'s measure, newest first, inside the sharing decision."""
    found = vitals.measure_ranges(target.measure)
    codes = found[0].codes if found else frozenset({target.measure})
    params = [
        ("patient.identifier", f"{patient[0]}|{patient[1]}"),
        ("code", ",".join(f"{s}|{c}" for s, c in sorted(codes))),
        ("_sort", "-date"),
        ("_count", str(MAX_SERIES)),
    ]
    query = parse_search(params, strict=True, default_count=MAX_SERIES, max_count=MAX_SERIES)
    page = services().observations.search(tenant().orgnr, query, scope=scope)
    return [orjson.loads(data) for _, _, data, _ in page.rows]


@bp.post("/Observation/$evaluate")
def evaluate() -> Response:
    """The latest value of each measure the patient's active plans set thresholds for, within or
    outside, and since when (docs/careplans.md). Needs both ``observation.read`` and ``careplan.read``
    and both sharing decisions (measurements, and category ``plan``)."""
    if not caller().has_scope(PLAN_READ):
        raise refused(InsufficientScope(f"the token lacks the scope `{PLAN_READ}`", scope=PLAN_READ))
    refuse_pii_in_url(list(request.args.items(multi=True)))
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidResource(
            "POST Observation/$evaluate takes a form body: patient.identifier=system|value",
            "patient.identifier",
        )
    params = list(request.form.items(multi=True))
    check_limits(params, services().settings.search_limits())
    for name, _ in params:
        if name not in PATIENT_PARAMS and name != "_format":
            raise InvalidSearch(f"Observation/$evaluate takes only the patient, not {name!r}", name)
    patient = _patient_form(params, "Observation/$evaluate")
    scope = decide_access(patient)
    plans: list[StoredPlan] = []
    results: list[Result] = []
    # Both decisions must permit; the one recorded is the plan's when the measurements' permitted.
    if not scope.nothing and _permitted(patient, write=False):
        plans = services().plans.active_plans(tenant().orgnr, patient)
        goals = services().plans.active_goals(tenant().orgnr, patient)
        results = [
            assess(goal, target, _series(patient, target, scope)) for goal, target in active_targets(goals)
        ]
    audit(
        AuditAction.OBSERVATION_EVALUATE,
        patient=patient,
        resources=[f"CarePlan/{p.id}" for p in plans] + sorted({f"Goal/{r.target.goal_id}" for r in results}),
        with_body=True,
    )
    return fhir_response(evaluation_parameters(results, [orjson.loads(p.data) for p in plans]))
