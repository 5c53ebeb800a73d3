"""``/{orgnr}/fhir/Consent``: patients' privacy directives (reservations, blocks, consents).

Who may do what (domain.md, "Sharing policy"; security-tests AZ-06):

* the data controller's own clients (``consent.write`` / ``consent.read``): everything, for any patient;
* the patient themself (a token with their ``pid`` at security level 4): read their own directives and
  record or revoke reservations and blocks (not consents on another's behalf);
* anyone else, such as a consuming hospital: nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from flask import Response, request
from sqlalchemy import Connection

from auth.caller import Caller
from consent.model import Consent, PatientDirective
from sharing_api.audit.actions import AuditAction
from sharing_api.errors import Forbidden, NotFound
from sharing_api.fhir.dates import format_instant
from sharing_api.fhir.search import parse_patient_search, refuse_pii_in_url
from sharing_api.routes.common import (
    audit,
    caller,
    fhir_response,
    json_body,
    require_id_of_url,
    services,
    tenant,
    tenant_base,
)
from sharing_api.routes.observations import bp
from sharing_api.searching import searchset
from sharing_api.store.policy import StoredDirective


def _is_controller(who: Caller) -> bool:
    return who.organisation == tenant().orgnr


def is_the_patient(who: Caller, patient: tuple[str, str]) -> bool:
    """A patient's own token: their pid, at security level 4, and no health worker behind it."""
    return (
        who.pid is not None
        and who.pid == patient[1]
        and who.security_level == "4"
        and who.attestation is None
        and who.practitioner_hpr is None
    )


def _may_record(directive: PatientDirective) -> None:
    who = caller()
    if _is_controller(who):
        return
    patient = (directive.patient.system, directive.patient.value)
    if is_the_patient(who, patient) and not isinstance(directive, Consent):
        return
    raise Forbidden(
        "only the data controller, or the patient for their own reservations and blocks, may do this"
    )


def _may_read(patient: tuple[str, str]) -> None:
    who = caller()
    if not (_is_controller(who) or is_the_patient(who, patient)):
        raise Forbidden("directives are read by the data controller or by the patient themself")


def _audited(action: AuditAction) -> Callable[[Connection, StoredDirective], None]:
    def record(conn: Connection, stored: StoredDirective) -> None:
        audit(
            action,
            patient=stored.patient,
            resources=[f"Consent/{stored.id}/_history/{stored.version_id}"],
            conn=conn,
        )

    return record


def _headers(stored: StoredDirective, status_location: bool = False) -> dict[str, str]:
    headers = {"ETag": f'W/"{stored.version_id}"', "Last-Modified": format_instant(stored.last_updated)}
    if status_location:
        headers["Location"] = f"{tenant_base()}/Consent/{stored.id}/_history/{stored.version_id}"
    return headers


@bp.post("/Consent")
def consent_create() -> Response:
    store = services().policy
    resource: Any = json_body()
    _may_record(store.parse(resource, "new"))
    stored, _ = store.create_directive(tenant().orgnr, resource, _audited(AuditAction.CONSENT_CREATE))
    return fhir_response(stored.data, 201, _headers(stored, True))


def _existing(directive_id: str) -> StoredDirective:
    stored = services().policy.read_directive(tenant().orgnr, directive_id)
    if stored is None:
        raise NotFound(f"Consent/{directive_id} is not known", "Consent.id")
    return stored


@bp.put("/Consent/<directive_id>")
def consent_update(directive_id: str) -> Response:
    store = services().policy
    current = store.parse(orjson.loads(_existing(directive_id).data), directive_id)
    _may_record(current)
    resource: Any = json_body()
    require_id_of_url(resource, directive_id, "Consent")
    _may_record(store.parse(resource, directive_id))
    stored, _ = store.update_directive(
        tenant().orgnr, directive_id, resource, _audited(AuditAction.CONSENT_UPDATE)
    )
    return fhir_response(stored.data, 200, _headers(stored, True))


@bp.delete("/Consent/<directive_id>")
def consent_revoke(directive_id: str) -> Response:
    """Revoke: the directive becomes ``inactive`` (a new version); the record is kept."""
    store = services().policy
    _may_record(store.parse(orjson.loads(_existing(directive_id).data), directive_id))
    stored, _ = store.revoke_directive(tenant().orgnr, directive_id, _audited(AuditAction.CONSENT_UPDATE))
    return fhir_response(stored.data, 200, _headers(stored))


@bp.get("/Consent/<directive_id>")
def consent_read(directive_id: str) -> Response:
    stored = services().policy.read_directive(tenant().orgnr, directive_id)
    who = caller()
    if stored is None or not (_is_controller(who) or is_the_patient(who, stored.patient)):
        # The same answer whether it does not exist or is not yours to see.
        raise NotFound(f"Consent/{directive_id} is not known", "Consent.id")
    audit(AuditAction.CONSENT_READ, patient=stored.patient, resources=[f"Consent/{stored.id}"])
    return fhir_response(stored.data, headers=_headers(stored))


@bp.post("/Consent/_search")
def consent_search() -> Response:
    """Directives of one patient (``patient.identifier=system|value`` in the form body)."""
    refuse_pii_in_url(list(request.args.items(multi=True)))
    tokens = parse_patient_search("Consent", list(request.form.items(multi=True)))
    if len(tokens) != 1 or tokens[0].system is None or tokens[0].code is None:
        raise Forbidden(
            "search the directives of one patient: patient.identifier=system|value", "patient.identifier"
        )
    patient = (tokens[0].system, tokens[0].code)
    _may_read(patient)
    found = services().policy.patient_directives(tenant().orgnr, patient)
    audit(
        AuditAction.CONSENT_SEARCH,
        patient=patient,
        resources=[f"Consent/{s.id}" for s in found],
        with_body=True,
    )
    return fhir_response(
        searchset(tenant_base(), [s.data for s in found], total=len(found), links=[], resource_type="Consent")
    )
