"""``/{orgnr}/fhir``: Observation create/read/update/history, search, ``$lastn`` and Bundles."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, g, request
from sqlalchemy import Connection

from auth.attestation import require_patient_access
from auth.errors import AuthError, InvalidAuthorizationDetails
from consent.policy import Reason
from sharing_api.access import version_visible
from sharing_api.audit.actions import AuditAction
from sharing_api.errors import (
    Forbidden,
    InvalidResource,
    InvalidSearch,
    Issue,
    NotFound,
    UnsupportedMediaType,
    operation_outcome,
)
from sharing_api.fhir.body import JSON_TYPES
from sharing_api.fhir.bundles import history_entry
from sharing_api.fhir.capabilities import DECLARED
from sharing_api.fhir.dates import format_instant
from sharing_api.fhir.formats import JSON_RANGES, NDJSON_RANGES, check_content_version, negotiate
from sharing_api.fhir.search import SearchQuery, Token, check_limits, read_subsetting, refuse_pii_in_url
from sharing_api.fhir.subsetting import subset
from sharing_api.fhir.validation import ValidObservation, refuse_server_labels
from sharing_api.matching import NOBODY, MatchBinding, PatientMatches
from sharing_api.publishing import WriteAudit
from sharing_api.routes.common import (
    audit,
    caller,
    current_request,
    fhir_response,
    json_body,
    prefers_strict,
    requester,
    require_id_of_url,
    services,
    tenant,
    tenant_base,
)
from sharing_api.routes.guard import protect, refused
from sharing_api.searching import SearchContext, SearchResult
from sharing_api.store.observations import ReadScope, Stored

REFUSALS = {
    Reason.NO_AGREEMENT: "there is no sharing agreement between your organisation and this data controller",
    Reason.AGREEMENT_EXPIRED: "the sharing agreement has ended",
    Reason.AGREEMENT_NOT_YET_VALID: "the sharing agreement is not yet in force",
    Reason.PURPOSE_NOT_AGREED: "the agreement does not cover this purpose of use",
    Reason.SCOPE_NOT_AGREED: "the agreement does not cover the data asked for",
}

bp = Blueprint("fhir", __name__, url_prefix="/<orgnr>/fhir")


@bp.url_value_preprocessor
def _take_orgnr(_endpoint: str | None, values: dict[str, str] | None) -> None:
    assert values is not None
    g.orgnr = values.pop("orgnr")  # resolved after authentication (guard.protect)


SEARCH_ENDPOINTS = frozenset(
    {
        "fhir.search_get",
        "fhir.search_post",
        "fhir.lastn",
        "fhir.consent_search",
        "fhir.audit_search_get",
        "fhir.audit_search_post",
        "fhir.patient_search",
        "fhir.subscription_search",
        "fhir.careplan_search",
        "fhir.evaluate",
    }
)
FORM = "application/x-www-form-urlencoded"


def search_input() -> None:
    """Refuse a search beyond the caps, or with a body that is not a form, before anything else runs:
    no token check, no SQL, no Redis, no audit write for it (issue 8, "Bad input never gives a 500").
    ``POST _search`` takes ``application/x-www-form-urlencoded`` only (FHIR R4 "Search", 3.1.1.0.2)."""
    req = current_request()
    if req.endpoint not in SEARCH_ENDPOINTS:
        return
    mimetype = req.mimetype
    has_body = (req.content_length or 0) > 0 or mimetype in JSON_TYPES
    if req.method == "POST" and mimetype != FORM and has_body:
        got = mimetype or "no Content-Type"
        hint = " (a JSON body is not a search)" if mimetype in JSON_TYPES else ""
        raise UnsupportedMediaType(f"POST _search takes a form body ({FORM}); got {got}{hint}")
    params = list(req.args.items(multi=True))
    if mimetype == FORM:
        req.get_data(cache=True)  # the raw form stays readable for the audit record (AUD-03)
        params += list(req.form.items(multi=True))
    if any(name == "access_token" for name, _ in params):
        return  # a token outside the header: the guard refuses it and audits the attempt (AUTH-02)
    check_limits(params, services().settings.search_limits())


def _negotiate() -> None:
    """JSON (FHIR R4) only: another ``_format``, ``Accept`` or ``fhirVersion`` is refused (406/415)."""
    req = current_request()
    declared = DECLARED.get(req.endpoint or "")
    answers = NDJSON_RANGES if declared is not None and declared.answer == "ndjson" else JSON_RANGES
    fmt = req.args.get("_format")
    if fmt is None and req.mimetype == FORM:
        fmt = req.form.get("_format")
    headers = req.headers
    _acceptable(headers.get("Accept"), fmt, answers, headers.get("Content-Type"))


@lru_cache(maxsize=256)
def _acceptable(
    accept: str | None, fmt: str | None, answers: frozenset[str], content_type: str | None
) -> None:
    """:func:`negotiate` then :func:`check_content_version`: pure functions of these strings, so an
    acceptable combination is remembered (bounded; a refusal raises and is never remembered)."""
    negotiate(accept, fmt, answers=answers)
    check_content_version(content_type)


def _before() -> None:
    """The FHIR routes' one ``before_request``: the search caps, then the guard, then the formats."""
    search_input()
    protect()
    _negotiate()


bp.before_request(_before)


def attested_patient() -> tuple[str, str]:
    """The (system, value) of the one patient the caller's attestation is for; 403 without one."""
    who = caller()
    try:
        if who.attestation is None:
            raise InvalidAuthorizationDetails("a patient-data read needs the attestation (tillitsrammeverk)")
        identifier = require_patient_access(who.attestation).identifier
    except AuthError as exc:
        raise refused(exc) from exc
    assert identifier is not None
    return identifier.system, identifier.id


def decide_access(
    patient: tuple[str, str], *, categories: frozenset[str] | None = None, write: bool = False
) -> ReadScope:
    """The sharing decision for reading (or with ``write``, changing) ``patient``'s data here, of
    ``categories`` (``None``: all the agreements share), kept on ``g`` for the audit record.

    A denial whose reason concerns the patient (a reservation, a block, no consent) must look exactly
    like "no such data"; one that concerns only the organisations (no agreement) is said plainly.
    """
    verdict = services().access.decide_read(caller(), tenant(), patient, categories=categories, write=write)
    g.decision = verdict.decision
    if not verdict.decision.permit and verdict.decision.reveals_existence:
        reason = verdict.decision.reasons[0]
        raise Forbidden(f"sharing is not permitted here ({reason}): {REFUSALS.get(reason, reason)}")
    return verdict.scope


def _check_query(query: SearchQuery) -> ReadScope:
    """A search reads one patient's data: the one the attestation names (trust-framework rule), and
    only what the sharing decision permits."""
    system, value = attested_patient()
    named = [token for group in query.patients for token in group]
    if any(token.system == NOBODY for token in named):
        return ReadScope(nothing=True)  # an unknown Patient/$match id: no such patient, nothing read
    if len(named) != 1 or len(query.patients) != 1:
        raise Forbidden(
            "search one patient at a time: the patient the attestation is for", "patient.identifier"
        )
    token = named[0]
    if token.code != value or token.system not in (None, system):
        raise Forbidden("the attestation is for another patient than the one searched", "patient.identifier")
    return decide_access((system, value))


def _readable(obs_id: str) -> tuple[Stored, ReadScope]:
    """The observation if it is about the attested patient and the decision lets it be seen;
    otherwise exactly the answer for a missing one. The decision comes first, before any lookup of the
    id, so neither the answer nor its timing says whether the id exists (AZ-02, AZ-09)."""
    patient = attested_patient()
    scope = decide_access(patient)
    visible = services().observations.read(tenant().orgnr, obs_id, scope)
    if visible is None or visible.patient != patient:
        raise NotFound(f"Observation/{obs_id} is not known", "Observation.id")
    return visible, scope


@bp.url_defaults
def _tenant_default(_endpoint: str, values: dict[str, str]) -> None:
    if "orgnr" not in values and "tenant" in g:
        values["orgnr"] = g.tenant.orgnr


def _headers(stored: Stored, *, location: bool = False) -> dict[str, str]:
    headers = {"ETag": f'W/"{stored.version_id}"', "Last-Modified": format_instant(stored.last_updated)}
    if location:
        headers["Location"] = f"{tenant_base()}/Observation/{stored.id}/_history/{stored.version_id}"
    return headers


_ETAG = re.compile(r'(?:W/)?"?([0-9]{1,18})"?')


def if_match() -> int | None:
    """The version in ``If-Match`` (``W/"3"``); ASCII digits only, anything else is 400, never 500."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    found = _ETAG.fullmatch(raw.strip())
    if found is None:
        raise InvalidResource('If-Match must be an ETag such as W/"3"', "If-Match")
    return int(found.group(1))


def _refuse_labels(body: Any) -> None:
    """Security labels are the server's: refuse them before anything else (audited, see errors.py)."""
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        for i, entry in enumerate(body.get("entry") or () if isinstance(body.get("entry"), list) else ()):
            if isinstance(entry, dict):
                refuse_server_labels(entry.get("resource"), f"Bundle.entry[{i}].resource")
        return
    refuse_server_labels(body, "Observation")


def _put_body(obs_id: str) -> Any:
    """The body of a PUT, which must carry the id of the URL (FHIR R4 §3.1.0.4 "update")."""
    body = json_body()
    _refuse_labels(body)
    require_id_of_url(body, obs_id, "Observation")
    return body


_RETURNS = ("minimal", "representation", "OperationOutcome")


def _written(stored: Stored, status: int) -> Response:
    """A create/update answer as ``Prefer: return=`` asks (FHIR R4 §3.1.0.8.2): the resource (default),
    nothing, or an OperationOutcome; an unknown ``return`` value is refused, naming ``Prefer``."""
    wanted = "representation"
    for part in request.headers.get("Prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip() == "return":
            wanted = value.strip().strip('"')
    headers = _headers(stored, location=True)
    if wanted == "representation":
        return fhir_response(stored.data, status, headers)
    if wanted == "minimal":
        return Response(b"", status=status, headers=headers)
    if wanted == "OperationOutcome":
        done = "created" if status == 201 else "stored"
        said = f"Observation/{stored.id} {done}, version {stored.version_id}"
        return fhir_response(
            operation_outcome([Issue(said, None, "informational", "information")]), status, headers
        )
    raise InvalidResource(f"Prefer: return must be one of {', '.join(_RETURNS)}", "Prefer")


def match_binding() -> MatchBinding:
    """What a ``Patient/$match`` id is bound to: this tenant, this requester, this attestation."""
    return MatchBinding(tenant().orgnr, requester(), attested_patient())


def _resolve_patient(patient_id: str) -> Token:
    return PatientMatches(services().sessions).token(match_binding(), patient_id)


def _ctx(*, paging: bool = True) -> SearchContext:
    """The search's context; with ``paging``, the attested patient its cursors are bound to (403
    without an attestation, as the query check would answer)."""
    return SearchContext(tenant().orgnr, tenant_base(), requester(), attested_patient() if paging else None)


def _write_audit(action: AuditAction) -> WriteAudit:
    """Record a transaction's writes, one event per patient, in that same transaction."""

    def record(conn: Connection, writes: list[tuple[ValidObservation, Stored]]) -> None:
        by_patient: dict[tuple[str, str], list[str]] = {}
        for valid, stored in writes:
            by_patient.setdefault(valid.patient, []).append(
                f"Observation/{stored.id}/_history/{stored.version_id}"
            )
        for patient, resources in by_patient.items():
            audit(action, patient=patient, resources=resources, conn=conn)

    return record


def _read_result(action: AuditAction, result: SearchResult) -> Response:
    """Audit a search (committed), then send it: the event is durable before any data leaves."""
    audit(
        action,
        patient=attested_patient(),
        resources=[f"Observation/{i}" for i in result.ids],
        with_body=True,
    )
    return fhir_response(result.body)


@bp.post("/Observation")
def create() -> Response:
    body = json_body()
    _refuse_labels(body)
    stored = services().publisher.create(
        tenant(),
        body,
        if_none_exist=request.headers.get("If-None-Exist"),
        audit=_write_audit(AuditAction.OBSERVATION_CREATE),
    )
    return _written(stored, 201 if stored.created else 200)


@bp.get("/Observation/<obs_id>")
def read(obs_id: str) -> Response:
    summary, elements = read_subsetting(list(request.args.items(multi=True)))
    stored, _ = _readable(obs_id)
    audit(AuditAction.OBSERVATION_READ, patient=stored.patient, resources=[f"Observation/{obs_id}"])
    headers = _headers(stored)
    if _none_match(headers["ETag"]):
        return Response(b"", status=304, headers=headers)
    return fhir_response(subset(stored.data, summary, elements), headers=headers)


def _none_match(etag: str) -> bool:
    """``If-None-Match`` names the current version (or ``*``): the client's copy is current (RFC 9110
    §13.1.2, weak comparison), so the read answers 304 without a body."""
    given = request.headers.get("If-None-Match")
    if given is None:
        return False
    tags = {t.strip() for t in given.split(",")}
    return "*" in tags or etag in tags or etag.removeprefix("W/") in tags


@bp.put("/Observation/<obs_id>")
def update(obs_id: str) -> Response:
    stored = services().publisher.update(
        tenant(),
        obs_id,
        _put_body(obs_id),
        if_match=if_match(),
        audit=_write_audit(AuditAction.OBSERVATION_UPDATE),
    )
    return _written(stored, 200)


@bp.get("/Observation/<obs_id>/_history")
def history(obs_id: str) -> Response:
    current, scope = _readable(obs_id)
    versions = [
        v for v in services().observations.history(tenant().orgnr, obs_id) if version_visible(v.data, scope)
    ]
    base = tenant_base()
    entries = [
        history_entry(base, v.id, v.version_id, format_instant(v.last_updated))
        + b',"resource":'
        + v.data
        + b"}"
        for v in versions
    ]
    head = b'{"resourceType":"Bundle","type":"history","total":' + str(len(versions)).encode()
    audit(
        AuditAction.OBSERVATION_HISTORY,
        patient=current.patient,
        resources=[f"Observation/{obs_id}/_history/{v.version_id}" for v in versions],
    )
    if not entries:  # no empty arrays in FHIR JSON
        return fhir_response(head + b"}")
    return fhir_response(head + b',"entry":[' + b",".join(entries) + b"]}")


@bp.get("/Observation/<obs_id>/_history/<int:version_id>")
def vread(obs_id: str, version_id: int) -> Response:
    current, scope = _readable(obs_id)
    stored = services().observations.version(tenant().orgnr, obs_id, version_id)
    if stored is None or not version_visible(stored.data, scope):
        raise NotFound(
            f"Observation/{obs_id}/_history/{version_id} is not known", "Observation.meta.versionId"
        )
    audit(
        AuditAction.OBSERVATION_READ,
        patient=current.patient,
        resources=[f"Observation/{obs_id}/_history/{version_id}"],
    )
    return fhir_response(stored.data, headers=_headers(stored))


@bp.get("/Observation")
def search_get() -> Response:
    params = list(request.args.items(multi=True))
    searcher = services().searcher
    cursor = request.args.get("_cursor")
    if cursor is not None:
        if len(params) != 1:
            raise InvalidSearch("a paging cursor is used alone", "_cursor")
        return _read_result(AuditAction.OBSERVATION_SEARCH, searcher.resume(_ctx(), cursor, _check_query))
    refuse_pii_in_url(params)
    query = searcher.parse(params, strict=prefers_strict(), resolve_patient=_resolve_patient)
    return _read_result(AuditAction.OBSERVATION_SEARCH, searcher.search(_ctx(), query, _check_query))


@bp.post("/Observation/_search")
def search_post() -> Response:
    req = current_request()
    in_url = list(req.args.items(multi=True))
    refuse_pii_in_url(in_url)
    params = in_url + list(req.form.items(multi=True))
    searcher = services().searcher
    query = searcher.parse(params, strict=prefers_strict(), resolve_patient=_resolve_patient)
    return _read_result(AuditAction.OBSERVATION_SEARCH, searcher.search(_ctx(), query, _check_query))


@bp.route("/Observation/$lastn", methods=["GET", "POST"])
def lastn() -> Response:
    refuse_pii_in_url(list(request.args.items(multi=True)))
    params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    result = services().searcher.lastn(
        _ctx(paging=False),
        params,
        strict=prefers_strict(),
        check=_check_query,
        resolve_patient=_resolve_patient,
    )
    return _read_result(AuditAction.OBSERVATION_LASTN, result)


@bp.post("")
def bundle() -> Response:
    body = json_body()
    _refuse_labels(body)
    action = (
        AuditAction.BUNDLE_TRANSACTION
        if isinstance(body, dict) and body.get("type") == "transaction"
        else AuditAction.BUNDLE_BATCH
    )
    return fhir_response(
        services().publisher.bundle(tenant(), body, base=tenant_base(), audit=_write_audit(action))
    )
