"""The audit log over HTTP: the auditor's search, export and proofs, and the patient's access log.

* ``/{orgnr}/fhir/AuditEvent`` (GET without personal identifiers, or ``POST _search`` with a form):
  ``patient`` (``system|value``, POST only), ``agent`` (HPR), ``organisation``, ``purpose``,
  ``outcome``, ``action``, ``date`` (``ge``/``lt`` prefixes), ``_count``; paging by cursor.
* ``$export`` (NDJSON with checkpoints and the compact range, for ``dho-share audit verify``),
  ``$checkpoint``, ``$inclusion-proof?index=&size=``, ``$consistency-proof?old=&new=``.
  All of these: scope ``dho-share/audit.read``, the controller's own clients only (its own tenant).
* ``$access-log``: the patient's own access history in plain terms, for a patient token (their pid at
  security level 4) and nobody else's.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
from flask import Response, request

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.log import Entry
from sharing_api.errors import Forbidden, InvalidSearch
from sharing_api.fhir.dates import DateFormatError, from_micros, parse_range
from sharing_api.fhir.search import refuse_pii_in_url, split_modifier, whole_number
from sharing_api.routes.common import (
    audit,
    caller,
    fhir_response,
    json_response,
    requester,
    services,
    tenant,
    tenant_base,
)
from sharing_api.routes.consents import is_the_patient
from sharing_api.routes.observations import bp
from sharing_api.searching import searchset

MAX_COUNT = 200
ACTIONS_IN_WORDS = {
    "observation.read": "read a measurement",
    "observation.search": "searched the measurements",
    "observation.lastn": "looked at the latest measurements",
    "observation.history": "read the history of a measurement",
    "request.refused": "tried to look, and was refused",
}


def _when(raw: str, name: str) -> tuple[str, datetime]:
    prefix, value = (raw[:2], raw[2:]) if raw[:2] in ("ge", "gt", "lt", "le") else ("ge", raw)
    try:
        start, end = parse_range(value, require_zone_with_time=False)
    except DateFormatError as exc:
        raise InvalidSearch(f"{name}: {exc}", name) from exc
    return prefix, from_micros(start if prefix in ("ge", "lt") else end)


def _filters(params: list[tuple[str, str]]) -> tuple[dict[str, Any], int, int | None]:
    filters: dict[str, Any] = {}
    count, after = 50, None
    for name, value in params:
        base, modifier = split_modifier(name)
        if modifier is not None:
            # No AuditEvent parameter takes a modifier here: refused, never ignored (issue 8).
            raise InvalidSearch(
                f"AuditEvent search: the modifier :{modifier} of {base!r} is not supported", name
            )
        if name == "patient":
            system, _, number = value.partition("|")
            filters["patient"] = (system, number) if number else value
        elif name == "agent":
            filters["agent_hpr"] = value
        elif name == "organisation":
            filters["organisation"] = value
        elif name == "purpose":
            filters["purpose"] = value.split(",")
        elif name == "outcome":
            try:
                filters["outcome"] = [Outcome(v) for v in value.split(",")]
            except ValueError as exc:
                raise InvalidSearch("outcome is 0, 4, 8 or 12", "outcome") from exc
        elif name == "action":
            try:
                filters["action"] = [AuditAction(v) for v in value.split(",")]
            except ValueError as exc:
                raise InvalidSearch(
                    f"action is one of {', '.join(a.value for a in AuditAction)}", "action"
                ) from exc
        elif name == "date":
            prefix, moment = _when(value, name)
            filters["date_from" if prefix in ("ge", "gt") else "date_to"] = moment
        elif name == "_count":
            count = max(1, min(whole_number("_count", value), MAX_COUNT))
        elif name == "_after":
            after = whole_number("_after", value)
        elif name not in ("_format", "_cursor"):
            raise InvalidSearch(f"unknown AuditEvent search parameter {name!r}", name)
    return filters, count, after


def _search(params: list[tuple[str, str]]) -> Response:
    filters, count, after = _filters(params)
    log = services().audit_log
    entries = log.search(tenant().orgnr, count=count + 1, after_seq=after, **filters)
    more = len(entries) > count
    entries = entries[:count]
    links = []
    if more and entries[-1].seq is not None:
        record = {
            "tenant": tenant().orgnr,
            "requester": requester(),
            "audit": [p for p in params if p[0] != "_after"] + [("_after", str(entries[-1].seq))],
        }
        links.append(
            {
                "relation": "next",
                "url": f"{tenant_base()}/AuditEvent?_cursor={services().sessions.put(record)}",
            }
        )
    audit(AuditAction.AUDIT_SEARCH, patient=None, with_body=True)
    body = searchset(
        tenant_base(),
        [e.event for e in entries],
        total=None,
        links=links,
        resource_type="AuditEvent",
        ids=[str(e.seq) if e.seq is not None else f"pending-{e.id}" for e in entries],
    )
    return fhir_response(body)


@bp.get("/AuditEvent")
def audit_search_get() -> Response:
    params = list(request.args.items(multi=True))
    cursor = request.args.get("_cursor")
    if cursor is not None:
        record = services().sessions.get(cursor)
        if record is None or record.get("tenant") != tenant().orgnr or "audit" not in record:
            raise InvalidSearch("the paging cursor is unknown or has expired", "_cursor")
        if record.get("requester") != requester():
            raise Forbidden("this paging cursor belongs to another client", "_cursor")
        return _search([(str(k), str(v)) for k, v in record["audit"]])
    refuse_pii_in_url(params)
    if any(name == "patient" for name, _ in params):
        raise InvalidSearch("search by patient with POST [base]/AuditEvent/_search (a form body)", "patient")
    return _search(params)


@bp.post("/AuditEvent/_search")
def audit_search_post() -> Response:
    refuse_pii_in_url(list(request.args.items(multi=True)))
    return _search(list(request.form.items(multi=True)))


def _int_arg(name: str, default: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None and default is not None:
        return default
    if raw is None:
        raise InvalidSearch(f"{name} must be a whole number", name)
    return whole_number(name, raw)


@bp.get("/AuditEvent/$export")
def audit_export() -> Response:
    log = services().audit_log
    orgnr = tenant().orgnr
    log.drain(orgnr)
    start = _int_arg("from", 0)
    end = request.args.get("to")
    stop = whole_number("to", end) if end else None
    audit(AuditAction.AUDIT_EXPORT, patient=None)
    lines: Iterator[bytes] = log.export(orgnr, start, stop)
    return Response(
        (line if line.endswith(b"\n") else line + b"\n" for line in lines), mimetype="application/x-ndjson"
    )


def _b64(items: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in items]


@bp.get("/AuditEvent/$checkpoint")
def audit_checkpoint() -> Response:
    """A signed checkpoint of the log as it is now (signed on demand when the tree has grown)."""
    log = services().audit_log
    log.drain(tenant().orgnr)
    checkpoint = log.checkpoint(tenant().orgnr)
    if checkpoint is None:
        return json_response({"size": 0})
    return json_response(
        {"size": checkpoint.size, "root": base64.b64encode(checkpoint.root).decode(), "note": checkpoint.note}
    )


@bp.get("/AuditEvent/$inclusion-proof")
def audit_inclusion() -> Response:
    index, size = _int_arg("index"), _int_arg("size")
    try:
        proof = services().audit_log.inclusion_proof(tenant().orgnr, index, size)
    except ValueError as exc:
        raise InvalidSearch(str(exc), "index") from exc
    return json_response({"index": index, "size": size, "proof": _b64(proof)})


@bp.get("/AuditEvent/$consistency-proof")
def audit_consistency() -> Response:
    old, new = _int_arg("old"), _int_arg("new")
    try:
        proof = services().audit_log.consistency_proof(tenant().orgnr, old, new)
    except ValueError as exc:
        raise InvalidSearch(str(exc), "old") from exc
    return json_response({"old": old, "new": new, "proof": _b64(proof)})


def _plain(entry: Entry) -> dict[str, Any]:
    event = orjson.loads(entry.event)
    categories = sorted(
        {
            d.get("valueString", "")
            for e in event.get("entity", [])
            for d in e.get("detail", [])
            if d.get("type") == "data-category"
        }
        - {""}
    )
    return {
        "when": entry.recorded_at.isoformat(timespec="seconds"),
        "organisation": entry.organisation,
        "healthWorkerHpr": entry.agent_hpr,
        "why": entry.purpose,
        "what": ACTIONS_IN_WORDS.get(entry.action, entry.action),
        "measurementTypes": categories,
        "allowed": entry.outcome == Outcome.SUCCESS.value,
    }


@bp.get("/AuditEvent/$access-log")
def access_log() -> Response:
    """The patient's own access history: who looked, from which organisation, when and why."""
    who = caller()
    if who.pid is None or not is_the_patient(who, ("", who.pid)):
        raise Forbidden("the access log is for the patient themself (a patient token at security level 4)")
    reads = [
        a
        for a in AuditAction
        if a.value.startswith("observation.") and a.value not in ("observation.create", "observation.update")
    ]
    entries = services().audit_log.search(
        tenant().orgnr,
        patient=who.pid,
        action=[*reads, AuditAction.REQUEST_REFUSED],
        count=MAX_COUNT,
        newest_first=True,
    )
    audit(AuditAction.PATIENT_ACCESS_LOG, patient=None)
    return json_response({"patient": who.pid, "accesses": [_plain(e) for e in entries]})
