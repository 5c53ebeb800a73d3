"""``/{orgnr}/fhir/Patient/$match`` and ``Patient/_search``: an opaque Patient id for standard clients.

Standard FHIR clients (fhirpy, fhirclient) search with ``GET``; a national identity number never goes
in a URL. So the identifier goes in a body, once: ``POST Patient/$match`` (FHIR R4 operation
``Patient-match``: a ``Parameters`` body whose ``resource`` is a Patient with the identifier) or
``POST Patient/_search`` (``identifier=system|value`` as a form). Both answer a searchset Bundle with
one Patient whose ``id`` is opaque (``sharing_api.matching``), and the client continues with
``GET Observation?subject=Patient/<id>&code=...``.

The same rules as ``POST Observation/_search``: the attestation must name this patient (403 otherwise),
the sharing decision is taken (no agreement: 403), and the request is audited with the real patient
identifier. A denial about the patient (a reservation, a block) still gives a Patient: the caller
already knows the identifier, and the searches that follow answer "no data" exactly as for a patient
with none.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, request

from sharing_api.audit.actions import AuditAction
from sharing_api.errors import Forbidden, InvalidResource, InvalidSearch, NotFound
from sharing_api.fhir.identifiers import FNR
from sharing_api.fhir.search import Token, refuse_pii_in_url, split_modifier
from sharing_api.matching import PatientMatches
from sharing_api.routes.common import audit, fhir_response, json_body, services, tenant_base
from sharing_api.routes.observations import attested_patient, bp, decide_access, match_binding

MATCH_PARAMETERS = ("resource", "onlyCertainMatches", "count")


def _patient(patient_id: str, identifier: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [{"system": identifier[0], "value": identifier[1]}],
    }


def _match(identifier: Token, expression: str) -> Response:
    if identifier.system is None or identifier.code is None:
        raise InvalidSearch("the patient's identifier as system|value", expression)
    attested = attested_patient()
    if (identifier.system, identifier.code) != attested:
        raise Forbidden("the attestation is for another patient than the one matched", expression)
    decide_access(attested)  # no agreement etc.: said plainly; a denial about the patient is not revealed
    patient_id = PatientMatches(services().sessions).bind(match_binding(), attested)
    patient = _patient(patient_id, attested)
    audit(AuditAction.PATIENT_MATCH, patient=attested, resources=[f"Patient/{patient_id}"], with_body=True)
    base = tenant_base()
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [
            {
                "fullUrl": f"{base}/Patient/{patient_id}",
                "resource": patient,
                "search": {"mode": "match", "score": 1},
            }
        ],
    }
    return fhir_response(orjson.dumps(bundle))


def _identifier_of(parameters: Any) -> Token:
    """The one identifier of the Patient in a ``$match`` ``Parameters`` body."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise InvalidResource("Patient/$match takes a Parameters resource", "Parameters")
    resource = None
    for n, param in enumerate(parameters.get("parameter") or []):
        name = param.get("name") if isinstance(param, dict) else None
        if name not in MATCH_PARAMETERS:
            raise InvalidResource(f"unknown $match parameter {name!r}", f"Parameters.parameter[{n}]")
        if name == "resource":
            resource = param.get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        raise InvalidResource("$match needs a Patient in the 'resource' parameter", "Parameters.parameter")
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list) or len(identifiers) != 1 or not isinstance(identifiers[0], dict):
        raise InvalidResource("match by exactly one identifier (FNR, DNR or FHN)", "Patient.identifier")
    system, value = identifiers[0].get("system"), identifiers[0].get("value")
    if not isinstance(system, str) or not isinstance(value, str) or not system or not value:
        raise InvalidResource("the identifier needs a system and a value", "Patient.identifier[0]")
    return Token(system, value)


@bp.post("/Patient/$match")
def patient_match() -> Response:
    """FHIR R4 ``Patient/$match`` by identifier: one certain match, with an opaque id."""
    refuse_pii_in_url(list(request.args.items(multi=True)))
    return _match(_identifier_of(json_body()), "Patient.identifier")


@bp.post("/Patient/_search")
def patient_search() -> Response:
    """``POST Patient/_search`` with ``identifier=system|value`` (or a bare FNR) in the form body."""
    refuse_pii_in_url(list(request.args.items(multi=True)))
    identifier: Token | None = None
    for name, raw in [*request.args.items(multi=True), *request.form.items(multi=True)]:
        base, modifier = split_modifier(name)
        if modifier is not None:
            raise InvalidSearch(
                f"Patient search: the modifier :{modifier} of {base!r} is not supported", name
            )
        if name == "identifier":
            if identifier is not None or "," in raw:
                raise InvalidSearch("search one patient at a time", name)
            token = Token.parse(raw, name)
            identifier = Token(token.system or FNR, token.code)
        elif name not in ("_format", "_pretty"):
            raise InvalidSearch(f"Patient search takes identifier only (got {name!r})", name)
    if identifier is None:
        raise InvalidSearch("Patient search needs identifier=system|value", "identifier")
    return _match(identifier, "identifier")


@bp.get("/Patient/<patient_id>")
def patient_read(patient_id: str) -> Response:
    """The Patient a ``$match`` id names, for the requester and attestation it was made for; for anyone
    else, and once expired, exactly the answer for an id that never existed (404)."""
    found = PatientMatches(services().sessions).resolve(match_binding(), patient_id)
    if found is None:
        raise NotFound(f"Patient/{patient_id} is not known", "Patient.id")
    audit(AuditAction.PATIENT_MATCH, patient=found, resources=[f"Patient/{patient_id}"])
    return fhir_response(_patient(patient_id, found))
