"""``/{orgnr}/fhir``: Observation create/read/update/history, search, ``$lastn`` and Bundles."""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from auth.attestation import require_patient_access
from auth.errors import AuthError, InvalidAuthorizationDetails
from consent.policy import Reason
from sharing_api.errors import Forbidden, InvalidResource, InvalidSearch, NotFound
from sharing_api.fhir.dates import format_instant
from sharing_api.fhir.search import SearchQuery, refuse_pii_in_url
from sharing_api.routes.common import (
    caller,
    fhir_response,
    json_body,
    prefers_strict,
    requester,
    services,
    tenant,
    tenant_base,
)
from sharing_api.routes.guard import protect, refused
from sharing_api.searching import SearchContext
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


bp.before_request(protect)


def _attested_patient() -> tuple[str, str]:
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


def _decide(patient: tuple[str, str]) -> ReadScope:
    """The sharing decision for reading ``patient``'s data here, kept on ``g`` for the audit record.

    A denial whose reason concerns the patient (a reservation, a block, no consent) must look exactly
    like "no such data"; one that concerns only the organisations (no agreement) is said plainly.
    """
    verdict = services().access.decide_read(caller(), tenant(), patient)
    g.decision = verdict.decision
    if not verdict.decision.permit and verdict.decision.reveals_existence:
        reason = verdict.decision.reasons[0]
        raise Forbidden(f"sharing is not permitted here ({reason}): {REFUSALS.get(reason, reason)}")
    return verdict.scope


def _check_query(query: SearchQuery) -> ReadScope:
    """A search reads one patient's data: the one the attestation names (trust-framework rule), and
    only what the sharing decision permits."""
    system, value = _attested_patient()
    named = [token for group in query.patients for token in group]
    if len(named) != 1 or len(query.patients) != 1:
        raise Forbidden(
            "search one patient at a time: the patient the attestation is for", "patient.identifier"
        )
    token = named[0]
    if token.code != value or token.system not in (None, system):
        raise Forbidden("the attestation is for another patient than the one searched", "patient.identifier")
    return _decide((system, value))


def _readable(obs_id: str) -> Stored:
    """The observation if it is about the attested patient and the decision lets it be seen;
    otherwise exactly the answer for a missing one."""
    patient = _attested_patient()
    stored = services().observations.read(tenant().orgnr, obs_id)
    if stored is None or stored.patient != patient:
        raise NotFound(f"Observation/{obs_id} is not known", "Observation.id")
    scope = _decide(patient)
    visible = services().observations.read(tenant().orgnr, obs_id, scope)
    if visible is None:
        raise NotFound(f"Observation/{obs_id} is not known", "Observation.id")
    return visible


@bp.url_defaults
def _tenant_default(_endpoint: str, values: dict[str, str]) -> None:
    if "orgnr" not in values and "tenant" in g:
        values["orgnr"] = g.tenant.orgnr


def _headers(stored: Stored, *, location: bool = False) -> dict[str, str]:
    headers = {"ETag": f'W/"{stored.version_id}"', "Last-Modified": format_instant(stored.last_updated)}
    if location:
        headers["Location"] = f"{tenant_base()}/Observation/{stored.id}/_history/{stored.version_id}"
    return headers


def _if_match() -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    digits = raw.removeprefix("W/").strip('"')
    if not digits.isdigit():
        raise InvalidResource('If-Match must be an ETag such as W/"3"', "If-Match")
    return int(digits)


def _ctx() -> SearchContext:
    return SearchContext(tenant().orgnr, tenant_base(), requester())


@bp.post("/Observation")
def create() -> Response:
    stored = services().publisher.create(
        tenant(), json_body(), if_none_exist=request.headers.get("If-None-Exist")
    )
    return fhir_response(stored.data, 201 if stored.created else 200, _headers(stored, location=True))


@bp.get("/Observation/<obs_id>")
def read(obs_id: str) -> Response:
    stored = _readable(obs_id)
    return fhir_response(stored.data, headers=_headers(stored))


@bp.put("/Observation/<obs_id>")
def update(obs_id: str) -> Response:
    stored = services().publisher.update(tenant(), obs_id, json_body(), if_match=_if_match())
    return fhir_response(stored.data, headers=_headers(stored, location=True))


@bp.get("/Observation/<obs_id>/_history")
def history(obs_id: str) -> Response:
    _readable(obs_id)
    versions = services().observations.history(tenant().orgnr, obs_id)
    base = tenant_base()
    entries = [
        b'{"fullUrl":"' + f"{base}/Observation/{v.id}".encode() + b'","resource":' + v.data + b"}"
        for v in versions
    ]
    head = b'{"resourceType":"Bundle","type":"history","total":' + str(len(versions)).encode()
    return fhir_response(head + b',"entry":[' + b",".join(entries) + b"]}")


@bp.get("/Observation/<obs_id>/_history/<int:version_id>")
def vread(obs_id: str, version_id: int) -> Response:
    _readable(obs_id)
    stored = services().observations.version(tenant().orgnr, obs_id, version_id)
    if stored is None:
        raise NotFound(
            f"Observation/{obs_id}/_history/{version_id} is not known", "Observation.meta.versionId"
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
        return fhir_response(searcher.resume(_ctx(), cursor, _check_query))
    refuse_pii_in_url(params)
    return fhir_response(
        searcher.search(_ctx(), searcher.parse(params, strict=prefers_strict()), _check_query)
    )


@bp.post("/Observation/_search")
def search_post() -> Response:
    refuse_pii_in_url(list(request.args.items(multi=True)))
    params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    searcher = services().searcher
    return fhir_response(
        searcher.search(_ctx(), searcher.parse(params, strict=prefers_strict()), _check_query)
    )


@bp.route("/Observation/$lastn", methods=["GET", "POST"])
def lastn() -> Response:
    refuse_pii_in_url(list(request.args.items(multi=True)))
    params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return fhir_response(
        services().searcher.lastn(_ctx(), params, strict=prefers_strict(), check=_check_query)
    )


@bp.post("")
def bundle() -> Response:
    return fhir_response(services().publisher.bundle(tenant(), json_body(), base=tenant_base()))
