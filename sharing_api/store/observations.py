"""Observation persistence: versioned writes, idempotent creates, keyset-paged search, ``$lastn``.

Idempotency is the primary key of ``observation_identifiers`` (tenant, system, value): two concurrent
creates of one business identifier cannot both commit, whatever the interleaving. The loser reads the
winner's id (FHIR conditional-create semantics: 200 with the existing resource).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from sharing_api.errors import Conflict, NotFound, PreconditionFailed, UnprocessableResource
from sharing_api.fhir.dates import format_instant
from sharing_api.fhir.search import DateBound, SearchQuery, Token
from sharing_api.fhir.validation import ValidObservation
from sharing_api.store import bulk, one_statement
from sharing_api.store.schema import (
    observation_history,
    observation_identifiers,
    observation_tokens,
    observations,
)
from sharing_api.store.search_shapes import ShapeCache, Template, templated

o = observations
CHUNK = 500
"""Rows per multi-row statement (well below SQLite's 32,766 bound parameters)."""


_CURRENT_COLUMNS = (o.c.version_id, o.c.last_updated, o.c.data, o.c.patient_system, o.c.patient_value)
_CURRENT = select(*_CURRENT_COLUMNS).where(o.c.tenant == bindparam("tenant"), o.c.id == bindparam("obs_id"))
"""The current version of one observation, built once (every read and write looks it up)."""


_CLAIM_SQL = (
    "INSERT INTO observation_identifiers (tenant, system, value, observation_id) "
    "SELECT %s, c->>0, c->>1, c->>2 FROM json_array_elements(%s::json) AS c "
    "ON CONFLICT DO NOTHING RETURNING system, value, observation_id"
)
"""``ObservationStore._claim`` on PostgreSQL: business identifiers as a JSON array of
``[system, value, observation_id]``, inserted unless claimed already (the primary key decides)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored version: the bytes served, and what the response headers need."""

    id: str
    version_id: int
    last_updated: int
    data: bytes
    created: bool = False
    patient: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class NewRows:
    """What creating one observation writes: the stored JSON and the row of each table."""

    data: bytes
    observation: dict[str, Any]
    history: dict[str, Any]
    tokens: list[dict[str, Any]]
    identifiers: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Anchor:
    """A keyset position: the sort value and id of the row a page starts after (or before)."""

    value: int
    id: str
    backwards: bool = False


@dataclass(frozen=True, slots=True)
class ReadScope:
    """What a sharing decision lets a read see: categories (``None``: all), an effective-time window,
    or nothing at all. Applied inside the SQL, so data outside it is never read."""

    categories: frozenset[str] | None = None
    start: int | None = None
    end: int | None = None
    nothing: bool = False


EVERYTHING = ReadScope()


class Lead(StrEnum):
    """The index that leads every plan of a search shape, whatever its values (issue 12): the shapes
    PostgreSQL plans once per connection (``CompiledStatement.generic_plan``), named by that index.
    ``ObservationStore.lead_of`` is the registry; tests/store/test_generic_plans.py proves, at 100,000
    rows, each shape it gives a lead: its generic plan starts at this index and handles no more rows
    than the plan made with the values, for a patient with many and one with few observations, a
    common and a rare code, a narrow and a wide period.

    A shape without a lead is planned with its values, because its best plan depends on them
    (BENCHMARKS.md, "Tenth pass: which search shapes may be planned once", has the plans): a code without
    its system or a category (a rare code is best found through the patient's tokens, a common one by
    reading the patient's observations whole, and a generic plan picks one for both: 79 instead of 46
    buffers for a rare code, 1,484 instead of 108 for a common one over the whole series; a category 3,002
    instead of 186); a category beside the driving code (each hit compared with the patient's category
    tokens: 71,604 rows handled for a page instead of 2,632, growing with the square of the history); date
    bounds on the patient's observations in a page (a wide period sorted whole instead of walked in order:
    59 instead of 8 buffers), or with a read scope of categories (each observation of the period probed
    for its category instead of one hash join: 2,944 instead of 190 buffers)."""

    PATIENT_CODE = "ix_observation_tokens_patient"
    """One patient, one ``system|code`` and the query's dates (``_driver``): the patient's tokens of
    that code in date order from the date bound (or the read scope's period), then each hit by
    primary key."""
    PATIENT_DATE = "ix_observations_patient_date"
    """One patient (``system|value``) and nothing else to match, and a read scope without categories:
    a page sorted by date walks the patient's observations in date order and stops after it; a count
    (which may have date bounds) reads them in that index alone."""


_NOTHING_ELSE = SearchQuery(count=0)
"""A query that matches by nothing: what a led shape's query is, its led parts and result parameters
taken out (``ObservationStore.lead_of``), so that a parameter added later leaves a shape unled."""


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[tuple[str, int, bytes, int]]
    """(id, sort value, data, last_updated) in the requested order."""
    more_after: bool
    more_before: bool


_BY_ID = SearchQuery()
"""A read by id has no search parameters, only its read scope (made once: a frozen dataclass of 18
fields costs ~10k instructions to make)."""


def render(resource_type: str, resource: dict[str, Any], resource_id: str, version: int, now: int) -> bytes:
    """The JSON to store and serve: ``resource`` with the server's ``id`` and ``meta`` first.

    Client-sent ``meta.versionId``/``lastUpdated`` are replaced; other ``meta`` (profile, source, tags)
    is kept. Stored JSON always starts ``{"resourceType":...,"id":...`` (search bundles rely on it).
    """
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    out: dict[str, Any] = {
        "resourceType": resource_type,
        "id": resource_id,
        "meta": {"versionId": str(version), "lastUpdated": format_instant(now), **meta},
    }
    out.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta"))
    return orjson.dumps(out)


class ObservationStore:
    """Observations of all tenants; every method takes the tenant and touches no other tenant's rows."""

    def __init__(self, engine: Engine, clock: Callable[[], int]):
        self.engine = engine
        self.clock = clock
        self._shapes = ShapeCache()

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def statement(self) -> Iterator[Connection]:
        """A connection for one read-only statement. On PostgreSQL it runs in autocommit: the statement
        is its own transaction (the same snapshot a one-statement transaction has) without the BEGIN
        and COMMIT round trips; on SQLite, a read transaction."""
        if self.engine.dialect.name != "postgresql":
            with self.reading() as conn:
                yield conn
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn

    # -- writes ---------------------------------------------------------------------------------

    def _owner_of(self, conn: Connection, tenant: str, idents: Sequence[tuple[str, str]]) -> str | None:
        if not idents:
            return None
        i = observation_identifiers
        cond = or_(*(and_(i.c.system == s, i.c.value == v) for s, v in idents))
        return conn.execute(select(i.c.observation_id).where(i.c.tenant == tenant, cond).limit(1)).scalar()

    def _current(self, conn: Connection, tenant: str, obs_id: str) -> Stored | None:
        return self._stored(obs_id, conn.execute(_CURRENT, {"tenant": tenant, "obs_id": obs_id}).first())

    @staticmethod
    def _stored(obs_id: str, row: Any) -> Stored | None:
        if row is None:
            return None
        return Stored(
            obs_id,
            row.version_id,
            row.last_updated,
            row.data,
            patient=(row.patient_system, row.patient_value),
        )

    @staticmethod
    def _token_rows(tenant: str, obs_id: str, valid: ValidObservation) -> list[dict[str, Any]]:
        """Search tokens, each with the patient and effective time (``ix_observation_tokens_patient``)."""
        common = {
            "tenant": tenant,
            "observation_id": obs_id,
            "patient_system": valid.patient[0],
            "patient_value": valid.patient[1],
            "effective_start": valid.effective[0],
            "effective_end": valid.effective[1],
        }
        return [{**common, "param": "code", "system": s, "code": c} for s, c in valid.codes] + [
            {**common, "param": "category", "system": s, "code": c} for s, c in valid.categories
        ]

    @staticmethod
    def _identifier_rows(tenant: str, obs_id: str, valid: ValidObservation) -> list[dict[str, Any]]:
        return [
            {"tenant": tenant, "system": s, "value": v, "observation_id": obs_id}
            for s, v in valid.identifiers
        ]

    def _index(self, conn: Connection, tenant: str, obs_id: str, valid: ValidObservation) -> None:
        rows = self._token_rows(tenant, obs_id, valid)
        if rows:
            conn.execute(insert(observation_tokens), rows)
        if valid.identifiers:
            conn.execute(insert(observation_identifiers), self._identifier_rows(tenant, obs_id, valid))

    def new_rows(self, tenant: str, obs_id: str, valid: ValidObservation, now: int) -> NewRows:
        """The rows ``create_many`` writes for ``valid`` created as ``obs_id`` at ``now`` (bulk loads
        write the same rows with ``sharing_api.store.bulk.copy_observations``)."""
        data = render("Observation", valid.resource, obs_id, 1, now)
        first = {"tenant": tenant, "id": obs_id, "version_id": 1, "last_updated": now}
        return NewRows(
            data,
            {**first, "data": data, **self._columns(valid)},
            {**first, "data": data},
            self._token_rows(tenant, obs_id, valid),
            self._identifier_rows(tenant, obs_id, valid),
        )

    def _columns(self, valid: ValidObservation) -> dict[str, Any]:
        return {
            "patient_system": valid.patient[0],
            "patient_value": valid.patient[1],
            "status": valid.status,
            "kind": valid.kind[:256],
            "effective_start": valid.effective[0],
            "effective_end": valid.effective[1],
        }

    def create_in(self, conn: Connection, tenant: str, valid: ValidObservation) -> Stored:
        """Create inside ``conn``'s transaction; return the existing one for a known business identifier."""
        existing = self._owner_of(conn, tenant, valid.identifiers)
        if existing:
            current = self._current(conn, tenant, existing)
            assert current is not None
            return current
        obs_id, now = str(uuid.uuid4()), self.clock()
        data = render("Observation", valid.resource, obs_id, 1, now)
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(o).values(
                        tenant=tenant,
                        id=obs_id,
                        version_id=1,
                        last_updated=now,
                        data=data,
                        **self._columns(valid),
                    )
                )
                conn.execute(
                    insert(observation_history).values(
                        tenant=tenant, id=obs_id, version_id=1, last_updated=now, data=data
                    )
                )
                self._index(conn, tenant, obs_id, valid)
        except IntegrityError:
            # A concurrent create of the same identifier committed first: the constraint decided.
            existing = self._owner_of(conn, tenant, valid.identifiers)
            current = self._current(conn, tenant, existing) if existing else None
            if current is None:
                raise
            return current
        return Stored(obs_id, 1, now, data, created=True)

    def _owners(
        self, conn: Connection, tenant: str, idents: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """The observation id of each known business identifier among ``idents`` (one SELECT per
        ``CHUNK`` identifiers)."""
        i = observation_identifiers
        out: dict[tuple[str, str], str] = {}
        unique = sorted(set(idents))
        for at in range(0, len(unique), CHUNK):
            by_system: dict[str, list[str]] = {}
            for system, value in unique[at : at + CHUNK]:
                by_system.setdefault(system, []).append(value)
            # system = ? AND value IN (...): primary-key lookups (a row-value IN list is not one).
            alts = [and_(i.c.system == sys_, i.c.value.in_(values)) for sys_, values in by_system.items()]
            rows = conn.execute(
                select(i.c.system, i.c.value, i.c.observation_id).where(i.c.tenant == tenant, or_(*alts))
            )
            out.update(((r.system, r.value), r.observation_id) for r in rows)
        return out

    def _currents(self, conn: Connection, tenant: str, ids: Sequence[str]) -> dict[str, Stored]:
        out: dict[str, Stored] = {}
        unique = sorted(set(ids))
        for at in range(0, len(unique), CHUNK):
            rows = conn.execute(
                select(
                    o.c.id, o.c.version_id, o.c.last_updated, o.c.data, o.c.patient_system, o.c.patient_value
                ).where(o.c.tenant == tenant, o.c.id.in_(unique[at : at + CHUNK]))
            )
            out.update(
                (
                    r.id,
                    Stored(
                        r.id,
                        r.version_id,
                        r.last_updated,
                        r.data,
                        patient=(r.patient_system, r.patient_value),
                    ),
                )
                for r in rows
            )
        return out

    def _claim(
        self, conn: Connection, tenant: str, claims: list[dict[str, Any]]
    ) -> set[tuple[str, str, str]]:
        """Insert business identifiers; return the (system, value, observation) rows that were inserted.

        ``ON CONFLICT DO NOTHING RETURNING``: a row another transaction committed first is not
        returned, and nothing fails, so no savepoint is needed (the primary key decides, as before)."""
        table = observation_identifiers
        if conn.dialect.name == "postgresql":
            # The rows as one JSON parameter (serialised in C): a short fixed statement, where
            # "insertmanyvalues" had psycopg rewrite a 2,000-placeholder statement on every Bundle.
            sent = orjson.dumps([[c["system"], c["value"], c["observation_id"]] for c in claims]).decode()
            found = conn.exec_driver_sql(_CLAIM_SQL, (tenant, sent))
            return {(system, value, obs_id) for system, value, obs_id in found}
        stmt: Any = sqlite_insert(table).on_conflict_do_nothing()
        # executemany with RETURNING: SQLAlchemy sends multi-row INSERTs ("insertmanyvalues").
        rows = conn.execute(stmt.returning(table.c.system, table.c.value, table.c.observation_id), claims)
        return {(r.system, r.value, r.observation_id) for r in rows}

    def create_many(
        self, conn: Connection, tenant: str, valids: Sequence[ValidObservation]
    ) -> list[tuple[Stored, bool]]:
        """Create ``valids`` in ``conn``'s transaction with a handful of set-based statements.

        Returns per item the stored observation and whether it already existed: an item whose business
        identifier is known (stored before, earlier in ``valids``, or committed meanwhile by another
        transaction) is not written; the existing observation is returned for the caller to compare.
        One SELECT of the known identifiers, the identifiers' INSERT (``_claim``: their primary key
        stays the idempotency guarantee), then the other tables' rows (``bulk.insert_rows``: binary
        ``COPY`` on PostgreSQL, multi-row INSERTs elsewhere).
        """
        known = self._owners(conn, tenant, [x for v in valids for x in v.identifiers])
        now = self.clock()
        plan: list[str] = []  # the id each item is stored under
        fresh: dict[str, int] = {}  # new id -> position in valids
        for n, valid in enumerate(valids):
            owner = next((known[x] for x in valid.identifiers if x in known), None)
            if owner is None:
                owner = str(uuid.uuid4())
                fresh[owner] = n
                known.update(dict.fromkeys(valid.identifiers, owner))
            plan.append(owner)
        claims = [
            row for obs_id, n in fresh.items() for row in self._identifier_rows(tenant, obs_id, valids[n])
        ]
        won = self._claim(conn, tenant, claims) if claims else set()
        lost = {
            c["observation_id"] for c in claims if (c["system"], c["value"], c["observation_id"]) not in won
        }
        if lost:  # a concurrent create committed first: give back what we did claim, use its rows
            i = observation_identifiers
            conn.execute(delete(i).where(i.c.tenant == tenant, i.c.observation_id.in_(sorted(lost))))
            winners = self._owners(
                conn, tenant, [x for obs_id in lost for x in valids[fresh[obs_id]].identifiers]
            )
            remap = {}
            for obs_id in lost:
                n = fresh.pop(obs_id)
                remap[obs_id] = next(winners[x] for x in valids[n].identifiers if x in winners)
            plan = [remap.get(p, p) for p in plan]
        new = {obs_id: self.new_rows(tenant, obs_id, valids[n], now) for obs_id, n in fresh.items()}
        data = {obs_id: rows.data for obs_id, rows in new.items()}
        obs_rows = [rows.observation for rows in new.values()]
        history = [rows.history for rows in new.values()]
        tokens = [row for rows in new.values() for row in rows.tokens]
        for table, rows_ in ((o, obs_rows), (observation_history, history), (observation_tokens, tokens)):
            bulk.insert_rows(conn, table, rows_)  # one binary COPY per table on PostgreSQL
        existing = self._currents(conn, tenant, [p for p in plan if p not in fresh])
        out: list[tuple[Stored, bool]] = []
        for n, obs_id in enumerate(plan):
            if fresh.get(obs_id) == n:
                out.append((Stored(obs_id, 1, now, data[obs_id], created=True), False))
            elif obs_id in existing:
                out.append((existing[obs_id], True))
            else:  # created earlier in this same call
                out.append((Stored(obs_id, 1, now, data[obs_id]), True))
        return out

    def create(self, tenant: str, valid: ValidObservation) -> Stored:
        for _ in range(3):
            try:
                with self.writing() as conn:
                    return self.create_in(conn, tenant, valid)
            except IntegrityError:
                continue  # lost a race between read and insert outside a savepoint-capable driver path
        raise Conflict("the observation could not be stored; retry")

    def update_in(
        self,
        conn: Connection,
        tenant: str,
        obs_id: str,
        valid: ValidObservation,
        *,
        if_match: int | None = None,
    ) -> Stored:
        """A new version of an existing observation (``PUT``); the patient cannot change."""
        row = conn.execute(
            select(o.c.version_id, o.c.patient_system, o.c.patient_value)
            .where(o.c.tenant == tenant, o.c.id == obs_id)
            .with_for_update()
        ).first()
        if row is None:
            raise NotFound(f"Observation/{obs_id} is not known; create it with POST", "Observation.id")
        if if_match is not None and if_match != row.version_id:
            raise PreconditionFailed(
                f"version {if_match} is not the current version ({row.version_id})", "If-Match"
            )
        if (row.patient_system, row.patient_value) != valid.patient:
            raise UnprocessableResource(
                "a correction cannot move a measurement to another patient; "
                "mark it entered-in-error and publish a new one",
                "Observation.subject.identifier",
            )
        owner = self._owner_of(conn, tenant, valid.identifiers)
        if owner is not None and owner != obs_id:
            raise Conflict(
                "this business identifier belongs to another Observation", "Observation.identifier"
            )
        version, now = row.version_id + 1, self.clock()
        data = render("Observation", valid.resource, obs_id, version, now)
        conn.execute(
            update(o)
            .where(o.c.tenant == tenant, o.c.id == obs_id)
            .values(version_id=version, last_updated=now, data=data, **self._columns(valid))
        )
        conn.execute(
            insert(observation_history).values(
                tenant=tenant, id=obs_id, version_id=version, last_updated=now, data=data
            )
        )
        t, i = observation_tokens, observation_identifiers
        conn.execute(delete(t).where(t.c.tenant == tenant, t.c.observation_id == obs_id))
        conn.execute(delete(i).where(i.c.tenant == tenant, i.c.observation_id == obs_id))
        self._index(conn, tenant, obs_id, valid)
        return Stored(obs_id, version, now, data)

    def update(
        self, tenant: str, obs_id: str, valid: ValidObservation, *, if_match: int | None = None
    ) -> Stored:
        with self.writing() as conn:
            return self.update_in(conn, tenant, obs_id, valid, if_match=if_match)

    def owner_of_identifier(
        self, conn: Connection, tenant: str, idents: Sequence[tuple[str, str]]
    ) -> str | None:
        return self._owner_of(conn, tenant, idents)

    # -- reads ----------------------------------------------------------------------------------

    def read(self, tenant: str, obs_id: str, scope: ReadScope | None = None) -> Stored | None:
        """The current version; with ``scope``, only if the sharing decision lets it be seen."""
        if scope is None:
            with self.statement() as conn:
                return self._current(conn, tenant, obs_id)
        if scope.nothing:
            return None
        template = self._template(_BY_ID, scope)
        # By primary key whatever the scope: one plan serves every value (tests/store/test_generic_plans)
        stmt = self._shapes.statement(
            self.engine.dialect, "read", template, self._read_statement, generic_plan=True
        )
        rows = one_statement.run(self.engine, stmt, self._shapes.values(template, tenant, {"obs_id": obs_id}))
        return self._stored(obs_id, rows[0] if rows else None)

    def _read_statement(self, tenant: Any, t: Template) -> Select[Any]:
        """The current version of ``obs_id`` if it is within the read scope (one statement)."""
        scoped = self._scope_parts(t.categories, t.start, t.end)
        return select(*_CURRENT_COLUMNS).where(o.c.tenant == tenant, o.c.id == bindparam("obs_id"), *scoped)

    def read_in(self, conn: Connection, tenant: str, obs_id: str) -> Stored | None:
        return self._current(conn, tenant, obs_id)

    def version(self, tenant: str, obs_id: str, version_id: int) -> Stored | None:
        h = observation_history
        with self.reading() as conn:
            row = conn.execute(
                select(h.c.last_updated, h.c.data).where(
                    h.c.tenant == tenant, h.c.id == obs_id, h.c.version_id == version_id
                )
            ).first()
        return Stored(obs_id, version_id, row.last_updated, row.data) if row else None

    def history(self, tenant: str, obs_id: str) -> list[Stored]:
        """Every version, newest first (FHIR ``_history``)."""
        h = observation_history
        with self.reading() as conn:
            rows = conn.execute(
                select(h.c.version_id, h.c.last_updated, h.c.data)
                .where(h.c.tenant == tenant, h.c.id == obs_id)
                .order_by(h.c.version_id.desc())
            ).all()
        return [Stored(obs_id, r.version_id, r.last_updated, r.data) for r in rows]

    # -- search ---------------------------------------------------------------------------------

    @staticmethod
    def _patient_of(query: SearchQuery) -> Token | None:
        """The one patient a query names (one ``patient`` value with a number), else ``None``."""
        if len(query.patients) == 1 and len(query.patients[0]) == 1 and query.patients[0][0].code is not None:
            return query.patients[0][0]
        return None

    def _token_clause(
        self,
        param: str,
        group: tuple[Token, ...],
        patient: Token | None = None,
        query: SearchQuery | None = None,
    ) -> ColumnElement[bool]:
        """The observation has a ``param`` token of ``group``; with ``patient`` known, the subquery is
        led by the patient and bounded by the query's dates, so it is a range scan of
        ``ix_observation_tokens_patient`` (issue 12), never a scan of the tenant's tokens for the code."""
        t = observation_tokens.alias(f"{param}_tokens")  # never the joined driving row
        alts = []
        for token in group:
            conds = [t.c.param == param]
            if token.system is not None:
                conds.append(t.c.system == token.system)
            if token.code is not None:
                conds.append(t.c.code == token.code)
            alts.append(and_(*conds))
        inner = [t.c.tenant == o.c.tenant, t.c.observation_id == o.c.id, or_(*alts)]
        if patient is not None and query is not None:
            inner += self._token_patient_clauses(patient, query, t)
        return exists().where(*inner).correlate(o)

    def _token_patient_clauses(
        self, patient: Token, query: SearchQuery, t: Any = observation_tokens
    ) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = [t.c.patient_value == patient.code]
        if patient.system is not None:
            conds.append(t.c.patient_system == patient.system)
        for bound in query.dates:
            conds += self._date_clauses(t.c.effective_start, t.c.effective_end, bound)
        return conds

    @staticmethod
    def _date_clauses(start: Any, end: Any, bound: DateBound) -> list[ColumnElement[bool]]:
        """FHIR R4 search, "date": compare the target range [start, end) with the value's range.

        Besides the comparison itself, a simple bound every match satisfies (a value that ends after
        the searched range begins, or starts before it ends): an index can apply it without the OR.
        """
        prefix = bound.prefix
        if prefix == "gt":
            return [end > bound.end]
        if prefix == "lt":
            return [start < bound.start]
        if prefix == "sa":  # starts after the value's range
            return [start >= bound.end]
        if prefix == "eb":  # ends before the value's range
            return [end <= bound.start]
        inside = and_(start >= bound.start, end <= bound.end)
        if prefix == "eq":
            return [inside, start < bound.end, end > bound.start]
        if prefix == "ne":
            return [not_(inside)]
        if prefix == "ge":
            return [or_(end > bound.end, inside), end > bound.start]
        if prefix == "le":
            return [or_(start < bound.start, inside), start < bound.end]
        raise ValueError(f"unknown date prefix {prefix!r}")

    @classmethod
    def lead_of(cls, query: SearchQuery, categories: Any, *, count: bool = False) -> Lead | None:
        """The index that leads a search's page (or ``count``) of this shape for every value, with a
        read scope of ``categories`` (``None``: every category); ``None``: it is planned with its
        values (see ``Lead``). Asked once per shape, with the statement's build."""
        rest = replace(
            query,
            count=0,
            sort="-date",
            summary_count=False,
            summary=None,
            elements=(),
            total="accurate",
            applied=(),
        )
        patient = cls._patient_of(query)
        if patient is None:
            return None
        if cls._driving_code(query) is not None:
            if len(query.codes) == 1 and replace(rest, patients=(), codes=(), dates=()) == _NOTHING_ELSE:
                return Lead.PATIENT_CODE
            return None
        if patient.system is None or categories is not None:
            return None
        if count:
            return Lead.PATIENT_DATE if replace(rest, patients=(), dates=()) == _NOTHING_ELSE else None
        if query.sort.endswith("date") and replace(rest, patients=()) == _NOTHING_ELSE:
            return Lead.PATIENT_DATE
        return None

    @classmethod
    def _led_page(cls, template: Template) -> bool:
        return cls.lead_of(template.query, template.categories) is not None

    @classmethod
    def _led_count(cls, template: Template) -> bool:
        return cls.lead_of(template.query, template.categories, count=True) is not None

    @classmethod
    def _driving_code(cls, query: SearchQuery) -> int | None:
        """Which code group drives the search (``_driver``): the first of one ``system|code``, when the
        query names one patient; ``None`` when nothing drives it."""
        if cls._patient_of(query) is None:
            return None
        for n, group in enumerate(query.codes):
            if len(group) == 1 and group[0].system is not None and group[0].code is not None:
                return n
        return None

    def _driver(self, tenant: Any, query: SearchQuery) -> tuple[list[ColumnElement[bool]], int] | None:
        """When the query names one patient and one ``system|code``: the conditions on one joined
        ``observation_tokens`` row that drive the search (index order is the date order), and which
        code group they stand for. At most one token row per observation matches (its primary key),
        so the join never duplicates an observation."""
        n = self._driving_code(query)
        patient = self._patient_of(query)
        if n is None or patient is None:
            return None
        token = query.codes[n][0]
        t = observation_tokens
        conds = [
            t.c.tenant == tenant,
            t.c.observation_id == o.c.id,
            t.c.param == "code",
            t.c.code == token.code,
            t.c.system == token.system,
            *self._token_patient_clauses(patient, query),
        ]
        return conds, n

    def _filters(
        self, tenant: Any, query: SearchQuery, skip_code: int | None = None, *, dates: bool = True
    ) -> list[ColumnElement[bool]]:
        """The conditions on ``observations`` (``skip_code``: the code group the driver applies;
        ``dates=False``: the driver applies the date bounds too)."""
        where: list[ColumnElement[bool]] = [o.c.tenant == tenant]
        patient = self._patient_of(query)
        for group in query.patients:
            alts = []
            for token in group:
                conds = []
                if token.system is not None:
                    conds.append(o.c.patient_system == token.system)
                if token.code is not None:
                    conds.append(o.c.patient_value == token.code)
                alts.append(and_(*conds))
            where.append(or_(*alts))
        for n, group in enumerate(query.codes):
            if n != skip_code:
                where.append(self._token_clause("code", group, patient, query))
        for group in query.categories:
            where.append(self._token_clause("category", group, patient, query))
        for group in query.identifiers:
            i = observation_identifiers
            alts = []
            for token in group:
                conds = [i.c.tenant == o.c.tenant, i.c.observation_id == o.c.id]
                if token.system is not None:
                    conds.append(i.c.system == token.system)
                if token.code is not None:
                    conds.append(i.c.value == token.code)
                alts.append(exists().where(*conds))
            where.append(or_(*alts))
        for statuses in query.statuses:
            where.append(o.c.status.in_(statuses))
        # :not (FHIR R4 search 3.1.1.5.5): none of the group's values match.
        where.extend(not_(self._token_clause("code", group)) for group in query.not_codes)
        where.extend(not_(self._token_clause("category", group)) for group in query.not_categories)
        where.extend(o.c.status.not_in(statuses) for statuses in query.not_statuses)
        for bound in query.dates if dates else ():
            where += self._date_clauses(o.c.effective_start, o.c.effective_end, bound)
        for bound in query.last_updated:
            where += self._date_clauses(o.c.last_updated, o.c.last_updated + 1, bound)
        return where

    def _scope_clauses(
        self, scope: ReadScope, patient: Token | None = None, query: SearchQuery | None = None
    ) -> list[ColumnElement[bool]]:
        categories = sorted(scope.categories) if scope.categories is not None else None
        return self._scope_parts(categories, scope.start, scope.end, patient, query)

    def _scope_parts(
        self,
        categories: Sequence[Any] | None,
        start: Any,
        end: Any,
        patient: Token | None = None,
        query: SearchQuery | None = None,
    ) -> list[ColumnElement[bool]]:
        """The read scope's conditions: ``categories`` (sorted; ``None``: all), ``start``, ``end``."""
        t = observation_tokens.alias("scope_tokens")
        clauses: list[ColumnElement[bool]] = []
        if categories is not None:
            inner = [
                t.c.tenant == o.c.tenant,
                t.c.observation_id == o.c.id,
                t.c.param == "category",
                t.c.code.in_(list(categories)),
            ]
            if patient is not None and query is not None:
                inner += self._token_patient_clauses(patient, query, t)
            clauses.append(exists().where(*inner).correlate(o))
        if start is not None:
            clauses.append(o.c.effective_start >= start)
        if end is not None:
            clauses.append(o.c.effective_end <= end)
        return clauses

    def _where(
        self,
        tenant: Any,
        query: SearchQuery,
        categories: Sequence[Any] | None,
        start: Any,
        end: Any,
    ) -> tuple[Any, list[ColumnElement[bool]], bool]:
        """The FROM (observations, joined to the driving token row when there is one) and the WHERE."""
        driver = self._driver(tenant, query)
        patient = self._patient_of(query)
        scoped = self._scope_parts(categories, start, end, patient, query)
        if driver is None:
            return o, [*self._filters(tenant, query), *scoped], False
        conds, n = driver
        t = observation_tokens
        source = o.join(t, and_(t.c.tenant == o.c.tenant, t.c.observation_id == o.c.id))
        # The date bounds apply to the driving token row's copy of the effective time (written with the
        # observation, in its transaction), not again to the observation: with a bound on both sides of
        # ``observations.effective_start`` (``le`` and the agreement's start), a plan made without the
        # values (``generic_plan``) fetched each hit by ``ix_observations_patient_date`` instead of the
        # primary key, 1,085 buffers instead of 105 at 100,000 rows. The read scope stays on the row.
        filters = self._filters(tenant, query, skip_code=n, dates=False)
        # Without dates in the query, the read scope's period bounds the driving row's range (the
        # observation keeps its own bounds): on ``observations`` alone, a plan made without the values
        # read the patient's observations in the period and compared each hit with all of them (152,476
        # rows for a page instead of 642). Not besides the query's dates: two lower bounds on the row's
        # start made that plan sort the whole period instead of walking it (1,892 rows instead of 362).
        if not query.dates:
            if start is not None:
                conds.append(t.c.effective_start >= start)
            if end is not None:
                conds.append(t.c.effective_end <= end)
        return source, [*conds, *filters, *scoped], True

    @staticmethod
    def _template(query: SearchQuery, scope: ReadScope, anchor: Anchor | None = None) -> Template:
        at = (anchor.value, anchor.id, anchor.backwards) if anchor is not None else None
        return templated(query, scope.categories, scope.start, scope.end, at)

    def _count_statement(self, tenant: Any, t: Template) -> Select[Any]:
        source, where, _ = self._where(tenant, t.query, t.categories, t.start, t.end)
        return select(func.count()).select_from(source).where(*where)

    def count(self, tenant: str, query: SearchQuery, scope: ReadScope = EVERYTHING) -> int:
        if scope.nothing:
            return 0
        template = self._template(query, scope)
        stmt = self._shapes.statement(
            self.engine.dialect,
            "count",
            template,
            self._count_statement,
            generic_plan=self._led_count,
        )
        rows = one_statement.run(self.engine, stmt, self._shapes.values(template, tenant))
        return int(rows[0][0] or 0)

    def search(
        self,
        tenant: str,
        query: SearchQuery,
        anchor: Anchor | None = None,
        scope: ReadScope = EVERYTHING,
    ) -> Page:
        """One page in ``query.sort`` order, after ``anchor`` (or before it, when ``anchor.backwards``).

        With one patient and one ``system|code``, the page is read in the order of
        ``ix_observation_tokens_patient`` (the token row's copy of the effective time), so PostgreSQL
        walks that index from the date bound and stops after the page (issue 12). The statement is
        compiled once per shape of search (``search_shapes``)."""
        if scope.nothing:
            return Page([], more_after=False, more_before=False)
        template = self._template(query, scope, anchor)
        backwards = bool(anchor and anchor.backwards)
        # A shape an index leads for every value (``Lead``, proved at 100,000 rows:
        # tests/store/test_generic_plans.py) has one plan; any other is planned with its values.
        stmt = self._shapes.statement(
            self.engine.dialect,
            "page",
            template,
            self._page_statement,
            generic_plan=self._led_page,
        )
        found = one_statement.run(self.engine, stmt, self._shapes.values(template, tenant))
        rows = [(r[0], r[1], bytes(r[2]), r[3]) for r in found]
        more = len(rows) > query.count
        rows = rows[: query.count]
        if backwards:
            rows.reverse()
            return Page(rows, more_after=True, more_before=more)
        return Page(rows, more_after=more, more_before=anchor is not None)

    def search_statement(
        self, tenant: str, query: SearchQuery, anchor: Anchor | None = None, scope: ReadScope = EVERYTHING
    ) -> Select[Any]:
        """The SELECT of one page (``query.count`` + 1 rows, to tell whether there is more), with the
        values in it (what ``search`` runs, for ``EXPLAIN``)."""
        categories = sorted(scope.categories) if scope.categories is not None else None
        at = (anchor.value, anchor.id, anchor.backwards) if anchor is not None else None
        return self._select_page(tenant, query, categories, scope.start, scope.end, at)

    def _page_statement(self, tenant: Any, t: Template) -> Select[Any]:
        return self._select_page(tenant, t.query, t.categories, t.start, t.end, t.anchor)

    def _select_page(
        self,
        tenant: Any,
        query: SearchQuery,
        categories: Sequence[Any] | None,
        start: Any,
        end: Any,
        anchor: tuple[Any, Any, bool] | None,
    ) -> Select[Any]:
        source, where, driven = self._where(tenant, query, categories, start, end)
        t = observation_tokens
        by_date = query.sort.endswith("date")
        key = (t.c.effective_start if driven else o.c.effective_start) if by_date else o.c.last_updated
        ident = t.c.observation_id if driven and by_date else o.c.id
        descending = query.sort.startswith("-")
        backwards = bool(anchor and anchor[2])
        scan_desc = descending != backwards
        if anchor is not None:
            pos = tuple_(key, ident)
            value = tuple_(anchor[0], anchor[1])
            where.append(pos < value if scan_desc else pos > value)
        order = (key.desc(), ident.desc()) if scan_desc else (key.asc(), ident.asc())
        stmt = (
            select(o.c.id, key.label("k"), o.c.data, o.c.last_updated)
            .select_from(source)
            .where(*where)
            .order_by(*order)
            .limit(query.count + 1)
        )
        return stmt

    def lastn(
        self, tenant: str, query: SearchQuery, max_per_kind: int, scope: ReadScope = EVERYTHING
    ) -> list[bytes]:
        """The newest ``max_per_kind`` observations per measurement type (FHIR ``Observation/$lastn``)."""
        rank = (
            func.row_number()
            .over(partition_by=o.c.kind, order_by=(o.c.effective_start.desc(), o.c.id.desc()))
            .label("rank")
        )
        if scope.nothing:
            return []
        inner = select(o.c.kind, o.c.effective_start, o.c.id, o.c.data, rank).where(
            *self._filters(tenant, query), *self._scope_clauses(scope, self._patient_of(query), query)
        )
        sub = inner.subquery()
        stmt = (
            select(sub.c.data)
            .where(sub.c.rank <= max_per_kind)
            .order_by(sub.c.kind, sub.c.effective_start.desc(), sub.c.id.desc())
        )
        with self.reading() as conn:
            return [r.data for r in conn.execute(stmt)]
