"""The organisation flows (console.md §5.1 page 6) grouped in SQL: ``actors.flows`` of the period's
entries (the reference the tests compare with) without parsing every event.

A flow needs per read: the consuming organisation and the purpose (indexed columns), whether an
agreement covered it at that moment (the ``recorded`` column against the agreements' bounds), and its
data categories, which only the event holds. In the canonical bytes (RFC 8785, what is signed) the
categories are one entity, ``{"detail":[{"type":"data-category","valueString":...},...],"name":
"data-categories"}``; SQL cuts the details out of each event (``position``/``instr`` and ``substr``,
no JSON parsing in the database) and groups the reads by organisation, purpose, agreement segment and
those bytes: a few rows, each parsed once in Python. A read whose bytes do not have that shape (a
second data-category detail elsewhere, a fragment that is not the details array) is read and parsed
on its own, so the counts are the reference's whatever the events hold. The organisation's name is
read from its first read's event.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import ColumnElement, Integer, LargeBinary, case, func, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from sharing_api.audit.actions import READ_ACTIONS
from sharing_api.audit.terms import micros
from sharing_api.console.actors import Flow
from sharing_api.console.reading import EntryView, view_of
from sharing_api.console.rules import Cover, covered
from sharing_api.store.schema import audit_entries

if TYPE_CHECKING:
    from sqlalchemy.sql.compiler import SQLCompiler

    from sharing_api.services import Services

__all__ = ["flows"]

e = audit_entries
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST = b'{"type":"data-category"'
_CLOSE = b'],"name":"data-categories"}'


class _find(FunctionElement[int]):
    """1-based position of bytes ``needle`` in ``haystack``, 0 when absent."""

    type = Integer()
    inherit_cache = True


@compiles(_find, "postgresql")
def _find_pg(element: _find, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"position({compiler.process(needle, **kw)} in {compiler.process(haystack, **kw)})"


@compiles(_find)
def _find_other(element: _find, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"instr({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)})"


def _bytes(value: bytes) -> Any:
    return literal(value, LargeBinary)


def _segments(agreements: list[Cover]) -> Any:
    """A SQL expression giving a read's segment between the agreements' bounds."""
    bounds = sorted(
        {micros(c.start) for c in agreements} | {micros(c.end) for c in agreements if c.end is not None}
    )
    if not bounds:
        return literal(0)
    return case(*((e.c.recorded < b, i) for i, b in enumerate(bounds)), else_=len(bounds))


def _categories(details: Any) -> tuple[str, ...] | None:
    """The data categories of a details array as ``reading.view_of`` reads them; None when
    ``details`` is not an array of data-category details."""
    if not isinstance(details, list):
        return None
    found = []
    for d in details:
        if not isinstance(d, dict) or d.get("type") != "data-category":
            return None
        value = d.get("valueString")
        if isinstance(value, str) and value:
            found.append(value)
    return tuple(dict.fromkeys(found))


def _probe(organisation: str, purpose: str | None, when: datetime, categories: tuple[str, ...]) -> EntryView:
    """What ``rules.covered`` reads of every read in one group (same organisation, purpose, agreement
    segment and categories: covered or not alike)."""
    none = dict.fromkeys(
        (
            *("seq", "patient_system", "patient_value", "agent_hpr", "client_id", "practitioner_name"),
            *("organisation_name", "point_of_care", "healthcare_service", "purpose_details"),
            *("user_selected", "decision_ref", "jti", "description"),
        )
    )
    return EntryView(
        recorded=when,
        action="",
        outcome="",
        purpose=purpose,
        organisation=organisation,
        categories=categories,
        reasons=(),
        **none,
    )


def flows(
    services: Services, tenant: str, start: datetime, end: datetime, agreements: list[Cover]
) -> list[Flow]:
    """``actors.flows`` of ``tenant``'s reads in ``[start, end)`` (module docstring)."""
    services.audit_log.drain(tenant)
    where: list[ColumnElement[bool]] = [
        e.c.tenant == tenant,
        e.c.seq.is_not(None),
        e.c.recorded >= micros(start),
        e.c.recorded < micros(end),
        e.c.action.in_(sorted(a.value for a in READ_ACTIONS)),
        e.c.organisation.is_not(None),
        e.c.organisation != "",
        e.c.organisation != tenant,
    ]
    segment = _segments(agreements)
    first = _find(e.c.event, _bytes(_FIRST))
    close = _find(e.c.event, _bytes(_CLOSE))
    # the bytes after the details array hold no other data-category detail
    after = _find(func.substr(e.c.event, close + len(_CLOSE)), _bytes(_FIRST))
    fragment = case(
        (first == 0, _bytes(b"")),
        ((close > first) & (after == 0), func.substr(e.c.event, first, close - first)),
        else_=_bytes(b"?"),
    ).label("fragment")
    seg = segment.label("segment")
    with services.engine.connect() as conn:
        groups = conn.execute(
            select(e.c.organisation, e.c.purpose, seg, fragment, func.count(), func.min(e.c.recorded))
            .where(*where)
            .group_by(e.c.organisation, e.c.purpose, seg, fragment)
        ).all()
        firsts = conn.execute(select(func.min(e.c.seq)).where(*where).group_by(e.c.organisation)).scalars()
        first_seqs = list(firsts)
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    odd: list[tuple[str, str | None, int, bytes]] = []  # groups whose reads are parsed one by one

    def add(view: EntryView, n: int) -> None:
        inside = covered(view, tenant, agreements)
        for category in view.categories or ("ukjent",):
            cell = counts[(view.organisation or "", category)]
            cell[0] += n
            cell[1] += 0 if inside else n

    for organisation, purpose, segment_no, raw, n, earliest in groups:
        raw = bytes(raw) if raw is not None else b""
        categories: tuple[str, ...] | None = ()
        if raw:
            try:
                categories = _categories(orjson.loads(b"[" + raw + b"]"))
            except orjson.JSONDecodeError:
                categories = None
        if categories is None:
            odd.append((organisation, purpose, int(segment_no), raw))
            continue
        when = _EPOCH + timedelta(microseconds=int(earliest))
        add(_probe(organisation, purpose, when, categories), int(n))
    for organisation, purpose, segment_no, raw in odd:
        stmt = select(e.c.seq).where(
            *where,
            e.c.organisation == organisation,
            e.c.purpose.is_(None) if purpose is None else e.c.purpose == purpose,
            segment == segment_no,
            fragment == _bytes(raw),
        )
        with services.engine.connect() as conn:
            seqs = list(conn.execute(stmt).scalars())
        for entry in services.audit_log.entries_at(tenant, seqs):
            add(view_of(entry), 1)
    names = {
        v.organisation: v.organisation_name or v.organisation
        for v in map(view_of, services.audit_log.entries_at(tenant, first_seqs))
        if v.organisation
    }
    return [
        Flow(org, names.get(org, org), category, n, outside)
        for (org, category), (n, outside) in sorted(counts.items())
    ]
