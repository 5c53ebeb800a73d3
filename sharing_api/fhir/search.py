"""FHIR search parameters: the registry of what is supported, and parsing into a ``SearchQuery``
(FHIR R4 "Search").

``SEARCH_PARAMETERS`` (resource type -> ``SearchParameter``: type, modifiers, prefixes) and
``RESULT_PARAMETERS`` are the single statement of what this server applies; a test checks the README's
list against them, and the CapabilityStatement is to be generated from them. Repeated parameters are
ANDed; comma-separated values inside one parameter are ORed. A modifier or prefix not in the registry
is always refused (400 naming the parameter). Unknown parameters follow ``Prefer:
handling=strict|lenient`` (lenient by default, and then left out of the ``self`` link so the client
sees what was applied). Caps (``SearchLimits``) are checked before anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from sharing_api.errors import InvalidSearch, PiiInUrl
from sharing_api.fhir.dates import DateFormatError, parse_range

FHIR_MODIFIERS = (
    "missing",
    "exact",
    "contains",
    "text",
    "not",
    "above",
    "below",
    "in",
    "not-in",
    "of-type",
    "identifier",
    "iterate",
)
"""Every search modifier FHIR R4 defines ("Search", 3.1.1.5.5; ``[type]`` modifiers are resource names)."""
FHIR_DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
"""Every comparison prefix FHIR R4 defines ("Search", 3.1.1.4.4)."""
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
"""The prefixes this server applies; ``ap`` ("approximately", whose width FHIR leaves to the server) is
refused by name rather than guessed."""


@dataclass(frozen=True, slots=True)
class SearchParameter:
    """One search parameter a resource supports: the FHIR ``SearchParamType``, the FHIRPath it searches,
    and the modifiers and prefixes applied. Anything else sent with it is refused (400), never ignored."""

    name: str
    type: str
    expression: str
    documentation: str
    modifiers: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()
    """Chained parameters accepted after a dot (``patient.identifier``)."""


@dataclass(frozen=True, slots=True)
class ResultParameter:
    """A result parameter (``_count``, ``_summary``...): the values allowed (empty: free form)."""

    name: str
    documentation: str
    values: tuple[str, ...] = ()


OBSERVATION_SEARCH: tuple[SearchParameter, ...] = (
    SearchParameter(
        "patient",
        "reference",
        "Observation.subject.where(resolve() is Patient)",
        "the patient: patient.identifier / patient:identifier=system|value in a POST form body, or "
        "patient=<id> with the opaque id Patient/$match returned",
        modifiers=("identifier",),
        chains=("identifier",),
    ),
    SearchParameter(
        "subject",
        "reference",
        "Observation.subject",
        "subject:identifier=system|value (POST form body), or subject=Patient/<id> from Patient/$match",
        modifiers=("identifier",),
    ),
    SearchParameter(
        "code", "token", "Observation.code", "LOINC/SNOMED CT/NPU code: system|code", modifiers=("not",)
    ),
    SearchParameter(
        "category", "token", "Observation.category", "vital-signs and other categories", modifiers=("not",)
    ),
    SearchParameter("status", "token", "Observation.status", "final, amended, ...", modifiers=("not",)),
    SearchParameter("identifier", "token", "Observation.identifier", "the business identifier"),
    SearchParameter(
        "date", "date", "Observation.effective", "the time of measurement", prefixes=DATE_PREFIXES
    ),
    SearchParameter(
        "_lastUpdated", "date", "Observation.meta.lastUpdated", "when it was stored", prefixes=DATE_PREFIXES
    ),
)
"""The Observation search parameters (also the source of the CapabilityStatement and README list)."""

SORTS = {
    "date": ("effective", False),
    "-date": ("effective", True),
    "_lastUpdated": ("last_updated", False),
    "-_lastUpdated": ("last_updated", True),
}
SUMMARIES = ("true", "text", "data", "false", "count")
OBSERVATION_RESULT: tuple[ResultParameter, ...] = (
    ResultParameter("_count", "page size (0: the total only)"),
    ResultParameter("_sort", "sort order", tuple(SORTS)),
    ResultParameter("_summary", "summary form of each entry (FHIR: SUBSETTED tag)", SUMMARIES),
    ResultParameter("_elements", "only these top-level elements (FHIR: SUBSETTED tag)"),
    ResultParameter("_total", "whether to count the matches", ("none", "estimate", "accurate")),
)
CONSENT_SEARCH: tuple[SearchParameter, ...] = (
    SearchParameter(
        "patient",
        "reference",
        "Consent.patient",
        "patient.identifier / patient:identifier=system|value in a POST form body",
        modifiers=("identifier",),
        chains=("identifier",),
    ),
)
PATIENT_SEARCH: tuple[SearchParameter, ...] = (
    SearchParameter(
        "identifier",
        "token",
        "Patient.identifier",
        "POST Patient/_search with identifier=system|value (form body); answers an opaque Patient id",
    ),
)
CAREPLAN_SEARCH: tuple[SearchParameter, ...] = (
    SearchParameter(
        "patient",
        "reference",
        "CarePlan.subject",
        "patient.identifier / patient:identifier=system|value in a POST form body (required)",
        modifiers=("identifier",),
        chains=("identifier",),
    ),
    SearchParameter("status", "token", "CarePlan.status", "active, revoked, completed, ..."),
    SearchParameter("category", "token", "CarePlan.category", "system|code or code"),
    SearchParameter("date", "date", "CarePlan.period", "the period the plan covers", prefixes=DATE_PREFIXES),
)
SEARCH_PARAMETERS: dict[str, tuple[SearchParameter, ...]] = {
    "Observation": OBSERVATION_SEARCH,
    "Consent": CONSENT_SEARCH,
    "Patient": PATIENT_SEARCH,
    "CarePlan": CAREPLAN_SEARCH,
}
"""The registry: resource type -> the search parameters it supports (AuditEvent's live in its route)."""
RESULT_PARAMETERS: dict[str, tuple[ResultParameter, ...]] = {"Observation": OBSERVATION_RESULT}

PATIENT_PARAMS = ("patient.identifier", "subject:identifier", "patient:identifier")
PATIENT_REFERENCES = ("patient", "subject")
_IGNORED = ("_format", "_pretty", "_cursor")
"""Handled elsewhere: ``_format`` by content negotiation, ``_cursor`` by paging; ``_pretty`` changes
nothing in the result's content."""
_CONTROL = (*(p.name for p in OBSERVATION_RESULT), *_IGNORED)
SUPPORTED = (*PATIENT_PARAMS, *(p.name for p in OBSERVATION_SEARCH), *_CONTROL)
_ELEVEN_DIGITS = re.compile(r"(?<!\d)\d{11}(?!\d)")
_ASCII_NUMBER = re.compile(r"[0-9]{1,9}")
_ELEMENT = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}(\[x\])?")


@dataclass(frozen=True, slots=True)
class SearchLimits:
    """Caps checked on the raw parameters before anything is parsed, read, cached or audited."""

    max_parameters: int = 50
    max_values: int = 100
    """Comma-separated values in one parameter."""
    max_value_bytes: int = 256
    """UTF-8 bytes of one value (and of one parameter name)."""


DEFAULT_LIMITS = SearchLimits()
MAX_CURSOR_BYTES = 1500
"""A paging cursor (``_cursor``) is the server's own opaque output, not a search value: it is capped at
this many bytes instead of ``max_value_bytes`` (a sealed cursor carries its page: ``cursors``)."""


def check_limits(params: Sequence[tuple[str, str]], limits: SearchLimits = DEFAULT_LIMITS) -> None:
    """Refuse a search beyond ``limits`` (400 naming the parameter). Cheap: no parsing, no I/O."""
    if len(params) > limits.max_parameters:
        name = params[limits.max_parameters][0][: limits.max_value_bytes]
        raise InvalidSearch(
            f"at most {limits.max_parameters} search parameters are accepted (got {len(params)})", name
        )
    for name, raw in params:
        if len(name.encode()) > limits.max_value_bytes:
            raise InvalidSearch(
                f"a parameter name is longer than {limits.max_value_bytes} bytes", name[:64] + "..."
            )
        if name == "_cursor":
            if len(raw.encode()) > MAX_CURSOR_BYTES:
                raise InvalidSearch(f"_cursor: longer than {MAX_CURSOR_BYTES} bytes", name)
            continue
        values = raw.split(",")
        if len(values) > limits.max_values:
            raise InvalidSearch(f"{name}: at most {limits.max_values} comma-separated values", name)
        if any(len(v.encode()) > limits.max_value_bytes for v in values):
            raise InvalidSearch(f"{name}: a value is longer than {limits.max_value_bytes} bytes", name)


def split_modifier(name: str) -> tuple[str, str | None]:
    """``code:not`` -> ``("code", "not")``; ``patient.identifier`` is a chain, kept whole."""
    base, sep, modifier = name.partition(":")
    return base, (modifier if sep else None)


def refuse_modifier(resource: str, name: str, supported: Iterable[SearchParameter]) -> None:
    """A modifier this server does not apply is refused (400 naming it), whatever ``Prefer`` says:
    ignoring ``code:not=X`` would return exactly what the client asked to leave out."""
    base, modifier = split_modifier(name)
    if modifier is None:
        return
    param = next((p for p in supported if p.name == base), None)
    if param is None or modifier not in param.modifiers:
        allowed = ", ".join(f":{m}" for m in param.modifiers) if param and param.modifiers else "none"
        raise InvalidSearch(
            f"{resource} search: the modifier :{modifier} of {base!r} is not supported "
            f"(supported modifiers: {allowed})",
            name,
        )


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
    """A parsed Observation search. Every ``tuple[tuple[...]]`` is AND of OR-groups; the ``not_*``
    groups exclude what any of their values match (``:not``)."""

    patients: tuple[tuple[Token, ...], ...] = ()
    codes: tuple[tuple[Token, ...], ...] = ()
    categories: tuple[tuple[Token, ...], ...] = ()
    statuses: tuple[tuple[str, ...], ...] = ()
    identifiers: tuple[tuple[Token, ...], ...] = ()
    dates: tuple[DateBound, ...] = ()
    last_updated: tuple[DateBound, ...] = ()
    not_codes: tuple[tuple[Token, ...], ...] = ()
    not_categories: tuple[tuple[Token, ...], ...] = ()
    not_statuses: tuple[tuple[str, ...], ...] = ()
    count: int = 50
    sort: str = "-date"
    summary_count: bool = False
    summary: str | None = None
    """``_summary`` other than ``count`` (``true``, ``text``, ``data``, ``false``)."""
    elements: tuple[str, ...] = ()
    total: str = "accurate"
    applied: tuple[tuple[str, str], ...] = field(default=())
    """The parameters that were applied, in order, for the ``self`` link."""

    def query_string(self) -> str:
        return urlencode(self.applied)


def parse_date_bound(name: str, raw: str) -> DateBound:
    """One ``date`` value: an optional prefix and a FHIR date(time), as the half-open range it names."""
    head = raw[:2]
    if head.isascii() and head.isalpha():
        if head not in DATE_PREFIXES:
            known = "is not supported" if head in FHIR_DATE_PREFIXES else "is not a FHIR prefix"
            raise InvalidSearch(
                f"{name}: prefix {head!r} {known} (supported: {', '.join(DATE_PREFIXES)})", name
            )
        prefix, value = head, raw[2:]
    else:
        prefix, value = "eq", raw
    try:
        start, end = parse_range(value, require_zone_with_time=False)
    except DateFormatError as exc:
        raise InvalidSearch(f"{name}: {exc}", name) from exc
    return DateBound(prefix, start, end, raw)


def _codes(name: str, raw: str) -> tuple[str, ...]:
    codes = tuple(raw.split(","))
    if not all(codes):
        raise InvalidSearch(f"{name}: an empty value", name)
    return codes


def whole_number(name: str, raw: str) -> int:
    """A non-negative ASCII whole number (``str.isdigit`` also accepts ``²`` and other Unicode digits,
    which ``int`` then refuses: that was a 500)."""
    if not _ASCII_NUMBER.fullmatch(raw):
        raise InvalidSearch(f"{name} must be a whole number (ASCII digits)", name)
    return int(raw)


def _int(name: str, raw: str, low: int, high: int) -> int:
    return max(low, min(whole_number(name, raw), high))


def summary_elements(raw: str, name: str = "_elements") -> tuple[str, ...]:
    """``_elements=a,b``: top-level element names (FHIR R4 "Search", 3.1.1.5.10)."""
    names = tuple(v.strip() for v in raw.split(","))
    for element in names:
        if not _ELEMENT.fullmatch(element):
            raise InvalidSearch(f"{name}: {element!r} is not an element name", name)
    return names


def read_subsetting(params: Sequence[tuple[str, str]]) -> tuple[str | None, tuple[str, ...]]:
    """``_summary``/``_elements`` of a read (FHIR R4 "Search", 3.1.1.5.9-10, also allowed on read):
    (summary form or ``None``, elements). ``_summary=count`` means nothing for one resource: refused."""
    check_limits(params)
    summary: str | None = None
    elements: tuple[str, ...] = ()
    for name, raw in params:
        if name == "_summary":
            if raw not in SUMMARIES or raw == "count":
                raise InvalidSearch("_summary on a read is one of true, text, data, false", name)
            summary = None if raw == "false" else raw
        elif name == "_elements":
            elements = summary_elements(raw)
    if summary is not None and elements:
        raise InvalidSearch("_summary and _elements cannot be combined", "_elements")
    return summary, elements


PatientResolver = Callable[[str], Token]
"""Turns the opaque id ``Patient/$match`` returned into the patient's identifier token (a token that
matches nobody when the id is unknown, expired, or bound to another requester or tenant)."""


def parse_search(
    params: Iterable[tuple[str, str]],
    *,
    strict: bool,
    default_count: int,
    max_count: int,
    limits: SearchLimits = DEFAULT_LIMITS,
    resolve_patient: PatientResolver | None = None,
) -> SearchQuery:
    """Parse ``params`` (name, value pairs, as a form or query string gives them).

    Checks ``limits`` first. An unsupported modifier or prefix is always refused; an unknown parameter
    only under ``Prefer: handling=strict`` (FHIR R4 "Search", 3.1.1.2).
    """
    params = list(params)
    check_limits(params, limits)
    patients: list[tuple[Token, ...]] = []
    codes: list[tuple[Token, ...]] = []
    categories: list[tuple[Token, ...]] = []
    identifiers: list[tuple[Token, ...]] = []
    statuses: list[tuple[str, ...]] = []
    not_codes: list[tuple[Token, ...]] = []
    not_categories: list[tuple[Token, ...]] = []
    not_statuses: list[tuple[str, ...]] = []
    dates: list[DateBound] = []
    last_updated: list[DateBound] = []
    applied: list[tuple[str, str]] = []
    elements: tuple[str, ...] = ()
    count, sort, summary_count, summary, total = default_count, "-date", False, None, "accurate"
    for name, raw in params:
        if name not in PATIENT_PARAMS:
            refuse_modifier("Observation", name, OBSERVATION_SEARCH)
        if name in PATIENT_PARAMS:
            patients.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name in PATIENT_REFERENCES:
            if resolve_patient is None:
                raise InvalidSearch(
                    f"{name}: search by the patient's identifier (patient.identifier), or by the id "
                    "Patient/$match returned",
                    name,
                )
            ref = raw.removeprefix("Patient/")
            if not ref or "," in raw or "/" in ref:
                raise InvalidSearch(f"{name}: one patient, as Patient/<id> from Patient/$match", name)
            token = resolve_patient(ref)
            patients.append((token,))
            applied.append(("patient.identifier", str(token)))
            continue
        elif name == "code":
            codes.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "code:not":
            not_codes.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "category":
            categories.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "category:not":
            not_categories.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "identifier":
            identifiers.append(tuple(Token.parse(v, name) for v in raw.split(",")))
        elif name == "status":
            statuses.append(_codes(name, raw))
        elif name == "status:not":
            not_statuses.append(_codes(name, raw))
        elif name == "date":
            dates.append(parse_date_bound(name, raw))
        elif name == "_lastUpdated":
            last_updated.append(parse_date_bound(name, raw))
        elif name == "_count":
            count = _int(name, raw, 0, max_count)
        elif name == "_sort":
            if raw not in SORTS:
                raise InvalidSearch(f"_sort must be one of {', '.join(SORTS)}", "_sort")
            sort = raw
        elif name == "_summary":
            if raw not in SUMMARIES:
                raise InvalidSearch(f"_summary must be one of {', '.join(SUMMARIES)}", "_summary")
            summary_count = raw == "count"
            summary = None if raw in ("count", "false") else raw
        elif name == "_elements":
            elements = summary_elements(raw)
        elif name == "_total":
            if raw not in ("none", "estimate", "accurate"):
                raise InvalidSearch("_total must be none, estimate or accurate", "_total")
            total = raw
        elif name in _IGNORED:
            continue
        else:
            if strict:
                raise InvalidSearch(f"unknown search parameter {name!r} (Prefer: handling=strict)", name)
            continue
        applied.append((name, raw))
    if summary is not None and elements:
        raise InvalidSearch("_summary and _elements cannot be combined", "_elements")
    return SearchQuery(
        patients=tuple(patients),
        codes=tuple(codes),
        categories=tuple(categories),
        statuses=tuple(statuses),
        identifiers=tuple(identifiers),
        dates=tuple(dates),
        last_updated=tuple(last_updated),
        not_codes=tuple(not_codes),
        not_categories=tuple(not_categories),
        not_statuses=tuple(not_statuses),
        count=count,
        sort=sort,
        summary_count=summary_count or count == 0,
        summary=summary,
        elements=elements,
        total=total,
        applied=tuple(applied),
    )


def parse_patient_search(
    resource: str, params: Sequence[tuple[str, str]], limits: SearchLimits = DEFAULT_LIMITS
) -> tuple[Token, ...]:
    """A search of ``resource`` by patient only (``CONSENT_SEARCH``): the patient tokens named. Caps and
    modifiers are checked as for Observation; ``_count``/``_format`` must be well formed; other unknown
    parameters are ignored (lenient)."""
    check_limits(params, limits)
    tokens: list[Token] = []
    for name, raw in params:
        if name in PATIENT_PARAMS:
            tokens.extend(Token.parse(v, name) for v in raw.split(","))
            continue
        refuse_modifier(resource, name, SEARCH_PARAMETERS[resource])
        if name == "_count":
            whole_number(name, raw)
    return tuple(tokens)


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
