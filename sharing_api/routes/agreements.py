"""``/{orgnr}/admin/agreements``: the data controller manages its sharing agreements (JSON, not FHIR).

Only the controller's own clients (``consent.read`` / ``consent.write``); a consumer can neither see
nor change them (security-tests AZ-06). The CLI ``dho-share agreements`` does the same locally.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, g

from consent.model import PurposeOfUse, SharingAgreement
from sharing_api.audit.actions import AuditAction
from sharing_api.errors import InvalidResource, NotFound
from sharing_api.fhir.dates import DateFormatError, from_micros, parse_range
from sharing_api.routes.common import audit, json_body, json_response, services, tenant
from sharing_api.routes.guard import protect

bp = Blueprint("admin", __name__, url_prefix="/<orgnr>/admin")


@bp.url_value_preprocessor
def _take_orgnr(_endpoint: str | None, values: dict[str, str] | None) -> None:
    assert values is not None
    g.orgnr = values.pop("orgnr")


bp.before_request(protect)


def agreement_json(a: SharingAgreement) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat(timespec="microseconds") if moment else None

    return {
        "id": a.id,
        "controller": a.controller,
        "consumer": a.consumer,
        "categories": sorted(a.categories),
        "writeCategories": sorted(a.write_categories),
        "purposes": sorted(a.purposes),
        "validFrom": iso(a.period.start),
        "validTo": iso(a.period.end),
        "dataFrom": iso(a.data_period.start) if a.data_period else None,
        # dataTo is inclusive on the wire (the last instant inside), exclusive in the model.
        "dataTo": iso(a.data_period.end - timedelta(microseconds=1))
        if a.data_period and a.data_period.end
        else None,
    }


def _moment(body: dict[str, Any], name: str, *, end: bool = False) -> datetime | None:
    raw = body.get(name)
    if raw is None:
        return None
    try:
        start_us, end_us = parse_range(str(raw))
    except DateFormatError as exc:
        raise InvalidResource(str(exc), name) from exc
    return from_micros(end_us if end else start_us)


@bp.get("/agreements")
def agreements_list() -> Response:
    found = services().policy.agreements(controller=tenant().orgnr)
    return json_response({"agreements": [agreement_json(a) for a in found]})


@bp.post("/agreements")
def agreements_add() -> Response:
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidResource("send a JSON object", "agreement")
    for name in ("categories", "writeCategories", "purposes"):
        value = body.get(name)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise InvalidResource(f"{name} is an array of strings", name)
    try:
        agreement = services().policy.add_agreement(
            controller=tenant().orgnr,
            consumer=str(body.get("consumer", "")),
            categories=frozenset(body.get("categories") or ()),
            write_categories=frozenset(body.get("writeCategories") or ()),
            purposes=frozenset(PurposeOfUse(p) for p in body.get("purposes") or ()),
            valid_from=_moment(body, "validFrom") or datetime.now(UTC),
            valid_to=_moment(body, "validTo"),
            data_from=_moment(body, "dataFrom"),
            data_to=_moment(body, "dataTo", end=True),
        )
    except ValueError as exc:
        raise InvalidResource(str(exc), "agreement") from exc
    audit(AuditAction.AGREEMENT_CHANGE, patient=None, resources=[f"SharingAgreement/{agreement.id}"])
    return json_response(agreement_json(agreement), 201)


@bp.post("/agreements/<agreement_id>/end")
def agreements_end(agreement_id: str) -> Response:
    if not services().policy.end_agreement(agreement_id, datetime.now(UTC), controller=tenant().orgnr):
        raise NotFound(f"no agreement {agreement_id}", "agreement")
    audit(AuditAction.AGREEMENT_CHANGE, patient=None, resources=[f"SharingAgreement/{agreement_id}"])
    return json_response({"ended": agreement_id})
