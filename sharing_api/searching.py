"""Searching measurements within one tenant: searchset Bundles, paging cursors and ``$lastn``.

Bundles are assembled from the stored JSON bytes without parsing them again (product.md §4 step 6).
Links never carry search parameters: ``self``, ``next`` and ``previous`` are opaque cursors
(``cursors.PagingCursors``: the page sealed, no patient identifier in any form), so no patient
identifier ends up in a URL, and a cursor works only for the requester, tenant and patient it was made
for, until it expires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sharing_api.cursors import PagingCursors, Subject
from sharing_api.errors import Forbidden, Gone, InvalidSearch
from sharing_api.fhir.search import (
    DEFAULT_LIMITS,
    PatientResolver,
    SearchLimits,
    SearchQuery,
    check_limits,
    parse_search,
    whole_number,
)
from sharing_api.fhir.subsetting import subset
from sharing_api.store.observations import Anchor, ObservationStore, Page, ReadScope

MAX_LASTN = 100
QueryCheck = Callable[[SearchQuery], ReadScope]
"""Authorises a query: raises when the caller may not run it (e.g. another patient than the attested
one), else returns what the sharing decision lets it see."""


@dataclass(frozen=True, slots=True)
class SearchResult:
    """A searchset Bundle as bytes, and the ids it returns (for the audit record)."""

    body: bytes
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SearchContext:
    """Where a search runs and for whom: the tenant, its base URL, and the requester and patient (the
    one the requester's attestation names) a paging cursor is bound to."""

    tenant: str
    base: str
    requester: str
    subject: Subject | None = None


class Searcher:
    def __init__(
        self,
        store: ObservationStore,
        cursors: PagingCursors,
        *,
        default_count: int,
        max_count: int,
        limits: SearchLimits = DEFAULT_LIMITS,
    ):
        self.store = store
        self.cursors = cursors
        self.default_count = default_count
        self.max_count = max_count
        self.limits = limits

    def parse(
        self,
        params: Iterable[tuple[str, str]],
        *,
        strict: bool,
        resolve_patient: PatientResolver | None = None,
    ) -> SearchQuery:
        return parse_search(
            params,
            strict=strict,
            default_count=self.default_count,
            max_count=self.max_count,
            limits=self.limits,
            resolve_patient=resolve_patient,
        )

    def search(self, ctx: SearchContext, query: SearchQuery, check: QueryCheck) -> SearchResult:
        """The first page of ``query`` as a searchset Bundle, once ``check`` allows the query."""
        return self._page(ctx, query, None, check(query))

    def resume(self, ctx: SearchContext, cursor: str, check: QueryCheck) -> SearchResult:
        """The page a ``_cursor`` names; refused for another tenant or requester, or by ``check``."""
        record = self.cursors.open(cursor, tenant=ctx.tenant, subject=ctx.subject, requester=ctx.requester)
        if record is None:
            # Another tenant's (or patient's) cursor is indistinguishable from an expired one.
            raise Gone("the paging cursor is unknown or has expired; run the search again", "_cursor")
        if record.get("requester") != ctx.requester:
            raise Forbidden("this paging cursor belongs to another client", "_cursor")
        query = self.parse([tuple(p) for p in record["params"]], strict=False)
        scope = check(query)
        anchor = Anchor(*record["anchor"]) if record.get("anchor") else None
        return self._page(ctx, query, anchor, scope)

    def _cursor_record(self, ctx: SearchContext, query: SearchQuery, anchor: Anchor | None) -> dict[str, Any]:
        return {
            "requester": ctx.requester,
            "params": [list(p) for p in query.applied],
            "anchor": [anchor.value, anchor.id, anchor.backwards] if anchor else None,
        }

    def _page(
        self, ctx: SearchContext, query: SearchQuery, anchor: Anchor | None, scope: ReadScope
    ) -> SearchResult:
        page = (
            Page([], False, False)
            if query.summary_count
            else self.store.search(ctx.tenant, query, anchor, scope)
        )
        total = None
        if query.summary_count or query.total != "none":
            # A first page that holds every match already knows the total: no second scan.
            complete = not query.summary_count and anchor is None and not page.more_after
            total = len(page.rows) if complete else self.store.count(ctx.tenant, query, scope)
        records = [self._cursor_record(ctx, query, anchor)]
        relations = ["self"]
        if page.rows and page.more_after:
            last = page.rows[-1]
            records.append(self._cursor_record(ctx, query, Anchor(last[1], last[0])))
            relations.append("next")
        if page.rows and page.more_before:
            first = page.rows[0]
            records.append(self._cursor_record(ctx, query, Anchor(first[1], first[0], backwards=True)))
            relations.append("previous")
        # self, next and previous: sealed, no Redis write (or, when too long, stored in one round trip)
        cursors = self.cursors.make(records, tenant=ctx.tenant, subject=ctx.subject)
        links = [
            {"relation": rel, "url": f"{ctx.base}/Observation?_cursor={cursor}"}
            for rel, cursor in zip(relations, cursors, strict=True)
        ]
        resources = [subset(r[2], query.summary, query.elements) for r in page.rows]
        body = searchset(ctx.base, resources, total=total, links=links, ids=[r[0] for r in page.rows])
        return SearchResult(body, tuple(r[0] for r in page.rows))

    def lastn(
        self,
        ctx: SearchContext,
        params: Sequence[tuple[str, str]],
        *,
        strict: bool,
        check: QueryCheck,
        resolve_patient: PatientResolver | None = None,
    ) -> SearchResult:
        """``Observation/$lastn``: the newest ``max`` values per measurement type for one patient."""
        check_limits(params, self.limits)
        max_values = [v for k, v in params if k == "max"]
        rest = [(k, v) for k, v in params if k != "max"]
        query = self.parse(rest, strict=strict, resolve_patient=resolve_patient)
        if not query.patients:
            raise InvalidSearch(
                "$lastn needs the patient (patient.identifier=system|value)", "patient.identifier"
            )
        per_kind = whole_number("max", max_values[-1]) if max_values else 1
        if not 1 <= per_kind <= MAX_LASTN:
            raise InvalidSearch(f"max must be a whole number from 1 to {MAX_LASTN}", "max")
        scope = check(query)
        rows = self.store.lastn(ctx.tenant, query, per_kind, scope)
        resources = [subset(r, query.summary, query.elements) for r in rows]
        return SearchResult(
            searchset(ctx.base, resources, total=len(rows), links=[], ids=[_id_of(r) for r in rows]),
            tuple(_id_of(r) for r in rows),
        )


def searchset(
    base: str,
    resources: Sequence[bytes],
    *,
    total: int | None,
    links: list[dict[str, str]],
    resource_type: str = "Observation",
    ids: Sequence[str] | None = None,
) -> bytes:
    """A searchset Bundle around stored resources (bytes), without re-parsing them."""
    head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        head["total"] = total
    if links:  # FHIR JSON has no empty arrays (R4 §2.6.2): no links, no element
        head["link"] = links
    parts = []
    for n, data in enumerate(resources):
        obs_id = ids[n] if ids is not None else _id_of(data)
        parts.append(
            b'{"fullUrl":'
            + orjson.dumps(f"{base}/{resource_type}/{obs_id}")
            + b',"resource":'
            + data
            + b',"search":{"mode":"match"}}'
        )
    if not parts:
        return orjson.dumps(head)
    return orjson.dumps(head)[:-1] + b',"entry":[' + b",".join(parts) + b"]}"


def _id_of(data: bytes) -> str:
    # Stored JSON always starts {"resourceType":"...","id":"<uuid>", (the stores render it so).
    start = data.index(b'"id":"') + 6
    return data[start : data.index(b'"', start)].decode()
