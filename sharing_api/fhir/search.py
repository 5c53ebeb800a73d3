"""FHIR search parameters for Observation: parsed once into a ``SearchQuery`` (FHIR R4 "Search").

Repeated parameters are ANDed; comma-separated values inside one parameter are ORed. Unknown
parameters follow ``Prefer: handling=strict|lenient`` (lenient by default, and then left out of the
``self`` link so the client sees what was applied).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from sharing_api.errors import InvalidSearch, PiiInUrl
from sharing_api.fhir.dates import DateFormatError, parse_range

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")
SORTS = {
    "date": ("effective", False),
    "-date": ("effective", True),
    "_lastUpdated": ("last_updated", False),
    "-_lastUpdated": ("last_updated", True),
}
PATIENT_PARAMS = ("patient.identifier", "subject:identifier", "patient:identifier")
_CONTROL = ("_count", "_sort", "_summary", "_total", "_format", "_pretty", "_elements", "_cursor")
SUPPORTED = (*PATIENT_PARAMS, "code", "category", "date", "status", "_lastUpdated", "identifier", *_CONTROL)
_ELEVEN_DIGITS = re.compile(r"(?<!\d)\d{11}(?!\d)")


@dataclass(frozen=True, slots=True)
class Token:
    """A token search value: ``system|code``, ``code``, ``system|`` or ``|code``."""

    system: str | None
    code: str | None

    @classmethod
    def parse(cls, raw: str, name: str) -> Token:
        if "|" in raw:
            system, code = raw.split("|", 1)
            if not system and not code:
                raise InvalidSearch(f"{name}: an empty token", name)
            return cls(system, code or None)  # "" system means "no system"
        if not raw:
            raise InvalidSearch(f"{name}: an empty value", name)
        return cls(None, raw)

    def matches(self, system: str, code: str) -> bool:
        if self.system is not None and self.system != system:
            return False
        return self.code is None or self.code == code

    def __str__(self) -> str:
        if self.system is None:
            return self.code or ""
        return f"{self.system}|{self.code or ''}"


@dataclass(frozen=True, slots=True)
class DateBound:
    """One ``date``/``_lastUpdated`` value: a prefix and the half-open range it names (microseconds)."""

    prefix: str
    start: int
    end: int
    raw: str


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A parsed Observation search. Every ``tuple[tuple[...]]`` is AND of OR-groups."""

    patients: tuple[tuple[Token, ...], ...] = ()
    codes: tuple[tuple[Token, ...], ...] = ()
    categories: tuple[tuple[Token, ...], ...] = ()
    statuses: tuple[tuple[str, ...], ...] = ()
    identifiers: tuple[tuple[Token, ...], ...] = ()
    dates: tuple[DateBound, ...] = ()
    last_updated: tuple[DateBound, ...] = ()
    count: int = 50
    sort: str = "-date"
    summary_count: bool = False
    total: str = "accurate"
    applied: tuple[tuple[str, str], ...] = field(default=())
    """The parameters that were applied, in order, for the ``self`` link."""

    def query_string(self) -> str:
        return urlencode(self.applied)


def _dates(name: str, raw: str) -> DateBound:
    prefix = raw[:2] if raw[:2] in DATE_PREFIXES else "eq"
    value = raw[2:] if raw[:2] in DATE_PREFIXES else raw
    if raw[:2].isalpha() and raw[:2] not in DATE_PREFIXES:
        raise InvalidSearch(
            f"{name}: prefix {raw[:2]!r} is not supported (use {', '.join(DATE_PREFIXES)})", name
        )
    try:
        start, end = parse_range(value, require_zone_with_time=False)
    except DateFormatError as exc:
        raise InvalidSearch(f"{name}: {exc}", name) from exc
    return DateBound(prefix, start, end, raw)


def _int(name: str, raw: str, low: int, high: int) -> int:
    if not raw.isdigit():
        raise InvalidSearch(f"{name} must be a whole number", name)
    return max(low, min(int(raw), high))


def parse_search(
    params: Iterable[tuple[str, str]], *, strict: bool, default_count: int, max_count: int
) -> SearchQuery:
    """Parse ``params`` (name, value pairs, as a form or query string gives them)."""
    patients: list[tuple[Token, ...]] = []
    codes: list[tuple[Token, ...]] = []
    categories: list[tuple[Token, ...]] = []
    identifiers: list[tuple[Token, ...]] = []
    statuses: list[tuple[str, ...]] = []
    dates: list[DateBound] = []
    last_updated: list[DateBound] = []
    applied: list[tuple[str, str]] = []
    count, sort, summary_count, total = default_count, "-date", False, "accurate"
    for name, raw in params:
        if name in PATIENT_PARAMS:
            patients.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "code":
            codes.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "category":
            categories.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "identifier":
            identifiers.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "status":
            statuses.append(tuple(v for v in raw.split(",") if v))
        elif name == "date":
            dates.append(_dates(name, raw))
        elif name == "_lastUpdated":
            last_updated.append(_dates(name, raw))
        elif name == "_count":
            count = _int(name, raw, 0, max_count)
        elif name == "_sort":
            if raw not in SORTS:
                raise InvalidSearch(f"_sort must be one of {', '.join(SORTS)}", "_sort")
            sort = raw
        elif name == "_summary":
            if raw != "count":
                if strict:
                    raise InvalidSearch("only _summary=count is supported", "_summary")
                continue
            summary_count = True
        elif name == "_total":
            if raw not in ("none", "estimate", "accurate"):
                raise InvalidSearch("_total must be none, estimate or accurate", "_total")
            total = raw
        elif name in ("_format", "_pretty", "_elements", "_cursor"):
            continue
        else:
            if strict:
                raise InvalidSearch(f"unknown search parameter {name!r} (Prefer: handling=strict)", name)
            continue
        applied.append((name, raw))
    return SearchQuery(
        patients=tuple(patients),
        codes=tuple(codes),
        categories=tuple(categories),
        statuses=tuple(statuses),
        identifiers=tuple(identifiers),
        dates=tuple(dates),
        last_updated=tuple(last_updated),
        count=count,
        sort=sort,
        summary_count=summary_count or count == 0,
        total=total,
        applied=tuple(applied),
    )


def refuse_pii_in_url(params: Iterable[tuple[str, str]]) -> None:
    """Refuse a URL that carries a patient identifier: URLs end up in logs (domain.md, NHN practice)."""
    for name, raw in params:
        if name in PATIENT_PARAMS or _ELEVEN_DIGITS.search(raw) or _ELEVEN_DIGITS.search(name):
            raise PiiInUrl(
                "personal identifiers must not be sent in the URL; "
                "search with POST [base]/Observation/_search and a form body "
                "(application/x-www-form-urlencoded)",
                name,
            )
