"""CarePlan and Goal persistence: every version kept, updates by compare-and-set on the version.

An update is ``UPDATE plan_resources ... WHERE version_id = :expected``: of two writers holding the same
version exactly one changes the row; the other's statement matches no row (PostgreSQL re-checks the
condition after waiting for the first writer's row lock; SQLite writers are serialised by ``BEGIN
IMMEDIATE``) and gets 412 with the version that is current now. The history's primary key (tenant,
type, id, version) is a second guard: one version is never written twice. Nothing is overwritten:
each version, with who wrote it, stays in ``plan_history``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from sharing_api.careplans.validation import VERSION_AUTHOR, ValidPlanResource
from sharing_api.errors import NotFound, PreconditionFailed, UnprocessableResource
from sharing_api.fhir.dates import OPEN_END
from sharing_api.fhir.identifiers import HPR, ORGNR
from sharing_api.fhir.search import DateBound, Token
from sharing_api.store.observations import ObservationStore, render
from sharing_api.store.schema import plan_history, plan_resources, plan_tokens

p = plan_resources


@dataclass(frozen=True, slots=True)
class Author:
    """Who writes a version: the caller's organisation, health worker (HPR) and client system."""

    organisation: str | None
    hpr: str | None
    client_id: str | None = None

    def extension(self) -> dict[str, Any]:
        """The ``meta.extension`` recording this author on the stored version (docs/careplans.md)."""
        parts: list[dict[str, Any]] = []
        if self.organisation:
            parts.append(
                {"url": "organization", "valueIdentifier": {"system": ORGNR, "value": self.organisation}}
            )
        if self.hpr:
            parts.append({"url": "practitioner", "valueIdentifier": {"system": HPR, "value": self.hpr}})
        if self.client_id:
            parts.append({"url": "client", "valueString": self.client_id})
        return {"url": VERSION_AUTHOR, "extension": parts}


SYSTEM = Author(None, None, "dho-share")
"""The operator's own tools (``dho-share seed``): no caller to record but the tool."""


@dataclass(frozen=True, slots=True)
class StoredPlan:
    resource_type: str
    id: str
    version_id: int
    last_updated: int
    data: bytes
    patient: tuple[str, str]
    status: str = ""
    created: bool = False


@dataclass(frozen=True, slots=True)
class PlanQuery:
    """A CarePlan search of one patient: AND of OR-groups, as Observation searches."""

    patient: tuple[str, str]
    statuses: tuple[tuple[str, ...], ...] = ()
    categories: tuple[tuple[Token, ...], ...] = ()
    dates: tuple[DateBound, ...] = ()


PlanAudit = Callable[[Connection, StoredPlan], None]


def _no_audit(conn: Connection, stored: StoredPlan) -> None:
    """For the operator's tools (seeding): no request to record."""


class PlanStore:
    """CarePlans and Goals of all tenants; every method takes the tenant and touches no other's rows."""

    def __init__(self, engine: Engine, clock: Callable[[], int]):
        self.engine = engine
        self.clock = clock

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- writes ---------------------------------------------------------------------------------

    def _render(
        self, valid: ValidPlanResource, resource_id: str, version: int, now: int, author: Author
    ) -> bytes:
        resource = dict(valid.resource)
        meta = dict(resource.get("meta") or {})
        kept = [
            e
            for e in meta.get("extension") or []
            if not (isinstance(e, dict) and e.get("url") == VERSION_AUTHOR)
        ]
        meta["extension"] = [*kept, author.extension()]
        resource["meta"] = meta
        return render(valid.resource_type, resource, resource_id, version, now)

    def _check_goals(self, conn: Connection, tenant: str, valid: ValidPlanResource) -> None:
        """A CarePlan's goals are Goals stored here, for the same patient."""
        if not valid.goals:
            return
        rows = conn.execute(
            select(p.c.id, p.c.patient_system, p.c.patient_value).where(
                p.c.tenant == tenant, p.c.resource_type == "Goal", p.c.id.in_(valid.goals)
            )
        ).all()
        found = {r.id: (r.patient_system, r.patient_value) for r in rows}
        for n, goal_id in enumerate(valid.goals):
            if goal_id not in found:
                raise UnprocessableResource(f"Goal/{goal_id} is not stored here", f"CarePlan.goal[{n}]")
            if found[goal_id] != valid.patient:
                raise UnprocessableResource(f"Goal/{goal_id} is about another patient", f"CarePlan.goal[{n}]")

    def _index(self, conn: Connection, tenant: str, resource_id: str, valid: ValidPlanResource) -> None:
        t = plan_tokens
        conn.execute(
            delete(t).where(
                t.c.tenant == tenant, t.c.resource_type == valid.resource_type, t.c.resource_id == resource_id
            )
        )
        if valid.categories:
            conn.execute(
                insert(t),
                [
                    {
                        "tenant": tenant,
                        "resource_type": valid.resource_type,
                        "resource_id": resource_id,
                        "param": "category",
                        "system": s,
                        "code": c,
                    }
                    for s, c in valid.categories
                ],
            )

    def _history_row(
        self,
        tenant: str,
        valid: ValidPlanResource,
        resource_id: str,
        version: int,
        now: int,
        author: Author,
        data: bytes,
    ) -> dict[str, Any]:
        return {
            "tenant": tenant,
            "resource_type": valid.resource_type,
            "id": resource_id,
            "version_id": version,
            "last_updated": now,
            "author_organisation": author.organisation,
            "author_hpr": author.hpr,
            "data": data,
        }

    def create(
        self, tenant: str, valid: ValidPlanResource, author: Author, audit: PlanAudit = _no_audit
    ) -> StoredPlan:
        """Store a new resource as version 1, audited in the same transaction."""
        resource_id, now = str(uuid.uuid4()), self.clock()
        data = self._render(valid, resource_id, 1, now, author)
        with self._writing() as conn:
            self._check_goals(conn, tenant, valid)
            conn.execute(
                insert(p).values(
                    tenant=tenant,
                    resource_type=valid.resource_type,
                    id=resource_id,
                    version_id=1,
                    last_updated=now,
                    patient_system=valid.patient[0],
                    patient_value=valid.patient[1],
                    status=valid.status[:32],
                    period_start=valid.period[0],
                    period_end=valid.period[1],
                    data=data,
                )
            )
            conn.execute(
                insert(plan_history).values(
                    self._history_row(tenant, valid, resource_id, 1, now, author, data)
                )
            )
            self._index(conn, tenant, resource_id, valid)
            stored = StoredPlan(
                valid.resource_type, resource_id, 1, now, data, valid.patient, valid.status, created=True
            )
            audit(conn, stored)
        return stored

    def update(
        self,
        tenant: str,
        resource_id: str,
        valid: ValidPlanResource,
        *,
        expected: int,
        author: Author,
        audit: PlanAudit = _no_audit,
    ) -> StoredPlan:
        """A new version, only if ``expected`` is the current one (compare-and-set); else 412 naming the
        current version, and nothing changes. The patient of a plan cannot change (422)."""
        kind = valid.resource_type
        now = self.clock()
        version = expected + 1
        data = self._render(valid, resource_id, version, now, author)
        where = (p.c.tenant == tenant, p.c.resource_type == kind, p.c.id == resource_id)
        with self._writing() as conn:
            current = conn.execute(
                select(p.c.version_id, p.c.patient_system, p.c.patient_value).where(*where)
            ).first()
            if current is None:
                raise NotFound(f"{kind}/{resource_id} is not known; create it with POST", f"{kind}.id")
            if (current.patient_system, current.patient_value) != valid.patient:
                raise UnprocessableResource(
                    "a plan keeps its patient; create a new one for another patient",
                    f"{kind}.subject.identifier",
                )
            self._check_goals(conn, tenant, valid)
            changed = conn.execute(
                update(p)
                .where(*where, p.c.version_id == expected)
                .values(
                    version_id=version,
                    last_updated=now,
                    status=valid.status[:32],
                    period_start=valid.period[0],
                    period_end=valid.period[1],
                    data=data,
                )
            ).rowcount
            if changed != 1:
                raise self._stale(conn, kind, resource_id, expected, where)
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(plan_history).values(
                            self._history_row(tenant, valid, resource_id, version, now, author, data)
                        )
                    )
            except IntegrityError as exc:  # the version exists: another writer got there first
                raise self._stale(conn, kind, resource_id, expected, where) from exc
            self._index(conn, tenant, resource_id, valid)
            stored = StoredPlan(kind, resource_id, version, now, data, valid.patient, valid.status)
            audit(conn, stored)
        return stored

    @staticmethod
    def _stale(
        conn: Connection, kind: str, resource_id: str, expected: int, where: Any
    ) -> PreconditionFailed:
        now = conn.execute(select(p.c.version_id).where(*where)).scalar()
        error = PreconditionFailed(
            f"{kind}/{resource_id}: version {expected} is not the current version; the current version is "
            f'{now}. Read it, apply your change to it, and send it with If-Match: W/"{now}"',
            "If-Match",
        )
        error.headers["ETag"] = f'W/"{now}"'
        return error

    # -- reads ----------------------------------------------------------------------------------

    @staticmethod
    def _stored(kind: str, row: Any) -> StoredPlan:
        return StoredPlan(
            kind,
            row.id,
            row.version_id,
            row.last_updated,
            row.data,
            (row.patient_system, row.patient_value),
            row.status,
        )

    def read(self, tenant: str, kind: str, resource_id: str) -> StoredPlan | None:
        with self._reading() as conn:
            row = conn.execute(
                select(p).where(p.c.tenant == tenant, p.c.resource_type == kind, p.c.id == resource_id)
            ).first()
        return self._stored(kind, row) if row else None

    def version(self, tenant: str, kind: str, resource_id: str, version_id: int) -> StoredPlan | None:
        h = plan_history
        with self._reading() as conn:
            row = conn.execute(
                select(h.c.last_updated, h.c.data).where(
                    h.c.tenant == tenant,
                    h.c.resource_type == kind,
                    h.c.id == resource_id,
                    h.c.version_id == version_id,
                )
            ).first()
        if row is None:
            return None
        return StoredPlan(kind, resource_id, version_id, row.last_updated, row.data, ("", ""))

    def history(self, tenant: str, kind: str, resource_id: str) -> list[StoredPlan]:
        """Every version, newest first (FHIR ``_history``)."""
        h = plan_history
        with self._reading() as conn:
            rows = conn.execute(
                select(h.c.version_id, h.c.last_updated, h.c.data)
                .where(h.c.tenant == tenant, h.c.resource_type == kind, h.c.id == resource_id)
                .order_by(h.c.version_id.desc())
            ).all()
        return [StoredPlan(kind, resource_id, r.version_id, r.last_updated, r.data, ("", "")) for r in rows]

    def search(self, tenant: str, query: PlanQuery, limit: int) -> list[StoredPlan]:
        """The patient's CarePlans matching ``query``, newest change first, at most ``limit``."""
        where: list[ColumnElement[bool]] = [
            p.c.tenant == tenant,
            p.c.resource_type == "CarePlan",
            p.c.patient_value == query.patient[1],
            p.c.patient_system == query.patient[0],
        ]
        where += [p.c.status.in_(group) for group in query.statuses]
        t = plan_tokens
        for group in query.categories:
            alts = []
            for token in group:
                conds = [t.c.param == "category"]
                if token.system is not None:
                    conds.append(t.c.system == token.system)
                if token.code is not None:
                    conds.append(t.c.code == token.code)
                alts.append(and_(*conds))
            where.append(
                exists()
                .where(
                    t.c.tenant == p.c.tenant,
                    t.c.resource_type == p.c.resource_type,
                    t.c.resource_id == p.c.id,
                    or_(*alts),
                )
                .correlate(p)
            )
        for bound in query.dates:
            # FHIR R4 CarePlan ``date``: the period the plan covers; an open end runs on, a plan
            # without a period matches no date.
            end = p.c.period_end
            where.append(p.c.period_start.is_not(None))
            where += ObservationStore._date_clauses(p.c.period_start, _open(end), bound)
        with self._reading() as conn:
            rows = conn.execute(
                select(p).where(*where).order_by(p.c.last_updated.desc(), p.c.id.desc()).limit(limit)
            ).all()
        return [self._stored("CarePlan", r) for r in rows]

    def goals(self, tenant: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The current Goal JSON of each id found (in no particular order)."""
        if not ids:
            return []
        with self._reading() as conn:
            rows = conn.execute(
                select(p.c.data).where(
                    p.c.tenant == tenant, p.c.resource_type == "Goal", p.c.id.in_(sorted(set(ids)))
                )
            ).all()
        return [orjson.loads(r.data) for r in rows]

    def active_plans(self, tenant: str, patient: tuple[str, str]) -> list[StoredPlan]:
        return self.search(tenant, PlanQuery(patient, statuses=(("active",),)), limit=100)

    def active_goals(self, tenant: str, patient: tuple[str, str]) -> list[dict[str, Any]]:
        """The Goals (current JSON) the patient's ``active`` CarePlans refer to: what new measurements
        are checked against (:func:`sharing_api.careplans.thresholds.breaches`)."""
        ids = [
            ref["reference"].removeprefix("Goal/")
            for plan in self.active_plans(tenant, patient)
            for ref in orjson.loads(plan.data).get("goal") or []
        ]
        return [g for g in self.goals(tenant, ids) if g.get("lifecycleStatus") == "active"]


def _open(end: Any) -> Any:
    """A plan's period end, with an open end read as "runs on" (as an ongoing Observation period)."""
    return func.coalesce(end, OPEN_END)
