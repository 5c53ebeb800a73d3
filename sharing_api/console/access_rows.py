"""The period's accesses as the log-control rules read them, cut out of the events in SQL: the rules'
input without parsing every event in Python (BENCHMARKS.md "Auditor console over a large audit log").

The rules (``rules.run_views``) read per access the indexed columns (time, action, outcome, purpose,
patient, HPR, organisation, client) and eight facts only the event holds. Each is found in the event's
canonical bytes (RFC 8785: keys sorted, no blanks, so each fact has one spelling) by ``position``/
``instr`` and ``substr``, no JSON parsing in the database, and only a short fragment per access leaves
it; on PostgreSQL the event is detoasted once per row (a subquery fenced by ``OFFSET 0``), not once
per fragment:

* R8: the keyed hash of the health worker's identity number (``audit.pseudonym``), 73 characters
  after ``{"system":"<PID_HASH_SYSTEM>","value":"``;
* R2: the decision reason ``{"type":"reason","valueString":"blocked-practitioner"}``;
* R12: ``{"url":"decision-ref-user-selected","valueBoolean":true}``;
* R13: the token's ``jti`` after ``"urn:ietf:params:oauth:jti:``;
* R11, R14: ``outcomeDesc`` (its "with N results");
* R4 and "explained": the data-category details (as ``flows`` cuts them);
* R6: the point of care: the ``Location`` the ``PractitionerRole`` names, its
  ``managingOrganization`` and that ``Organization``'s name, else its number (as ``reading.view_of``
  reads it).

An access whose bytes do not have the shape ``events`` builds (a fragment that does not parse, a
Location with a name or an identifier, more than one data-category entity) is read and parsed whole
with ``reading.view_of``, so the rules see what they would see parsing every event;
``tests/console/test_access_rows.py`` compares the two on a seeded month on both databases. The views
carry no names: ``rules.explain`` names the hits shown from their full events.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import ColumnElement, LargeBinary, case, func, literal, select

from sharing_api.audit.actions import READ_ACTIONS, AuditAction
from sharing_api.audit.pseudonym import PID_HASH_SYSTEM
from sharing_api.audit.terms import micros
from sharing_api.console.flows import _categories, _find
from sharing_api.console.reading import EntryView, view_of
from sharing_api.store.schema import audit_entries

if TYPE_CHECKING:
    from sharing_api.services import Services

__all__ = ["ACCESS_ACTIONS", "access_views", "full_views"]

e = audit_entries
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACCESS_ACTIONS = tuple(sorted({a.value for a in READ_ACTIONS} | {AuditAction.REQUEST_REFUSED.value}))

_PID = b'{"system":"' + PID_HASH_SYSTEM.encode() + b'","value":"'
_PID_LEN = 73
_BLOCKED = b'{"type":"reason","valueString":"blocked-practitioner"}'
_SELECTED = b'{"url":"decision-ref-user-selected","valueBoolean":true}'
_JTI = b'"urn:ietf:params:oauth:jti:'
_DESC = b'"outcomeDesc":"'
_CAT_FIRST = b'{"type":"data-category"'
_CAT_CLOSE = b'],"name":"data-categories"}'
_ROLE_LOCATION = b'"location":[{"reference":"#'
_PLACE = b'{"id":"point-of-care","managingOrganization":{"reference":"#'
_ORGS = {
    "legal-entity": b'{"id":"legal-entity",',
    "point-of-care-org": b'{"id":"point-of-care-org",',
}
_SNIPPET = 300
_ORG_SHAPE = re.compile(
    rb'\{"id":"[a-z-]+",(?:"identifier":\[\{"system":"[^"\\]*","value":"(?P<number>[^"\\]*)"\}\],)?'
    rb'(?:"name":"(?P<name>[^"\\]*)",)?"resourceType":"Organization"\}'
)


def _bytes(value: bytes) -> Any:
    return literal(value, LargeBinary)


def _after(ev: Any, marker: bytes, length: int) -> Any:
    """The ``length`` bytes after ``marker``'s first occurrence in ``ev``, NULL when absent."""
    at = _find(ev, _bytes(marker))
    return case((at > 0, func.substr(ev, at + len(marker), length)), else_=None)


def _until_quote(raw: Any) -> str | None:
    if raw is None:
        return None
    text = bytes(raw)
    end = text.find(b'"')
    if end < 0 or b"\\" in text[:end]:
        raise ValueError("odd")
    return text[:end].decode() or None


def access_views(services: Services, tenant: str, start: datetime, end: datetime) -> list[EntryView]:
    """The accesses (reads and refused requests) of ``tenant`` in ``[start, end)`` as thin views: what
    the rules read, without names (module docstring). Pending entries are sequenced first."""
    services.audit_log.drain(tenant)
    engine = services.engine
    where: list[ColumnElement[bool]] = [
        e.c.tenant == tenant,
        e.c.seq.is_not(None),
        e.c.recorded >= micros(start),
        e.c.recorded < micros(end),
        e.c.action.in_(ACCESS_ACTIONS),
    ]
    columns = (
        e.c.seq,
        e.c.recorded,
        e.c.action,
        e.c.outcome,
        e.c.purpose,
        e.c.patient_system,
        e.c.patient_value,
        e.c.agent_hpr,
        e.c.organisation,
        e.c.client_id,
    )
    if engine.dialect.name == "postgresql":
        # Detoast (and decompress) each event once: the fenced subquery hands the outer query a plain
        # value instead of the TOAST pointer each position()/substr() would fetch again.
        detoasted = e.c.event.op("||")(_bytes(b"")).label("ev")
        inner = select(*columns, detoasted).where(*where).offset(0).subquery()
        src: Any = inner
        ev = inner.c.ev
    else:
        src, ev = e, e.c.event
    first = _find(ev, _bytes(_CAT_FIRST))
    close = _find(ev, _bytes(_CAT_CLOSE))
    later = _find(func.substr(ev, close + len(_CAT_CLOSE)), _bytes(_CAT_FIRST))
    categories = case(
        (first == 0, _bytes(b"")),
        ((close > first) & (later == 0), func.substr(ev, first, close - first)),
        else_=_bytes(b"?"),
    )
    place = _after(ev, _PLACE, 24)
    stmt = select(
        *(src.c[c.name] for c in columns),
        _after(ev, _PID, _PID_LEN),
        _find(ev, _bytes(_BLOCKED)) > 0,
        _find(ev, _bytes(_SELECTED)) > 0,
        _after(ev, _JTI, 200),
        _after(ev, _DESC, _SNIPPET),
        categories,
        _after(ev, _ROLE_LOCATION, 24),
        place,
        *(func.substr(ev, _find(ev, _bytes(m)), _SNIPPET) for m in _ORGS.values()),
    )
    if src is e:
        stmt = stmt.where(*where)
    views: list[EntryView] = []
    odd: list[int] = []
    parsed: dict[bytes, tuple[str, ...] | None] = {}
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            try:
                views.append(_thin(row, parsed))
            except (ValueError, UnicodeDecodeError):
                odd.append(int(row[0]))
    if odd:
        full = full_views(services, tenant, odd)
        views.extend(full[s] for s in odd if s in full)
    views.sort(key=lambda v: v.seq or 0)
    return views


def _thin(row: Any, parsed: dict[bytes, tuple[str, ...] | None]) -> EntryView:
    """One access's thin view; ``ValueError`` when its bytes are not of the shape cut here."""
    (seq, recorded, action, outcome, purpose, p_system, p_value, hpr, organisation, client) = row[:10]
    (pid, blocked, selected, jti, desc, cats, located, place, legal, unit) = row[10:]
    raw = bytes(cats) if cats is not None else b""
    if raw not in parsed:
        try:
            parsed[raw] = _categories(orjson.loads(b"[" + raw + b"]")) if raw else ()
        except orjson.JSONDecodeError:
            parsed[raw] = None
    categories = parsed[raw]
    if categories is None:
        raise ValueError("odd categories")
    point_of_care = None
    if located is not None:  # the PractitionerRole names a location: the point of care
        if not bytes(located).startswith(b'point-of-care"}]') or place is None:
            raise ValueError("a Location of another shape")
        target = _until_quote(place)
        tail = bytes(place)[len(target or "") :]
        if target not in _ORGS or not tail.startswith(b'"},"resourceType":"Location"}'):
            raise ValueError("a Location of another shape")
        found = _ORG_SHAPE.match(bytes(legal if target == "legal-entity" else unit) or b"")
        if found is None:
            raise ValueError("an Organization of another shape")
        name, number = found.group("name"), found.group("number")
        point_of_care = (name or number or b"").decode() or None
    pid_hash = bytes(pid).decode() if pid is not None else None
    return EntryView(
        seq=int(seq),
        recorded=_EPOCH + timedelta(microseconds=int(recorded)),
        action=action,
        outcome=outcome,
        purpose=purpose,
        patient_system=p_system,
        patient_value=p_value,
        agent_hpr=hpr,
        organisation=organisation,
        client_id=client,
        practitioner_name=None,
        organisation_name=None,
        point_of_care=point_of_care,
        healthcare_service=None,
        purpose_details=None,
        categories=categories,
        reasons=("blocked-practitioner",) if blocked else (),
        user_selected=bool(selected),
        decision_ref=None,
        jti=_until_quote(jti),
        description=_until_quote(desc),
        pid_hash=pid_hash if pid_hash and len(pid_hash) == _PID_LEN else None,
    )


def full_views(services: Services, tenant: str, seqs: list[int]) -> dict[int, EntryView]:
    """The full views (names and all) of ``tenant``'s entries at ``seqs``, by index."""
    return {v.seq: v for v in map(view_of, services.audit_log.entries_at(tenant, seqs)) if v.seq is not None}
