"""Search statements compiled once per *shape* and run with the request's values (issue 12).

Building a search's SELECT with SQLAlchemy expressions and compiling it cost more CPU than everything
PostgreSQL did for that search (BENCHMARKS.md, hotspots). Two searches that differ only in their values
(another patient, another code, other dates) have the same SQL. ``templated`` splits a query, its
read scope and its paging anchor into

* a **shape**: everything that changes the SQL (which parameters, how many values, which are absent,
  the date prefixes, the sort, the page size, whether there is an anchor), and
* the **values**, by position,

and gives back the same query with every value replaced by a bind parameter named by its position. The
store builds the statement from that template with its ordinary code (so the SQL is exactly what the
literal query would give), compiles it for the connection's dialect once, and from then on runs the
compiled text with the values (``ShapeCache``). No value ever becomes part of the SQL text: the
values travel as parameters, as they did before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, bindparam
from sqlalchemy.sql import ClauseElement

from sharing_api.fhir.search import DateBound, SearchQuery, Token
from sharing_api.store.compiled import CompiledStatement

__all__ = ["ShapeCache", "Template", "templated"]

MAX_SHAPES = 256
"""Compiled statements kept per store; a search mix with more shapes than this just compiles more."""


class Template:
    """A query (and scope and anchor) whose values are bind parameters, the values by parameter name,
    and the shape they share with every query of the same SQL.

    ``shape`` and ``values`` are all a search needs once its shape is compiled; the query with bind
    parameters in place of its values (``query``, ``categories``, ``start``, ``end``, ``anchor``) only
    builds the statement, so it is made when first asked for (a new shape): making a ``bindparam`` per
    value and a copy of the query for every request was ~0.29 M instructions per search page and
    ~0.16 M per read by id, the walk for the shape and values alone is ~0.02 M (callgrind)."""

    __slots__ = ("_bound", "_source", "shape", "values")

    def __init__(self, shape: Hashable, values: dict[str, Any], source: tuple[Any, ...]) -> None:
        self.shape = shape
        self.values = values
        self._source = source
        self._bound: _Bound | None = None

    @property
    def query(self) -> SearchQuery:
        return self._bind().query

    @property
    def categories(self) -> tuple[Any, ...] | None:
        """The read scope's categories as bind parameters, sorted by value (``None``: every category)."""
        return self._bind().categories

    @property
    def start(self) -> Any:
        return self._bind().start

    @property
    def end(self) -> Any:
        return self._bind().end

    @property
    def anchor(self) -> tuple[Any, Any, bool] | None:
        """The paging anchor's (value, id) as bind parameters, and whether the page reads backwards."""
        return self._bind().anchor

    def _bind(self) -> _Bound:
        bound = self._bound
        if bound is None:
            bound, values, shape = _bound(*self._source)
            # The two walks must name the same values alike: a statement built from one and run with
            # the other's values would compare a column with another parameter's value.
            if values != self.values or shape != self.shape:
                raise RuntimeError("the search's shape and values disagree with its bind parameters")
            self._bound = bound
        return bound


@dataclass(frozen=True, slots=True)
class _Bound:
    query: SearchQuery
    categories: tuple[Any, ...] | None
    start: Any
    end: Any
    anchor: tuple[Any, Any, bool] | None


class _Binder:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.shape: list[Hashable] = []

    def bind(self, value: Any) -> Any:
        """A bind parameter standing for ``value`` (``None`` stays ``None``: absence is shape)."""
        if value is None:
            self.shape.append(None)
            return None
        name = f"v{len(self.values)}"
        self.values[name] = value
        self.shape.append(type(value).__name__)
        return bindparam(name, type_=None)

    def token(self, token: Token) -> Token:
        return Token(self.bind(token.system), self.bind(token.code))

    def groups(self, groups: tuple[tuple[Token, ...], ...]) -> tuple[tuple[Token, ...], ...]:
        self.shape.append(tuple(len(g) for g in groups))
        return tuple(tuple(self.token(t) for t in group) for group in groups)

    def words(self, groups: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        self.shape.append(tuple(len(g) for g in groups))
        return tuple(tuple(self.bind(w) for w in group) for group in groups)

    def dates(self, bounds: tuple[DateBound, ...]) -> tuple[DateBound, ...]:
        self.shape.append(tuple(b.prefix for b in bounds))
        return tuple(DateBound(b.prefix, self.bind(b.start), self.bind(b.end), "") for b in bounds)


def _bound(
    query: SearchQuery,
    categories: frozenset[str] | None,
    start: int | None,
    end: int | None,
    anchor: tuple[int, str, bool] | None,
) -> tuple[_Bound, dict[str, Any], Hashable]:
    """``templated``'s arguments with a bind parameter in place of each value; the values by parameter
    name and the shape, as ``templated`` makes them (in the same order)."""
    b = _Binder()
    template = replace(
        query,
        patients=b.groups(query.patients),
        codes=b.groups(query.codes),
        categories=b.groups(query.categories),
        statuses=b.words(query.statuses),
        identifiers=b.groups(query.identifiers),
        dates=b.dates(query.dates),
        last_updated=b.dates(query.last_updated),
        not_codes=b.groups(query.not_codes),
        not_categories=b.groups(query.not_categories),
        not_statuses=b.words(query.not_statuses),
        applied=(),
        elements=(),
    )
    cats = None
    if categories is not None:
        b.shape.append(("categories", len(categories)))
        cats = tuple(b.bind(c) for c in sorted(categories))
    bounds = (b.bind(start), b.bind(end))
    at = None
    if anchor is not None:
        b.shape.append(("anchor", anchor[2]))
        at = (b.bind(anchor[0]), b.bind(anchor[1]), anchor[2])
    shape = (tuple(b.shape), query.count, query.sort)
    return _Bound(template, cats, bounds[0], bounds[1], at), b.values, shape


_NAMES = tuple(f"v{n}" for n in range(64))
"""The bind parameters' names by position (``_Binder.bind`` names them so)."""


def _value(value: Any, values: list[Any], shape: list[Hashable]) -> None:
    if value is None:
        shape.append(None)
    else:
        values.append(value)
        shape.append(type(value).__name__)


def _tokens(groups: tuple[tuple[Token, ...], ...], values: list[Any], shape: list[Hashable]) -> None:
    shape.append(tuple(map(len, groups)))
    for group in groups:
        for token in group:
            _value(token.system, values, shape)
            _value(token.code, values, shape)


def _words(groups: tuple[tuple[str, ...], ...], values: list[Any], shape: list[Hashable]) -> None:
    shape.append(tuple(map(len, groups)))
    for group in groups:
        for word in group:
            _value(word, values, shape)


def _dates(bounds: tuple[DateBound, ...], values: list[Any], shape: list[Hashable]) -> None:
    shape.append(tuple(b.prefix for b in bounds))
    for bound in bounds:
        _value(bound.start, values, shape)
        _value(bound.end, values, shape)


def templated(
    query: SearchQuery,
    categories: frozenset[str] | None,
    start: int | None,
    end: int | None,
    anchor: tuple[int, str, bool] | None,
) -> Template:
    """``query``, a read scope's (``categories``, ``start``, ``end``) and an ``anchor`` (value, id,
    backwards) with their values taken out (see the module docstring): the shape and the values here,
    in the order ``_Binder`` names them; the query with bind parameters when the statement is built."""
    values: list[Any] = []
    shape: list[Hashable] = []
    q = query
    parts: tuple[tuple[Callable[[Any, list[Any], list[Hashable]], None], Any], ...] = (
        (_tokens, q.patients),
        (_tokens, q.codes),
        (_tokens, q.categories),
        (_words, q.statuses),
        (_tokens, q.identifiers),
        (_dates, q.dates),
        (_dates, q.last_updated),
        (_tokens, q.not_codes),
        (_tokens, q.not_categories),
        (_words, q.not_statuses),
    )
    for walk, part in parts:  # in ``_Binder``'s order
        if part:
            walk(part, values, shape)
        else:  # most parts have no groups (the shape ``()``)
            shape.append(())
    if categories is not None:
        shape.append(("categories", len(categories)))
        for category in sorted(categories):
            _value(category, values, shape)
    _value(start, values, shape)
    _value(end, values, shape)
    if anchor is not None:
        shape.append(("anchor", anchor[2]))
        _value(anchor[0], values, shape)
        _value(anchor[1], values, shape)
    names = _NAMES if len(values) <= len(_NAMES) else [f"v{n}" for n in range(len(values))]
    return Template(
        (tuple(shape), q.count, q.sort),
        {names[n]: value for n, value in enumerate(values)},
        (q, categories, start, end, anchor),
    )


class ShapeCache:
    """Compiled statements by (what, dialect, shape); built by ``build(template)`` on first use."""

    def __init__(self, max_shapes: int = MAX_SHAPES) -> None:
        self._compiled: dict[Hashable, CompiledStatement] = {}
        self._lock = threading.Lock()
        self.max_shapes = max_shapes

    def __len__(self) -> int:
        return len(self._compiled)

    def statement(
        self,
        dialect: Any,
        what: str,
        template: Template,
        build: Callable[[Any, Template], ClauseElement],
        *,
        generic_plan: bool | Callable[[Template], bool] = False,
    ) -> CompiledStatement:
        """The statement ``build(tenant_parameter, template)`` builds, compiled for ``dialect`` once per
        shape (``generic_plan``: see ``CompiledStatement``; it must follow from the shape alone, so a
        predicate of the template is asked once per shape, with the build, not per request)."""
        key = (what, dialect.name, template.shape)
        entry = self._compiled.get(key)
        if entry is None:
            stmt = build(bindparam("tenant", type_=None), template)
            what = f"{what} statement of this shape"
            generic = generic_plan(template) if callable(generic_plan) else generic_plan
            entry = CompiledStatement.of(stmt, dialect, what, generic_plan=generic)
            with self._lock:
                if len(self._compiled) >= self.max_shapes:
                    self._compiled.clear()
                self._compiled[key] = entry
        return entry

    @staticmethod
    def values(template: Template, tenant: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The values to run a statement of ``template`` with (and the ``extra`` named parameters the
        statement has besides)."""
        return {**template.values, **(extra or {}), "tenant": tenant}

    def execute(
        self,
        conn: Connection,
        what: str,
        template: Template,
        tenant: str,
        build: Callable[[Any, Template], ClauseElement],
        extra: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run the statement ``build(tenant_parameter, template)`` builds, with ``template``'s values
        (and the values of the ``extra`` named parameters the statement has besides)."""
        entry = self.statement(conn.dialect, what, template, build)
        return entry.execute(conn, self.values(template, tenant, extra))
