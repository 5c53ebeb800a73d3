"""The audit log over HTTP: the auditor's search, export and proofs, and the patient's access log.

* ``/{orgnr}/fhir/AuditEvent`` (GET without personal identifiers, or ``POST _search`` with a form): the
  parameters of :data:`AUDIT_EVENT_SEARCH_PARAMS`: the standard R4 ones (``patient``/``entity``
  [``:identifier``] as ``system|value``, POST only; ``agent`` as HPR or ``system|value`` with the HPR or
  org.nr system; ``type``, ``subtype``, ``action`` (C R U D E, or our action names), ``outcome``,
  ``purpose`` as ``[system|]code``; ``date`` with ``eq ge gt le lt``) and ``organisation``;
  ``_count``; paging by cursor.
* ``$export`` (NDJSON with checkpoints and the compact range, for ``dho-share audit verify``),
  ``$checkpoint``, ``$inclusion-proof?index=&size=``, ``$consistency-proof?old=&new=``.
  All of these: scope ``dho-share/audit.read``, the controller's own clients only (its own tenant).
* ``$access-log``: the patient's own access history in plain terms, for a patient token (their pid at
  security level 4) and nobody else's.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import orjson
from flask import Response, request

from sharing_api.audit.actions import READ_ACTIONS, AuditAction, Outcome
from sharing_api.audit.events import HPR_SYSTEM, ORGNR_SYSTEM, classification
from sharing_api.audit.log import Entry
from sharing_api.errors import Forbidden, InvalidSearch, NotFound
from sharing_api.fhir.dates import DateFormatError, from_micros, parse_range
from sharing_api.fhir.search import SearchParameter, refuse_pii_in_url, split_modifier, whole_number
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
    "observation.evaluate": "checked the measurements against the treatment plan",
    "careplan.read": "read the treatment plan",
    "careplan.history": "read the history of the treatment plan",
    "careplan.search": "looked up the treatment plans",
    "goal.read": "read a goal of the treatment plan",
    "goal.history": "read the history of a goal of the treatment plan",
    "request.refused": "tried to look, and was refused",
}


#: The AuditEvent search parameters this server supports, name -> FHIR search parameter type (R4
#: ``SearchParameter.type``), for the CapabilityStatement. The standard R4 AuditEvent parameters
#: (``type``, ``subtype``, ``action``, ``entity``, ``agent``, ``date``, ``patient``, ``outcome``,
#: ``purpose``) plus ``organisation`` (the requesting legal entity's org.nr, ours).
AUDIT_EVENT_SEARCH_PARAMS: dict[str, str] = {
    "type": "token",
    "subtype": "token",
    "action": "token",
    "entity": "reference",
    "agent": "reference",
    "date": "date",
    "patient": "reference",
    "outcome": "token",
    "purpose": "token",
    "organisation": "token",
}
#: Modifiers accepted per parameter; any other modifier is refused with 400 naming the parameter.
AUDIT_EVENT_SEARCH_MODIFIERS: dict[str, tuple[str, ...]] = {
    "entity": ("identifier",),
    "agent": ("identifier",),
    "patient": ("identifier",),
}
#: Prefixes ``date`` accepts (FHIR R4 search §3.1.1.4; no prefix means ``eq``).
AUDIT_EVENT_DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")

_EXPRESSIONS = {
    "type": ("AuditEvent.type", "the event type (rest; DICOM 110113/110114)"),
    "subtype": ("AuditEvent.subtype", "restful interaction, or our action (urn:dho-share:audit-action)"),
    "action": ("AuditEvent.action", "C R U D E, or our action names (observation.read, ...)"),
    "entity": ("AuditEvent.entity.what", "the patient by identifier (system|value), POST only"),
    "agent": ("AuditEvent.agent.who", "the health worker (HPR) or legal entity (org.nr) as system|value"),
    "date": ("AuditEvent.recorded", "when the event was recorded"),
    "patient": ("AuditEvent.entity.what", "the patient by identifier (system|value), POST only"),
    "outcome": ("AuditEvent.outcome", "0, 4, 8 or 12"),
    "purpose": ("AuditEvent.purposeOfEvent", "v3 PurposeOfUse (TREAT, ETREAT, COC, BTG)"),
    "organisation": ("AuditEvent.agent.who", "the requesting legal entity's org.nr (ours)"),
}
#: The same parameters in the shape of ``fhir.search.SEARCH_PARAMETERS`` (expression, documentation,
#: modifiers, prefixes), derived from the three tables above, for a generated CapabilityStatement.
AUDIT_EVENT_SEARCH: tuple[SearchParameter, ...] = tuple(
    SearchParameter(
        name,
        kind,
        _EXPRESSIONS[name][0],
        _EXPRESSIONS[name][1],
        modifiers=AUDIT_EVENT_SEARCH_MODIFIERS.get(name, ()),
        prefixes=AUDIT_EVENT_DATE_PREFIXES if kind == "date" else (),
    )
    for name, kind in AUDIT_EVENT_SEARCH_PARAMS.items()
)

_OUTCOME_SYSTEMS = frozenset(
    {"http://terminology.hl7.org/CodeSystem/audit-event-outcome", "http://hl7.org/fhir/audit-event-outcome"}
)
_PURPOSE_SYSTEMS = frozenset(
    {
        "http://terminology.hl7.org/CodeSystem/v3-ActReason",
        "http://terminology.hl7.org/CodeSystem/v3-PurposeOfUse",
        "urn:oid:2.16.840.1.113883.1.11.20448",
    }
)
_CONTROL_PARAMS = frozenset({"_count", "_after", "_format", "_cursor"})


def _when(raw: str, name: str) -> tuple[datetime | None, datetime | None]:
    """``date`` as an inclusive lower and exclusive upper bound (either may be ``None``)."""
    prefix, value = (raw[:2], raw[2:]) if raw[:2].isalpha() else ("eq", raw)
    if prefix not in AUDIT_EVENT_DATE_PREFIXES:
        raise InvalidSearch(f"{name}: prefix {prefix!r} is not supported here (eq ge gt le lt)", name)
    try:
        start, end = parse_range(value, require_zone_with_time=False)
    except DateFormatError as exc:
        raise InvalidSearch(f"{name}: {exc}", name) from exc
    lower, upper = from_micros(start), from_micros(end)
    return {
        "eq": (lower, upper),
        "ge": (lower, None),
        "gt": (upper, None),
        "lt": (None, lower),
        "le": (None, upper),
    }[prefix]


def _token(value: str) -> tuple[str | None, str]:
    """``[system|]code`` (FHIR token search): ``(None, code)`` without a ``|``."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system or None, code
    return None, value


def _by_coding(
    name: str, value: str, codings: Callable[[AuditAction], Iterable[Mapping[str, str]]]
) -> set[AuditAction]:
    """The actions whose events carry one of the comma-separated ``[system|]code`` tokens in ``value``."""
    wanted = [_token(v) for v in value.split(",")]
    if any(not code for _, code in wanted):
        raise InvalidSearch(f"{name} needs a code ([system|]code)", name)
    return {
        action
        for action in AuditAction
        for coding in codings(action)
        for system, code in wanted
        if coding["code"] == code and system in (None, coding["system"])
    }


def _identified(name: str, value: str) -> tuple[str, str] | str:
    """A patient (or entity) given as ``system|value`` or a bare identifier value."""
    system, number = _token(value)
    if not number:
        raise InvalidSearch(f"{name} is system|value or a value", name)
    return (system, number) if system else number


def _agent(name: str, value: str, filters: dict[str, Any]) -> None:
    """``agent``: the health worker by HPR number (bare, or ``urn:oid:...4.4|<hpr>``), or the requesting
    legal entity by ``urn:oid:...4.101|<org.nr>``, as a FHIR token on the agent's identifier."""
    system, number = _token(value)
    if not number:
        raise InvalidSearch(f"{name} is [system|]value", name)
    if system in (None, HPR_SYSTEM):
        filters["agent_hpr"] = number
    elif system == ORGNR_SYSTEM:
        filters["organisation"] = number
    else:
        raise InvalidSearch(
            f"{name}: the identifier system is {HPR_SYSTEM} (HPR) or {ORGNR_SYSTEM} (org.nr)", name
        )


def _codes(name: str, value: str, systems: frozenset[str]) -> list[str]:
    out = []
    for system, code in map(_token, value.split(",")):
        if system is not None and system not in systems:
            raise InvalidSearch(f"{name}: the system is one of {', '.join(sorted(systems))}", name)
        out.append(code)
    return out


def _filters(params: list[tuple[str, str]]) -> tuple[dict[str, Any], int, int | None]:
    """The log's filters for the search ``params`` (standard and our own, AUDIT_EVENT_SEARCH_PARAMS).

    Several parameters narrow together: ``type``, ``subtype`` and ``action`` each select actions, and an
    entry must have an action all of them allow. Unknown parameters and modifiers are refused (400
    naming the parameter), never ignored.
    """
    filters: dict[str, Any] = {}
    actions: set[AuditAction] | None = None
    lower: datetime | None = None
    upper: datetime | None = None
    count, after = 50, None

    def narrow(found: set[AuditAction]) -> None:
        nonlocal actions
        actions = found if actions is None else actions & found

    for raw_name, value in params:
        name, modifier = split_modifier(raw_name)
        if name in _CONTROL_PARAMS and not modifier:
            pass
        elif name not in AUDIT_EVENT_SEARCH_PARAMS:
            raise InvalidSearch(f"unknown AuditEvent search parameter {raw_name!r}", raw_name)
        elif modifier and modifier not in AUDIT_EVENT_SEARCH_MODIFIERS.get(name, ()):
            raise InvalidSearch(f"modifier :{modifier} is not supported on {name}", raw_name)
        if name in ("patient", "entity"):
            filters["patient"] = _identified(raw_name, value)
        elif name == "agent":
            _agent(raw_name, value, filters)
        elif name == "organisation":
            filters["organisation"] = value
        elif name == "purpose":
            filters["purpose"] = _codes(name, value, _PURPOSE_SYSTEMS)
        elif name == "outcome":
            try:
                filters["outcome"] = [Outcome(v) for v in _codes(name, value, _OUTCOME_SYSTEMS)]
            except ValueError as exc:
                raise InvalidSearch("outcome is 0, 4, 8 or 12", "outcome") from exc
        elif name == "type":
            narrow(_by_coding(name, value, lambda a: (classification(a).type,)))
        elif name == "subtype":
            narrow(_by_coding(name, value, lambda a: classification(a).subtype))
        elif name == "action":
            # FHIR's action codes (C R U D E) or ours (observation.read, ...).
            found: set[AuditAction] = set()
            for code in value.split(","):
                matches = {a for a in AuditAction if code in (a.value, classification(a).action)}
                if not matches and code not in ("C", "R", "U", "D", "E"):
                    raise InvalidSearch(
                        f"action is C, R, U, D, E or one of {', '.join(a.value for a in AuditAction)}",
                        "action",
                    )
                found |= matches
            narrow(found)
        elif name == "date":
            low, high = _when(value, name)
            if low is not None:
                lower = low if lower is None else max(lower, low)
            if high is not None:
                upper = high if upper is None else min(upper, high)
        elif name == "_count":
            count = max(1, min(whole_number("_count", value), MAX_COUNT))
        elif name == "_after":
            after = whole_number("_after", value)
    if actions is not None:
        filters["action"] = sorted(actions)
    if lower is not None:
        filters["date_from"] = lower
    if upper is not None:
        filters["date_to"] = upper
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
        [e.fhir_bytes() for e in entries],
        total=None,
        links=links,
        resource_type="AuditEvent",
        ids=[e.fhir_id or f"pending-{e.id}" for e in entries],
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
    for name, _ in params:
        if name.partition(":")[0] in ("patient", "entity"):
            raise InvalidSearch("search by patient with POST [base]/AuditEvent/_search (a form body)", name)
    return _search(params)


@bp.post("/AuditEvent/_search")
def audit_search_post() -> Response:
    refuse_pii_in_url(list(request.args.items(multi=True)))
    return _search(list(request.form.items(multi=True)))


@bp.get("/AuditEvent/<event_id>")
def audit_read(event_id: str) -> Response:
    """Read one AuditEvent by the id a search gave it (its index in the tenant's log): the tenant's
    own auditors only (guard: ``dho-share/audit.read``, the controller itself); another tenant's
    index or an unknown one is 404. The read is audited like a search."""
    log = services().audit_log
    orgnr = tenant().orgnr
    entry = log.entry(orgnr, int(event_id)) if event_id.isdigit() and len(event_id) <= 18 else None
    audit(AuditAction.AUDIT_SEARCH, patient=None, resources=[f"AuditEvent/{event_id[:64]}"])
    if entry is None:
        raise NotFound(f"AuditEvent/{event_id[:64]} is not in this log")
    return fhir_response(entry.fhir_bytes())


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
    stop = whole_number("to", end) if end is not None else None
    head = log.head(orgnr)
    size = head.size if head is not None else 0
    if start > size:  # beyond the head is a bad request, not a corrupt log (LogCorrupted, a 500)
        raise InvalidSearch(f"from: the log holds {size} entries", "from")
    audit(AuditAction.AUDIT_EXPORT, patient=None)
    lines: Iterator[bytes] = log.export(orgnr, start, stop)
    try:  # the range is checked when the export starts: a bad one is a 400, not a broken stream
        first = next(lines)
    except ValueError as exc:
        raise InvalidSearch(f"from/to: {exc}", "from") from exc
    return Response(
        (line if line.endswith(b"\n") else line + b"\n" for line in itertools.chain([first], lines)),
        mimetype="application/x-ndjson",
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


def _log_size() -> int:
    """How many entries the tenant's tree holds now: a proof beyond it is a bad request (400), which
    the log itself would report as corruption (``LogCorrupted``, a 500)."""
    head = services().audit_log.head(tenant().orgnr)
    return head.size if head is not None else 0


def _within_log(value: int, name: str) -> int:
    size = _log_size()
    if value > size:
        raise InvalidSearch(f"{name}: the log holds {size} entries", name)
    return value


@bp.get("/AuditEvent/$inclusion-proof")
def audit_inclusion() -> Response:
    index, size = _int_arg("index"), _within_log(_int_arg("size"), "size")
    try:
        proof = services().audit_log.inclusion_proof(tenant().orgnr, index, size)
    except ValueError as exc:
        raise InvalidSearch(str(exc), "index") from exc
    return json_response({"index": index, "size": size, "proof": _b64(proof)})


@bp.get("/AuditEvent/$consistency-proof")
def audit_consistency() -> Response:
    old, new = _int_arg("old"), _within_log(_int_arg("new"), "new")
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
    names = [a["name"] for a in event.get("agent", []) if isinstance(a.get("name"), str)]
    return {
        "when": entry.recorded_at.isoformat(timespec="seconds"),
        "action": entry.action,
        "organisation": entry.organisation,
        "healthWorkerHpr": entry.agent_hpr,
        "healthWorkerName": names[0] if names else None,
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
    reads = sorted(READ_ACTIONS)  # measurements and plans (issue 11)
    entries = services().audit_log.search(
        tenant().orgnr,
        patient=who.pid,
        action=[*reads, AuditAction.REQUEST_REFUSED],
        count=MAX_COUNT,
        newest_first=True,
    )
    audit(AuditAction.PATIENT_ACCESS_LOG, patient=None)
    return json_response({"patient": who.pid, "accesses": [_plain(e) for e in entries]})


def search_filters(params: list[tuple[str, str]]) -> tuple[dict[str, Any], int, int | None]:
    """The AuditEvent search parameters ``params`` as ``AuditLog.search`` keywords, the page size and the
    ``_after`` cursor; ``InvalidSearch`` naming a bad parameter. The auditor console (sharing_api/console)
    calls this too, so its filters are the API's: one source of truth."""
    return _filters(params)
