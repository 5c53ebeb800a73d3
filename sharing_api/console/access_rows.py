"""The period's accesses as the log-control rules read them, cut out of the events' bytes without
parsing them: the rules' input at a fraction of the cost of ``orjson.loads`` and ``reading.view_of``
on every event (BENCHMARKS.md "Auditor console over a large audit log").

The rules (``rules.run_views``) read per access the indexed columns (time, action, outcome, purpose,
patient, HPR, organisation, client) and a few facts only the event holds. Each is found in the event's
canonical bytes (RFC 8785: keys sorted, no blanks, so each fact has one spelling) with ``bytes.find``:

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

Searching in SQL instead (``position`` per fact) was tried and measured slower on PostgreSQL: its
``bytea`` search is a plain loop, and ten of them per event cost more than shipping the event.

An access whose bytes do not have the shape ``events`` builds (a fragment that does not parse, a
Location with a name or an identifier, more than one data-category entity, an escaped quote) is read
and parsed whole with ``reading.view_of``, so the rules see what they would see parsing every event;
``tests/console/test_rules.py`` and ``test_self_access.py`` compare the two on both databases. The
views carry no names: ``rules.explain_shown`` names the hits shown from their full events.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select

from sharing_api.audit.actions import READ_ACTIONS, AuditAction
from sharing_api.audit.pseudonym import PID_HASH_SYSTEM
from sharing_api.audit.terms import micros
from sharing_api.console.flows import _categories
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


def _after(event: bytes, marker: bytes, length: int) -> bytes | None:
    """The ``length`` bytes after ``marker``'s first occurrence in ``event``, None when absent."""
    at = event.find(marker)
    return None if at < 0 else event[at + len(marker) : at + len(marker) + length]


def _until_quote(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    end = raw.find(b'"')
    if end < 0 or b"\\" in raw[:end]:
        raise ValueError("a string of another shape")
    return raw[:end].decode() or None


def _categories_of(event: bytes) -> bytes:
    """The data-category details (``flows``' fragment), ``b"?"`` when the event holds another shape."""
    first = event.find(_CAT_FIRST)
    if first < 0:
        return b""
    close = event.find(_CAT_CLOSE)
    if close > first and event.find(_CAT_FIRST, close + len(_CAT_CLOSE)) < 0:
        return event[first:close]
    return b"?"


def access_views(services: Services, tenant: str, start: datetime, end: datetime) -> list[EntryView]:
    """The accesses (reads and refused requests) of ``tenant`` in ``[start, end)`` as thin views: what
    the rules read, without names (module docstring). Pending entries are sequenced first."""
    services.audit_log.drain(tenant)
    stmt = select(
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
        e.c.event,
    ).where(
        e.c.tenant == tenant,
        e.c.seq.is_not(None),
        e.c.recorded >= micros(start),
        e.c.recorded < micros(end),
        e.c.action.in_(ACCESS_ACTIONS),
    )
    views: list[EntryView] = []
    odd: list[int] = []
    parsed: dict[bytes, tuple[str, ...] | None] = {}
    with services.engine.connect() as conn:
        for row in conn.execute(stmt).yield_per(2000):
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
    (seq, recorded, action, outcome, purpose, p_system, p_value, hpr, organisation, client, event) = row
    event = bytes(event)
    raw = _categories_of(event)
    if raw not in parsed:
        try:
            parsed[raw] = _categories(orjson.loads(b"[" + raw + b"]")) if raw else ()
        except orjson.JSONDecodeError:
            parsed[raw] = None
    categories = parsed[raw]
    if categories is None:
        raise ValueError("odd categories")
    point_of_care = None
    located = _after(event, _ROLE_LOCATION, 24)
    if located is not None:  # the PractitionerRole names a location: the point of care
        place = _after(event, _PLACE, 64)
        if not located.startswith(b'point-of-care"}]') or place is None:
            raise ValueError("a Location of another shape")
        target = _until_quote(place)
        if target not in _ORGS or not place[len(target or "") :].startswith(b'"},"resourceType":"Location"}'):
            raise ValueError("a Location of another shape")
        at = event.find(_ORGS[target])
        found = _ORG_SHAPE.match(event, at) if at >= 0 else None
        if found is None:
            raise ValueError("an Organization of another shape")
        name, number = found.group("name"), found.group("number")
        point_of_care = (name or number or b"").decode() or None
    pid = _after(event, _PID, _PID_LEN)
    pid_hash = pid.decode() if pid is not None and len(pid) == _PID_LEN else None
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
        reasons=("blocked-practitioner",) if _BLOCKED in event else (),
        user_selected=_SELECTED in event,
        decision_ref=None,
        jti=_until_quote(_after(event, _JTI, 200)),
        description=_until_quote(_after(event, _DESC, _SNIPPET)),
        pid_hash=pid_hash,
    )


def full_views(services: Services, tenant: str, seqs: list[int]) -> dict[int, EntryView]:
    """The full views (names and all) of ``tenant``'s entries at ``seqs``, by index."""
    return {v.seq: v for v in map(view_of, services.audit_log.entries_at(tenant, seqs)) if v.seq is not None}
