"""Publishing measurements: create, correct, and Bundles, for one tenant (no web code here).

Every write is validated first (``fhir.validation``) and stored by ``ObservationStore``; nothing is
stored when validation fails. A Bundle's plain creates (``POST`` without ``If-None-Exist``) are
written together with a few set-based statements (``ObservationStore.create_many``); its other
entries each run in a savepoint of the same transaction. In a batch one bad entry fails alone; a
transaction is all or nothing.

A create whose business identifier is already stored is idempotent when the content is the same (200,
the stored resource). With different content it is a correction sent as a create: refused with 409
(412 under ``If-None-Exist``) and an OperationOutcome that says to ``PUT`` it, and nothing changes
(issue 8), so a correction is never lost without a word.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import Connection

from sharing_api.errors import Conflict, FhirError, InvalidResource, Issue, PreconditionFailed
from sharing_api.fhir.bundles import Entry, parse_bundle, response_bundle, response_entry
from sharing_api.fhir.dates import format_instant
from sharing_api.fhir.search import parse_search
from sharing_api.fhir.validation import ValidObservation, validate_observation
from sharing_api.store.observations import ObservationStore, Stored
from sharing_api.store.tenants import TenantRecord

WriteAudit = Callable[[Connection, list[tuple[ValidObservation, Stored]]], None]
"""Records a transaction's writes in the audit log, inside that same transaction (AUD: nothing lost)."""


AfterWrite = Callable[[Connection, str, list[tuple[ValidObservation, Stored]]], None]
"""Told a transaction's writes (tenant, writes) inside that transaction: the subscription emitter
(``Notifications.observations_written``) queues notifications that commit with the data."""


def _no_audit(conn: Connection, writes: list[tuple[ValidObservation, Stored]]) -> None:
    """For the operator's own tools (seeding): no request, no caller to record."""


def _nothing_after(conn: Connection, tenant: str, writes: list[tuple[ValidObservation, Stored]]) -> None:
    """No one to tell (the default)."""


def _same_content(stored: bytes, valid: ValidObservation) -> bool:
    current = orjson.loads(stored)
    strip = ("id", "meta")
    a = {k: v for k, v in current.items() if k not in strip}
    b = {k: v for k, v in valid.resource.items() if k not in strip}
    meta_a = {k: v for k, v in (current.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    meta_b = {
        k: v for k, v in (valid.resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    return a == b and meta_a == meta_b


def refuse_changed(stored: Stored, valid: ValidObservation, *, conditional: bool) -> None:
    """Raise 409 (412 when ``conditional``) when an existing observation differs from ``valid``."""
    if stored.created or _same_content(stored.data, valid):
        return
    message = (
        f"an Observation with this business identifier exists (Observation/{stored.id}) with different "
        f"content; to correct it, PUT the new version to Observation/{stored.id}"
    )
    if conditional:
        raise PreconditionFailed(message, "Observation.identifier")
    raise Conflict(message, "Observation.identifier")


class Publisher:
    """Writes into one tenant's measurements."""

    def __init__(self, store: ObservationStore, *, max_entries: int):
        self.store = store
        self.max_entries = max_entries
        #: set by the composition root (notifications of new measurements)
        self.after_write: AfterWrite = _nothing_after

    def _conditional_match(self, conn: Connection, tenant: TenantRecord, criteria: str) -> str | None:
        """``If-None-Exist``: the id of the one match, ``None`` for none, 412 for several."""
        query = parse_search(
            parse_qsl(criteria, keep_blank_values=True), strict=True, default_count=2, max_count=2
        )
        if not (query.identifiers or query.patients or query.codes):
            raise InvalidResource("If-None-Exist needs identifier, patient or code criteria", "If-None-Exist")
        page = self.store.search(tenant.orgnr, query)
        if len(page.rows) > 1:
            raise PreconditionFailed("If-None-Exist matches more than one Observation", "If-None-Exist")
        return page.rows[0][0] if page.rows else None

    def create(
        self,
        tenant: TenantRecord,
        resource: Any,
        *,
        if_none_exist: str | None = None,
        audit: WriteAudit = _no_audit,
    ) -> Stored:
        valid = validate_observation(resource, tenant.validation)
        with self.store.writing() as conn:
            stored = self._create(conn, tenant, valid, if_none_exist)
            audit(conn, [(valid, stored)])
            self.after_write(conn, tenant.orgnr, [(valid, stored)])
        return stored

    def _create(
        self, conn: Connection, tenant: TenantRecord, valid: ValidObservation, if_none_exist: str | None
    ) -> Stored:
        if if_none_exist:
            match = self._conditional_match(conn, tenant, if_none_exist)
            if match:
                current = self.store.read_in(conn, tenant.orgnr, match)
                if current is not None:
                    refuse_changed(current, valid, conditional=True)
                    return current
        stored = self.store.create_in(conn, tenant.orgnr, valid)
        refuse_changed(stored, valid, conditional=bool(if_none_exist))
        return stored

    def update(
        self,
        tenant: TenantRecord,
        obs_id: str,
        resource: Any,
        *,
        if_match: int | None = None,
        audit: WriteAudit = _no_audit,
    ) -> Stored:
        valid = validate_observation(resource, tenant.validation)
        if "id" in resource and resource["id"] != obs_id:
            raise InvalidResource("the resource id must match the id in the URL", "Observation.id")
        with self.store.writing() as conn:
            stored = self._update(conn, tenant, obs_id, valid, if_match)
            audit(conn, [(valid, stored)])
            self.after_write(conn, tenant.orgnr, [(valid, stored)])
        return stored

    def _update(
        self,
        conn: Connection,
        tenant: TenantRecord,
        obs_id: str,
        valid: ValidObservation,
        if_match: int | None,
    ) -> Stored:
        current = self.store.read_in(conn, tenant.orgnr, obs_id)
        if current is not None and if_match is None and _same_content(current.data, valid):
            return current  # a retried correction is not a new version
        return self.store.update_in(conn, tenant.orgnr, obs_id, valid, if_match=if_match)

    def _upsert(
        self, conn: Connection, tenant: TenantRecord, entry: Entry, valid: ValidObservation
    ) -> Stored:
        if entry.method == "POST":
            return self._create(conn, tenant, valid, entry.if_none_exist)
        if entry.target_id:
            return self._update(conn, tenant, entry.target_id, valid, None)
        # PUT without Observation/{id}: PMD publishes by business identifier (create or correct).
        if not valid.identifiers:
            raise InvalidResource(
                "PUT without Observation/{id} needs a business identifier to update by",
                f"Bundle.entry[{entry.index}].resource.identifier",
            )
        owner = self.store.owner_of_identifier(conn, tenant.orgnr, valid.identifiers)
        if owner is None:
            return self.store.create_in(conn, tenant.orgnr, valid)
        return self._update(conn, tenant, owner, valid, None)

    def _location(self, base: str, stored: Stored) -> str:
        return f"{base}/Observation/{stored.id}/_history/{stored.version_id}"

    def bundle(
        self, tenant: TenantRecord, bundle: Any, *, base: str, audit: WriteAudit = _no_audit
    ) -> dict[str, Any]:
        """Process a batch or transaction Bundle; the response Bundle echoes each entry's ``fullUrl``."""
        kind, entries = parse_bundle(bundle, max_entries=self.max_entries)
        if kind == "transaction":
            return self._transaction(tenant, entries, base, audit)
        out: list[dict[str, Any]] = []
        valid: dict[int, ValidObservation] = {}
        for entry in entries:
            try:
                valid[entry.index] = validate_observation(
                    entry.resource, tenant.validation, path=f"Bundle.entry[{entry.index}].resource"
                )
            except FhirError as exc:
                out.append(response_entry(entry.full_url, exc.status, outcome=exc.outcome()))
        results: dict[int, dict[str, Any]] = {}
        written: list[tuple[ValidObservation, Stored]] = []
        with self.store.writing() as conn:
            plain = [e for e in entries if e.index in valid and _plain_create(e)]
            created = self.store.create_many(conn, tenant.orgnr, [valid[e.index] for e in plain])
            done: dict[int, Stored | FhirError] = {}
            for entry, (stored, _) in zip(plain, created, strict=True):
                try:
                    refuse_changed(stored, valid[entry.index], conditional=False)
                    done[entry.index] = stored
                except FhirError as exc:
                    done[entry.index] = exc
            for entry in entries:
                if entry.index not in valid:
                    continue
                try:
                    if entry.index in done:
                        outcome = done[entry.index]
                        if isinstance(outcome, FhirError):
                            raise outcome
                        stored = outcome
                    else:
                        with conn.begin_nested():
                            stored = self._upsert(conn, tenant, entry, valid[entry.index])
                except FhirError as exc:
                    exc.issues = [i.rebased(f"Bundle.entry[{entry.index}].resource") for i in exc.issues]
                    results[entry.index] = response_entry(entry.full_url, exc.status, outcome=exc.outcome())
                    continue
                written.append((valid[entry.index], stored))
                results[entry.index] = self._response(entry, base, stored)
            audit(conn, written)
            self.after_write(conn, tenant.orgnr, written)
        failed = iter(out)
        ordered = [results[e.index] if e.index in results else next(failed) for e in entries]
        return response_bundle("batch-response", ordered)

    def _transaction(
        self, tenant: TenantRecord, entries: list[Entry], base: str, audit: WriteAudit
    ) -> dict[str, Any]:
        issues: list[Issue] = []
        valid: list[ValidObservation] = []
        for entry in entries:
            try:
                valid.append(
                    validate_observation(
                        entry.resource, tenant.validation, path=f"Bundle.entry[{entry.index}].resource"
                    )
                )
            except FhirError as exc:
                issues.extend(exc.issues)
        if issues:
            raise InvalidResource(issues[0].diagnostics, issues=issues)
        out = []
        written: list[tuple[ValidObservation, Stored]] = []
        with self.store.writing() as conn:
            by_index = dict(zip((e.index for e in entries), valid, strict=True))
            plain = [e for e in entries if _plain_create(e)]
            created = dict(
                zip(
                    (e.index for e in plain),
                    self.store.create_many(conn, tenant.orgnr, [by_index[e.index] for e in plain]),
                    strict=True,
                )
            )
            for entry, v in zip(entries, valid, strict=True):
                try:
                    if entry.index in created:
                        stored = created[entry.index][0]
                        refuse_changed(stored, v, conditional=False)
                    else:
                        stored = self._upsert(conn, tenant, entry, v)
                except FhirError as exc:
                    exc.issues = [i.rebased(f"Bundle.entry[{entry.index}].resource") for i in exc.issues]
                    raise
                written.append((v, stored))
                out.append(self._response(entry, base, stored))
            audit(conn, written)
            self.after_write(conn, tenant.orgnr, written)
        return response_bundle("transaction-response", out)

    def _response(self, entry: Entry, base: str, stored: Stored) -> dict[str, Any]:
        return response_entry(
            entry.full_url,
            201 if stored.created else 200,
            location=self._location(base, stored),
            version=stored.version_id,
            last_modified=format_instant(stored.last_updated),
        )


def _plain_create(entry: Entry) -> bool:
    """A ``POST`` without ``If-None-Exist``: written with the Bundle's set-based creates."""
    return entry.method == "POST" and not entry.if_none_exist
