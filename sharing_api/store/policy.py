"""Storage of the sharing policy: agreements between organisations and patients' directives.

Directives are FHIR ``Consent`` resources (consent/fhir_consent.py maps them to the policy model); they
are stored as validated JSON with versions, like observations. There is no decision cache: every read
decides from these tables, so a new reservation, block or revocation applies from the very next
request in every worker (staleness bound: zero).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import orjson
from fhir.resources.R4B.consent import Consent as FhirConsent
from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Engine,
    LargeBinary,
    bindparam,
    insert,
    literal_column,
    null,
    select,
    type_coerce,
    union_all,
    update,
)

from consent.fhir_consent import ConsentFormatError, directive_from_fhir, directive_to_fhir
from consent.model import (
    Block,
    Consent,
    PatientDirective,
    Period,
    PurposeOfUse,
    Reservation,
    SharingAgreement,
)
from sharing_api.errors import InvalidResource, NotFound, UnprocessableResource
from sharing_api.fhir.dates import from_micros, to_micros
from sharing_api.store import one_statement
from sharing_api.store.compiled import PerDialect
from sharing_api.store.observations import render
from sharing_api.store.schema import agreements, directive_history, directives

DirectiveAudit = Callable[[Connection, "StoredDirective"], None]
"""Records a directive change in the audit log, in the same transaction as the change."""


def _no_audit(conn: Connection, stored: StoredDirective) -> None:
    """For the operator's tools (the demo): no request to record."""


KINDS: dict[type, str] = {Reservation: "reservation", Block: "block", Consent: "consent"}


@dataclass(frozen=True, slots=True)
class StoredDirective:
    id: str
    version_id: int
    last_updated: int
    data: bytes
    patient: tuple[str, str]
    kind: str


def _period(start: int | None, end: int | None) -> Period | None:
    if start is None and end is None:
        return None
    return Period(
        from_micros(start) if start is not None else None, from_micros(end) if end is not None else None
    )


def _micros(moment: datetime | None) -> int | None:
    return to_micros(moment) if moment is not None else None


def _agreement(row: Any) -> SharingAgreement:
    period = _period(row.valid_from, row.valid_to)
    assert period is not None
    return SharingAgreement(
        id=row.id,
        controller=row.controller,
        consumer=row.consumer,
        categories=frozenset(row.categories.split()),
        purposes=frozenset(PurposeOfUse(p) for p in row.purposes.split()),
        period=period,
        data_period=_period(row.data_from, row.data_to),
        write_categories=frozenset(row.write_categories.split()),
    )


# What every sharing decision reads, in ONE statement (issue 12): the agreements controller ->
# consumer and the patient's directives, told apart by ``part`` (0: agreement, 1: directive) and each in
# its own order. Compiled once per dialect and run with the values (building and compiling the
# expressions per request cost more CPU than running them); read afresh on every request.
_AGREEMENT_COLUMNS = (
    *("id", "controller", "consumer", "categories", "purposes"),
    *("valid_from", "valid_to", "data_from", "data_to", "write_categories"),
)


def _decision_statement(with_agreements: bool) -> Any:
    none = [null().label(name) for name in _AGREEMENT_COLUMNS]
    directive_rows = select(
        literal_column("1").label("part"),
        directives.c.last_updated.label("ordering"),
        *none,
        directives.c.data.label("data"),
    ).where(
        directives.c.tenant == bindparam("controller"),
        directives.c.patient_value == bindparam("value"),
        directives.c.patient_system == bindparam("system"),
    )
    if not with_agreements:
        return directive_rows.order_by(literal_column("ordering"))
    agreement_rows = select(
        literal_column("0").label("part"),
        agreements.c.created.label("ordering"),
        *(agreements.c[name] for name in _AGREEMENT_COLUMNS),
        type_coerce(null(), LargeBinary).label("data"),
    ).where(
        agreements.c.controller == bindparam("controller"), agreements.c.consumer == bindparam("consumer")
    )
    both = union_all(agreement_rows, directive_rows).subquery("decision")
    return select(both).order_by(both.c.part, both.c.ordering)


# The decision statement, with and without the agreements' part, compiled once per dialect. Equalities
# on the parties and the patient, led by an index each: one plan for every value
# (tests/store/test_generic_plans.py).
_DECISION_SQL = {
    with_agreements: PerDialect(partial(_decision_statement, with_agreements), "decision", generic_plan=True)
    for with_agreements in (False, True)
}


class PolicyStore:
    def __init__(self, engine: Engine, clock: Callable[[], int]):
        self.engine = engine
        self.clock = clock

    # -- agreements -----------------------------------------------------------------------------

    def add_agreement(
        self,
        *,
        controller: str,
        consumer: str,
        categories: frozenset[str],
        purposes: frozenset[PurposeOfUse],
        valid_from: datetime,
        valid_to: datetime | None = None,
        data_from: datetime | None = None,
        data_to: datetime | None = None,
        write_categories: frozenset[str] = frozenset(),
    ) -> SharingAgreement:
        """Record an agreement (validated by the policy model first)."""
        agreement = SharingAgreement(
            id=str(uuid.uuid4()),
            controller=controller,
            consumer=consumer,
            categories=categories,
            purposes=purposes,
            period=Period(valid_from, valid_to),
            data_period=Period(data_from, data_to) if data_from or data_to else None,
            write_categories=write_categories,
        )
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(
                insert(agreements).values(
                    id=agreement.id,
                    controller=controller,
                    consumer=consumer,
                    categories=" ".join(sorted(categories)),
                    purposes=" ".join(sorted(purposes)),
                    valid_from=to_micros(valid_from),
                    valid_to=_micros(valid_to),
                    data_from=_micros(data_from),
                    data_to=_micros(data_to),
                    created=self.clock(),
                    write_categories=" ".join(sorted(write_categories)),
                )
            )
        return agreement

    def end_agreement(self, agreement_id: str, at: datetime, *, controller: str | None = None) -> bool:
        """End an agreement at ``at`` (kept for the record); ``False`` when there is no such agreement."""
        cond = [agreements.c.id == agreement_id]
        if controller is not None:
            cond.append(agreements.c.controller == controller)
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            row = conn.execute(select(agreements.c.valid_from, agreements.c.valid_to).where(*cond)).first()
            if row is None:
                return False
            # An end only ever moves earlier, and never before the start (a period is never empty): an
            # agreement ended before it began ends one microsecond after its start.
            end = max(to_micros(at), row.valid_from + 1)
            if row.valid_to is None or end < row.valid_to:
                conn.execute(update(agreements).where(*cond).values(valid_to=end))
        return True

    def agreements(
        self, controller: str | None = None, consumer: str | None = None
    ) -> list[SharingAgreement]:
        stmt = select(agreements).order_by(agreements.c.created)
        if controller is not None:
            stmt = stmt.where(agreements.c.controller == controller)
        if consumer is not None:
            stmt = stmt.where(agreements.c.consumer == consumer)
        with self.engine.connect() as conn:
            return [_agreement(r) for r in conn.execute(stmt)]

    # -- directives (FHIR Consent) --------------------------------------------------------------

    @staticmethod
    def parse(resource: Any, record_id: str) -> PatientDirective:
        """Validate a Consent: FHIR structure (fhir.resources R4B: no unknown elements), no
        ``modifierExtension`` (it could change the meaning unseen), then the directive rules."""
        if isinstance(resource, dict):
            if resource.get("resourceType") != "Consent":
                raise InvalidResource("expected a Consent resource", "Consent.resourceType")
            if "modifierExtension" in resource or "modifierExtension" in (resource.get("provision") or {}):
                raise InvalidResource(
                    "modifierExtension is not supported on directives", "Consent.modifierExtension"
                )
            try:
                FhirConsent.model_validate(resource)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = "Consent" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
                raise InvalidResource(first["msg"], where) from exc
            except (ValueError, TypeError) as exc:
                raise InvalidResource(str(exc), "Consent") from exc
        try:
            return directive_from_fhir(resource, record_id=record_id)
        except ConsentFormatError as exc:
            raise InvalidResource(exc.message, exc.expression) from exc

    def create_directive(
        self, tenant: str, resource: Any, audit: DirectiveAudit = _no_audit
    ) -> tuple[StoredDirective, PatientDirective]:
        directive_id = str(uuid.uuid4())
        directive = self.parse(
            {**resource, "id": directive_id} if isinstance(resource, dict) else resource, directive_id
        )
        now = self.clock()
        data = render("Consent", resource, directive_id, 1, now)
        patient = (directive.patient.system, directive.patient.value)
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(
                insert(directives).values(
                    tenant=tenant,
                    id=directive_id,
                    version_id=1,
                    last_updated=now,
                    patient_system=patient[0],
                    patient_value=patient[1],
                    kind=KINDS[type(directive)],
                    data=data,
                )
            )
            conn.execute(
                insert(directive_history).values(
                    tenant=tenant, id=directive_id, version_id=1, last_updated=now, data=data
                )
            )
        return StoredDirective(directive_id, 1, now, data, patient, KINDS[type(directive)]), directive

    def update_directive(
        self, tenant: str, directive_id: str, resource: Any, audit: DirectiveAudit = _no_audit
    ) -> tuple[StoredDirective, PatientDirective]:
        """A new version (e.g. ``status: inactive`` revokes); the patient and the kind cannot change."""
        directive = self.parse(
            {**resource, "id": directive_id} if isinstance(resource, dict) else resource, directive_id
        )
        patient = (directive.patient.system, directive.patient.value)
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            row = conn.execute(
                select(
                    directives.c.version_id,
                    directives.c.patient_system,
                    directives.c.patient_value,
                    directives.c.kind,
                )
                .where(directives.c.tenant == tenant, directives.c.id == directive_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"Consent/{directive_id} is not known", "Consent.id")
            if (row.patient_system, row.patient_value) != patient or row.kind != KINDS[type(directive)]:
                raise UnprocessableResource(
                    "a directive keeps its patient and kind; revoke it and record a new one",
                    "Consent.patient",
                )
            version, now = row.version_id + 1, self.clock()
            data = render("Consent", resource, directive_id, version, now)
            conn.execute(
                update(directives)
                .where(directives.c.tenant == tenant, directives.c.id == directive_id)
                .values(version_id=version, last_updated=now, data=data)
            )
            conn.execute(
                insert(directive_history).values(
                    tenant=tenant, id=directive_id, version_id=version, last_updated=now, data=data
                )
            )
            stored = StoredDirective(directive_id, version, now, data, patient, row.kind)
            audit(conn, stored)
        return stored, directive

    def revoke_directive(
        self, tenant: str, directive_id: str, audit: DirectiveAudit = _no_audit
    ) -> tuple[StoredDirective, PatientDirective]:
        """Mark a directive inactive (a new version); the record stays."""
        current = self.read_directive(tenant, directive_id)
        if current is None:
            raise NotFound(f"Consent/{directive_id} is not known", "Consent.id")
        resource = orjson.loads(current.data)
        resource["status"] = "inactive"
        return self.update_directive(tenant, directive_id, resource, audit)

    def read_directive(self, tenant: str, directive_id: str) -> StoredDirective | None:
        d = directives
        with self.engine.connect() as conn:
            row = conn.execute(select(d).where(d.c.tenant == tenant, d.c.id == directive_id)).first()
        if row is None:
            return None
        return StoredDirective(
            row.id,
            row.version_id,
            row.last_updated,
            row.data,
            (row.patient_system, row.patient_value),
            row.kind,
        )

    def patient_directives(self, tenant: str, patient: tuple[str, str]) -> list[StoredDirective]:
        d = directives
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(d)
                .where(
                    d.c.tenant == tenant,
                    d.c.patient_value == patient[1],
                    d.c.patient_system == patient[0],
                )
                .order_by(d.c.last_updated)
            ).all()
        return [
            StoredDirective(
                r.id, r.version_id, r.last_updated, r.data, (r.patient_system, r.patient_value), r.kind
            )
            for r in rows
        ]

    def decision_records(
        self, controller: str, consumer: str, patient: tuple[str, str]
    ) -> tuple[list[SharingAgreement], list[PatientDirective]]:
        """What one sharing decision reads, fresh from the store (no cache across requests): the
        agreements controller -> consumer (none when they are the same organisation) and the patient's
        directives, in one statement (one snapshot). On PostgreSQL the statement runs in autocommit: it
        is its own transaction, without the BEGIN and COMMIT round trips."""
        values = {"controller": controller, "consumer": consumer, "system": patient[0], "value": patient[1]}
        rows = one_statement.run(
            self.engine, _DECISION_SQL[consumer != controller](self.engine.dialect), values
        )
        found = [_agreement(r) for r in rows if r.part == 0]
        return found, [directive_from_fhir(orjson.loads(r.data)) for r in rows if r.part == 1]

    def directives_for(self, tenant: str, patient: tuple[str, str]) -> list[PatientDirective]:
        """The policy model of every directive of ``patient`` at ``tenant`` (active or not)."""
        return [directive_from_fhir(orjson.loads(s.data)) for s in self.patient_directives(tenant, patient)]

    @staticmethod
    def to_fhir(directive: PatientDirective) -> dict[str, Any]:
        return directive_to_fhir(directive)
