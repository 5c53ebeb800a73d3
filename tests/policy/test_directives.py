"""The FHIR Consent API (patients' directives) and the agreements admin API: who may do what.

routes/consents.py: the data controller's own clients may do everything; the patient themself (their
``pid`` at security level 4, no health worker) reads their own directives and records or revokes
reservations and blocks, but not consents; anyone else, such as a consuming hospital, nothing
(security-tests.md AZ-06). Malformed resources are refused with an OperationOutcome naming the
element, and nothing is stored. A revocation applies from the very next read (AZ-04).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from consent.fhir_consent import directive_to_fhir
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.store.schema import directive_history, directives
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, ApiClient
from tests.conftest import TENANT_A, TENANT_B
from tests.factories import fnr, heart_rate
from tests.policy.helpers import (
    BASE,
    CONSENT_READ,
    CONSENT_WRITE,
    OTHER_HPR,
    as_system,
    as_token,
    block,
    consent,
    controller,
    patient_token,
    publish,
    read,
    reader,
    record,
    reservation,
    revoke,
    search,
)

CONSENT = f"{BASE}/Consent"


def _stored_directives(services: Services) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(directives)).scalar() or 0)


def _directive_versions(services: Services) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(directive_history)).scalar() or 0)


def _as_controller(client: ApiClient, method: str, path: str, **kwargs: Any) -> TestResponse:
    return as_system(client, controller(client), method, path, **kwargs)


def _as_patient(client: ApiClient, patient: str, method: str, path: str, **kwargs: Any) -> TestResponse:
    return as_token(client, patient_token(client, patient), method, path, **kwargs)


def _search_form(patient: str) -> dict[str, str]:
    return {"patient.identifier": f"{FNR}|{patient}"}


def _hospital_with_consent_scopes(client: ApiClient) -> str:
    """A consuming hospital whose client even holds the consent scopes: the route rules must stop it."""
    return reader(
        client,
        "hospital-consent",
        HOSPITAL,
        point_of_care=HOSPITAL_UNIT,
        hpr=None,
        scopes=frozenset({CONSENT_READ, CONSENT_WRITE}),
    )


# -- the controller -------------------------------------------------------------------------------


def test_controller_creates_a_directive(client: ApiClient) -> None:
    patient = fnr()

    response = _as_controller(client, "POST", CONSENT, json=directive_to_fhir(reservation(patient)))

    assert response.status_code == 201
    body = response.get_json()
    assert body["meta"]["versionId"] == "1"
    assert body["id"] != "new"
    assert response.headers["Location"].endswith(f"/Consent/{body['id']}/_history/1")
    assert body["provision"]["type"] == "deny"


def test_controller_reads_a_directive(client: ApiClient) -> None:
    patient = fnr()
    directive = record(client, block(patient, OTHER_HPR))

    response = _as_controller(client, "GET", f"{CONSENT}/{directive}")

    assert response.status_code == 200
    body = response.get_json()
    assert body["patient"]["identifier"]["value"] == patient
    assert body["provision"]["actor"][0]["reference"]["identifier"]["value"] == OTHER_HPR


def test_controller_updates_a_directive_as_a_new_version(client: ApiClient) -> None:
    patient = fnr()
    directive = record(client, reservation(patient))
    changed = {**directive_to_fhir(reservation(patient, HOSPITAL)), "id": directive}

    response = _as_controller(client, "PUT", f"{CONSENT}/{directive}", json=changed)

    assert response.status_code == 200
    assert response.get_json()["meta"]["versionId"] == "2"
    assert response.headers["ETag"] == 'W/"2"'


def test_controller_revokes_a_directive_and_keeps_the_record(client: ApiClient, services: Services) -> None:
    patient = fnr()
    directive = record(client, reservation(patient))

    response = _as_controller(client, "DELETE", f"{CONSENT}/{directive}")

    assert response.status_code == 200
    assert response.get_json()["status"] == "inactive"
    assert response.get_json()["meta"]["versionId"] == "2"
    assert _as_controller(client, "GET", f"{CONSENT}/{directive}").get_json()["status"] == "inactive"
    assert _stored_directives(services) == 1


def test_controller_searches_one_patients_directives(client: ApiClient) -> None:
    patient = fnr()
    mine = {record(client, reservation(patient)), record(client, block(patient))}
    record(client, reservation(fnr()))

    response = _as_controller(client, "POST", f"{CONSENT}/_search", data=_search_form(patient))

    assert response.status_code == 200
    body = response.get_json()
    assert body["total"] == 2
    assert {e["resource"]["id"] for e in body["entry"]} == mine


def test_search_needs_exactly_one_patient(client: ApiClient) -> None:
    response = _as_controller(client, "POST", f"{CONSENT}/_search", data={})

    assert response.status_code == 403


def test_a_directive_keeps_its_patient(client: ApiClient) -> None:
    directive = record(client, reservation(fnr()))
    moved = {**directive_to_fhir(reservation(fnr())), "id": directive}

    response = _as_controller(client, "PUT", f"{CONSENT}/{directive}", json=moved)

    assert response.status_code == 422


@pytest.mark.parametrize(
    ("body_id", "message"),
    [(None, "must carry the resource id"), ("another-id", "must match the id in the URL")],
)
def test_an_update_carries_the_id_of_its_url(
    client: ApiClient, services: Services, body_id: str | None, message: str
) -> None:
    patient = fnr()
    directive = record(client, reservation(patient))
    changed = directive_to_fhir(reservation(patient, HOSPITAL))
    changed.pop("id", None)
    if body_id is not None:
        changed["id"] = body_id
    versions = _directive_versions(services)

    response = _as_controller(client, "PUT", f"{CONSENT}/{directive}", json=changed)

    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == ["Consent.id"]
    assert message in issue["diagnostics"]
    assert _directive_versions(services) == versions


def test_a_directive_keeps_its_kind(client: ApiClient) -> None:
    patient = fnr()
    directive = record(client, reservation(patient))

    changed = {**directive_to_fhir(block(patient)), "id": directive}

    response = _as_controller(client, "PUT", f"{CONSENT}/{directive}", json=changed)

    assert response.status_code == 422


def test_another_tenants_controller_cannot_see_the_directive(client: ApiClient) -> None:
    directive = record(client, reservation(fnr()))

    response = as_system(client, controller(client, TENANT_B), "GET", f"{CONSENT}/{directive}")

    assert response.status_code == 404


def test_a_directive_of_one_tenant_does_not_exist_at_another(client: ApiClient) -> None:
    directive = record(client, reservation(fnr()))

    response = as_system(client, controller(client, TENANT_B), "GET", f"/{TENANT_B}/fhir/Consent/{directive}")

    assert response.status_code == 404


# -- the patient ----------------------------------------------------------------------------------


def test_patient_reads_own_directive(client: ApiClient) -> None:
    patient = fnr()
    directive = record(client, reservation(patient))

    response = _as_patient(client, patient, "GET", f"{CONSENT}/{directive}")

    assert response.status_code == 200
    assert response.get_json()["id"] == directive


def test_patient_searches_own_directives(client: ApiClient) -> None:
    patient = fnr()
    directive = record(client, block(patient))

    response = _as_patient(client, patient, "POST", f"{CONSENT}/_search", data=_search_form(patient))

    assert response.status_code == 200
    assert [e["resource"]["id"] for e in response.get_json()["entry"]] == [directive]


@pytest.mark.parametrize("make", [reservation, block], ids=["reservation", "block"])
def test_patient_records_a_reservation_or_block(client: ApiClient, make: Callable[[str], Any]) -> None:
    patient = fnr()

    response = _as_patient(client, patient, "POST", CONSENT, json=directive_to_fhir(make(patient)))

    assert response.status_code == 201


@pytest.mark.parametrize("make", [reservation, block], ids=["reservation", "block"])
def test_patient_revokes_own_reservation_or_block(client: ApiClient, make: Callable[[str], Any]) -> None:
    patient = fnr()
    directive = record(client, make(patient))

    response = _as_patient(client, patient, "DELETE", f"{CONSENT}/{directive}")

    assert response.status_code == 200
    assert response.get_json()["status"] == "inactive"


def test_patient_may_not_record_a_consent(client: ApiClient, services: Services) -> None:
    patient = fnr()

    response = _as_patient(client, patient, "POST", CONSENT, json=directive_to_fhir(consent(patient)))

    assert response.status_code == 403
    assert _stored_directives(services) == 0


def test_patient_may_not_turn_a_reservation_into_a_consent(client: ApiClient, services: Services) -> None:
    patient = fnr()
    directive = record(client, reservation(patient))
    versions = _directive_versions(services)

    response = _as_patient(
        client,
        patient,
        "PUT",
        f"{CONSENT}/{directive}",
        json={**directive_to_fhir(consent(patient)), "id": directive},
    )

    assert response.status_code == 403
    assert _directive_versions(services) == versions


def test_patient_may_not_read_another_patients_directive(client: ApiClient) -> None:
    directive = record(client, reservation(fnr()))

    response = _as_patient(client, fnr(), "GET", f"{CONSENT}/{directive}")

    assert response.status_code == 404  # the same answer as for a directive that does not exist


def test_patient_may_not_search_another_patients_directives(client: ApiClient) -> None:
    other = fnr()
    record(client, reservation(other))

    response = _as_patient(client, fnr(), "POST", f"{CONSENT}/_search", data=_search_form(other))

    assert response.status_code == 403


def test_patient_may_not_record_for_another_patient(client: ApiClient, services: Services) -> None:
    response = _as_patient(client, fnr(), "POST", CONSENT, json=directive_to_fhir(reservation(fnr())))

    assert response.status_code == 403
    assert _stored_directives(services) == 0


def test_patient_may_not_revoke_another_patients_block(client: ApiClient) -> None:
    directive = record(client, block(fnr()))

    response = _as_patient(client, fnr(), "DELETE", f"{CONSENT}/{directive}")

    assert response.status_code == 403


def test_patient_below_security_level_4_is_not_the_patient(client: ApiClient, services: Services) -> None:
    patient = fnr()
    token = patient_token(client, patient, security_level="3")

    response = as_token(client, token, "POST", CONSENT, json=directive_to_fhir(reservation(patient)))

    assert response.status_code == 403
    assert _stored_directives(services) == 0


def test_patient_token_without_consent_write_scope_cannot_record(client: ApiClient) -> None:
    patient = fnr()
    token = patient_token(client, patient, scopes=(CONSENT_READ,))

    response = as_token(client, token, "POST", CONSENT, json=directive_to_fhir(reservation(patient)))

    assert response.status_code == 403
    assert "insufficient_scope" in response.headers.get("WWW-Authenticate", "")


def test_patient_token_cannot_read_observations(client: ApiClient) -> None:
    patient = fnr()
    publish(client, heart_rate(patient))

    response = as_token(
        client,
        patient_token(client, patient),
        "POST",
        f"{BASE}/Observation/_search",
        data=_search_form(patient),
    )

    assert response.status_code == 403


# -- a consumer (AZ-06) ---------------------------------------------------------------------------


def test_az06_hospital_may_not_create_a_directive(client: ApiClient, services: Services) -> None:
    patient = fnr()
    hospital = _hospital_with_consent_scopes(client)

    response = as_system(client, hospital, "POST", CONSENT, json=directive_to_fhir(consent(patient)))

    assert response.status_code == 403
    assert _stored_directives(services) == 0


def test_az06_hospital_may_not_modify_a_directive(client: ApiClient, services: Services) -> None:
    patient = fnr()
    directive = record(client, reservation(patient))
    versions = _directive_versions(services)
    lifted = {**directive_to_fhir(reservation(patient)), "id": directive, "status": "inactive"}

    response = as_system(
        client, _hospital_with_consent_scopes(client), "PUT", f"{CONSENT}/{directive}", json=lifted
    )

    assert response.status_code == 403
    assert _directive_versions(services) == versions


def test_az06_hospital_may_not_revoke_a_directive(client: ApiClient) -> None:
    patient = fnr()
    directive = record(client, block(patient))

    response = as_system(client, _hospital_with_consent_scopes(client), "DELETE", f"{CONSENT}/{directive}")

    assert response.status_code == 403
    assert _as_controller(client, "GET", f"{CONSENT}/{directive}").get_json()["status"] == "active"


def test_az06_hospital_may_not_read_a_directive(client: ApiClient) -> None:
    directive = record(client, block(fnr()))

    response = as_system(client, _hospital_with_consent_scopes(client), "GET", f"{CONSENT}/{directive}")

    assert response.status_code == 404


def test_az06_hospital_may_not_search_directives(client: ApiClient) -> None:
    patient = fnr()
    record(client, block(patient))

    response = as_system(
        client,
        _hospital_with_consent_scopes(client),
        "POST",
        f"{CONSENT}/_search",
        data=_search_form(patient),
    )

    assert response.status_code == 403


def test_az06_hospital_reading_client_lacks_the_consent_scope(client: ApiClient, services: Services) -> None:
    patient = fnr()

    response = client.post(
        CONSENT, json=directive_to_fhir(consent(patient)), party="hospital", patient=patient
    )

    assert response.status_code == 403
    assert _stored_directives(services) == 0


def test_az06_hospital_may_not_list_agreements(client: ApiClient) -> None:
    response = as_system(
        client, _hospital_with_consent_scopes(client), "GET", f"/{TENANT_A}/admin/agreements"
    )

    assert response.status_code == 403
    assert HOSPITAL.encode() not in response.data


def test_az06_hospital_may_not_add_an_agreement(client: ApiClient, services: Services) -> None:
    before = len(services.policy.agreements())
    body = {"consumer": HOSPITAL, "categories": ["vital-signs"], "purposes": ["TREAT"]}

    response = as_system(
        client, _hospital_with_consent_scopes(client), "POST", f"/{TENANT_A}/admin/agreements", json=body
    )

    assert response.status_code == 403
    assert len(services.policy.agreements()) == before


def test_az06_hospital_may_not_end_an_agreement(client: ApiClient, services: Services) -> None:
    (agreement,) = services.policy.agreements(controller=TENANT_A, consumer=HOSPITAL)

    response = as_system(
        client,
        _hospital_with_consent_scopes(client),
        "POST",
        f"/{TENANT_A}/admin/agreements/{agreement.id}/end",
    )

    assert response.status_code == 403
    assert services.policy.agreements(controller=TENANT_A, consumer=HOSPITAL)[0].period.end is None


def test_az06_another_tenant_may_not_end_this_tenants_agreement(
    client: ApiClient, services: Services
) -> None:
    (agreement,) = services.policy.agreements(controller=TENANT_A, consumer=HOSPITAL)

    response = as_system(
        client, controller(client, TENANT_B), "POST", f"/{TENANT_B}/admin/agreements/{agreement.id}/end"
    )

    assert response.status_code == 404
    assert services.policy.agreements(controller=TENANT_A, consumer=HOSPITAL)[0].period.end is None


def test_controller_lists_only_its_own_agreements(client: ApiClient) -> None:
    response = _as_controller(client, "GET", f"/{TENANT_A}/admin/agreements")

    assert response.status_code == 200
    assert {a["controller"] for a in response.get_json()["agreements"]} == {TENANT_A}


# -- malformed Consent resources --------------------------------------------------------------------

ACTOR = ["provision", "actor", 0]


def _edit(path: list[str | int], value: object) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        target: Any = resource
        for step in path[:-1]:
            target = target[step]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


_DELETE = object()

MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("not a Consent", _edit(["resourceType"], "Patient"), "Consent.resourceType"),
    ("draft", _edit(["status"], "draft"), "Consent.status"),
    ("other scope", _edit(["scope", "coding", 0, "code"], "research"), "Consent.scope"),
    ("no category", _edit(["category"], _DELETE), "Consent.category"),
    ("literal patient", _edit(["patient"], {"reference": "Patient/1"}), "Consent.patient.reference"),
    ("bad FNR", _edit(["patient", "identifier", "value"], "01819012364"), "Consent.patient.identifier.value"),
    (
        "nested provision",
        _edit(["provision", "provision"], [{"type": "permit"}]),
        "Consent.provision.provision",
    ),
    ("no type", _edit(["provision", "type"], _DELETE), "Consent.provision.type"),
    ("actor role", _edit([*ACTOR, "role", "coding", 0, "code"], "AUT"), "Consent.provision.actor[0].role"),
    (
        "bad orgnr",
        _edit([*ACTOR, "reference", "identifier", "value"], "974760674"),
        "Consent.provision.actor[0].reference.identifier.value",
    ),
    (
        "purpose on a deny",
        _edit(
            ["provision", "purpose"],
            [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
        ),
        "Consent.provision.purpose",
    ),
    (
        "period backwards",
        _edit(["provision", "period"], {"start": "2025-06-01", "end": "2025-05-31"}),
        "Consent.provision.period",
    ),
]


def _reservation_against_hospital(patient: str) -> dict[str, Any]:
    return directive_to_fhir(reservation(patient, HOSPITAL))


@pytest.mark.parametrize(("change", "expression"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_consent_is_refused_naming_the_element(
    client: ApiClient, services: Services, change: Callable[[dict[str, Any]], None], expression: str
) -> None:
    resource = _reservation_against_hospital(fnr())
    change(resource)

    response = _as_controller(client, "POST", CONSENT, json=resource)

    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [expression]
    assert _stored_directives(services) == 0


@pytest.mark.parametrize(("change", "expression"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_update_stores_no_new_version(
    client: ApiClient, services: Services, change: Callable[[dict[str, Any]], None], expression: str
) -> None:
    patient = fnr()
    directive = record(client, reservation(patient, HOSPITAL))
    resource = {**_reservation_against_hospital(patient), "id": directive}
    change(resource)
    versions = _directive_versions(services)

    response = _as_controller(client, "PUT", f"{CONSENT}/{directive}", json=resource)

    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == [expression]
    assert _directive_versions(services) == versions


def test_a_permit_naming_a_practitioner_is_refused(client: ApiClient, services: Services) -> None:
    resource = directive_to_fhir(consent(fnr(), consumer=HOSPITAL))
    resource["provision"]["actor"][0]["reference"] = {
        "type": "Practitioner",
        "identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.4", "value": OTHER_HPR},
    }

    response = _as_controller(client, "POST", CONSENT, json=resource)

    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == [
        "Consent.provision.actor[0].reference.identifier.system"
    ]
    assert _stored_directives(services) == 0


def test_a_body_that_is_not_json_is_refused(client: ApiClient, services: Services) -> None:
    response = _as_controller(
        client, "POST", CONSENT, data=b"{not json", headers={"Content-Type": "application/fhir+json"}
    )

    assert response.status_code == 400
    assert _stored_directives(services) == 0


UNKNOWN_ELEMENTS_BUG = (
    "sharing_api/routes/consents.py consent_create/consent_update store the client's Consent JSON "
    "verbatim after consent.fhir_consent.directive_from_fhir, which (by its docstring) leaves full FHIR "
    "validation to the API edge; the edge never does it, so unknown elements and modifierExtension "
    "(which FHIR requires to be understood or refused) are accepted and served back (RES-04: 400, "
    "nothing stored). Fix: validate with fhir.resources' Consent model as validate_observation does for "
    "Observations, and refuse modifierExtension anywhere"
)


@pytest.mark.parametrize(
    "change",
    [
        _edit(["notAnElement"], "x"),
        _edit(["modifierExtension"], [{"url": "urn:test:only-on-sundays", "valueBoolean": True}]),
        _edit(
            ["provision", "modifierExtension"], [{"url": "urn:test:not-for-psychiatry", "valueBoolean": True}]
        ),
    ],
    ids=["unknown-element", "modifierExtension", "provision-modifierExtension"],
)
def test_unknown_elements_are_refused(
    client: ApiClient, services: Services, change: Callable[[dict[str, Any]], None]
) -> None:
    resource = directive_to_fhir(consent(fnr(), consumer=HOSPITAL))
    change(resource)

    response = _as_controller(client, "POST", CONSENT, json=copy.deepcopy(resource))

    assert response.status_code == 400
    assert _stored_directives(services) == 0


# -- revocation takes effect at once (AZ-04) -------------------------------------------------------


def test_revoking_a_reservation_permits_the_very_next_read(client: ApiClient) -> None:
    patient = fnr()
    (obs,) = publish(client, heart_rate(patient))
    directive = record(client, reservation(patient))
    assert read(client, obs, patient).status_code == 404

    revoke(client, directive)

    assert read(client, obs, patient).status_code == 200


def test_revoking_a_block_permits_the_very_next_read(client: ApiClient) -> None:
    patient = fnr()
    publish(client, heart_rate(patient))
    directive = record(client, block(patient))
    assert search(client, patient).get_json()["total"] == 0

    revoke(client, directive)

    assert search(client, patient).get_json()["total"] == 1


def test_patient_revoking_own_reservation_permits_the_very_next_read(client: ApiClient) -> None:
    patient = fnr()
    (obs,) = publish(client, heart_rate(patient))
    created = _as_patient(client, patient, "POST", CONSENT, json=directive_to_fhir(reservation(patient)))
    assert read(client, obs, patient).status_code == 404

    _as_patient(client, patient, "DELETE", f"{CONSENT}/{created.get_json()['id']}")

    assert read(client, obs, patient).status_code == 200


def test_updating_a_reservation_to_inactive_permits_the_very_next_read(client: ApiClient) -> None:
    patient = fnr()
    (obs,) = publish(client, heart_rate(patient))
    directive = record(client, reservation(patient))
    lifted = {**directive_to_fhir(reservation(patient)), "id": directive, "status": "inactive"}

    _as_controller(client, "PUT", f"{CONSENT}/{directive}", json=lifted)

    assert read(client, obs, patient).status_code == 200


# -- the agreements admin API -----------------------------------------------------------------------


def test_controller_adds_an_agreement_that_takes_effect(client: ApiClient) -> None:
    from tests.policy.helpers import THIRD_HOSPITAL, third_hospital

    patient = fnr()
    publish(client, heart_rate(patient))
    party = third_hospital(client)
    assert search(client, patient, party=party).status_code == 403
    body = {"consumer": THIRD_HOSPITAL, "categories": ["vital-signs"], "purposes": ["TREAT"]}

    added = _as_controller(client, "POST", f"/{TENANT_A}/admin/agreements", json=body)

    assert added.status_code == 201
    assert search(client, patient, party=party).get_json()["total"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"consumer": HOSPITAL, "categories": [], "purposes": ["TREAT"]},
        {"consumer": HOSPITAL, "categories": ["vital-signs"], "purposes": ["SHOPPING"]},
        {"consumer": TENANT_A, "categories": ["vital-signs"], "purposes": ["TREAT"]},
        {"consumer": HOSPITAL, "categories": ["vital-signs"], "purposes": ["TREAT"], "validFrom": "soon"},
        {
            "consumer": HOSPITAL,
            "categories": ["vital-signs"],
            "purposes": ["TREAT"],
            "validFrom": "2026-01-02",
            "validTo": "2026-01-01",
        },
    ],
    ids=["no-category", "unknown-purpose", "with-itself", "bad-date", "ends-before-start"],
)
def test_an_invalid_agreement_is_refused(client: ApiClient, services: Services, body: dict[str, Any]) -> None:
    before = len(services.policy.agreements())

    response = _as_controller(client, "POST", f"/{TENANT_A}/admin/agreements", json=body)

    assert response.status_code == 400
    assert len(services.policy.agreements()) == before


STRING_CATEGORIES_BUG = (
    "sharing_api/routes/agreements.py agreements_add: frozenset(body.get('categories') or ()) turns a "
    "string such as \"survey\" into its letters {'s','u','r','v','e','y'} and stores that agreement "
    "(201) instead of refusing it; likewise any iterable. Fix: require a JSON array of strings "
    "(400 otherwise)"
)


def test_an_agreement_with_categories_as_a_string_is_refused(client: ApiClient, services: Services) -> None:
    before = len(services.policy.agreements())
    body = {"consumer": HOSPITAL, "categories": "survey", "purposes": ["TREAT"]}

    response = _as_controller(client, "POST", f"/{TENANT_A}/admin/agreements", json=body)

    assert response.status_code == 400
    assert len(services.policy.agreements()) == before


END_FUTURE_BUG = (
    "sharing_api/store/policy.py PolicyStore.end_agreement sets valid_to = now unconditionally: for an "
    "agreement that has not started (valid_from > now) the stored period ends before it starts, and "
    "every later load of the pair's agreements (_agreement -> Period) raises ValueError, so the admin "
    "list and every read by that consumer fail with 500. Fix: valid_to = min(existing valid_to, "
    "max(at, valid_from)) (or delete/refuse an agreement that never started)"
)


def test_ending_an_agreement_that_has_not_started_keeps_the_api_working(client: ApiClient) -> None:
    from tests.policy.helpers import THIRD_HOSPITAL

    body = {
        "consumer": THIRD_HOSPITAL,
        "categories": ["survey"],
        "purposes": ["TREAT"],
        "validFrom": "2099-01-01",
    }
    added = _as_controller(client, "POST", f"/{TENANT_A}/admin/agreements", json=body).get_json()

    ended = _as_controller(client, "POST", f"/{TENANT_A}/admin/agreements/{added['id']}/end")

    assert ended.status_code == 200
    assert _as_controller(client, "GET", f"/{TENANT_A}/admin/agreements").status_code == 200


RE_END_BUG = (
    "sharing_api/store/policy.py PolicyStore.end_agreement overwrites valid_to with now even when the "
    "agreement has already ended: ending it again moves its recorded end later, rewriting when the "
    "agreement was in force (what log control and audits rely on). Fix: only lower valid_to "
    "(valid_to = min(valid_to, at)) or answer 409 for an agreement that has ended"
)


def test_ending_an_ended_agreement_keeps_its_end(client: ApiClient) -> None:
    from tests.policy.helpers import THIRD_HOSPITAL

    body = {
        "consumer": THIRD_HOSPITAL,
        "categories": ["survey"],
        "purposes": ["TREAT"],
        "validFrom": "2024-01-01",
        "validTo": "2025-01-01",
    }
    added = _as_controller(client, "POST", f"/{TENANT_A}/admin/agreements", json=body).get_json()

    _as_controller(client, "POST", f"/{TENANT_A}/admin/agreements/{added['id']}/end")

    listed = _as_controller(client, "GET", f"/{TENANT_A}/admin/agreements").get_json()["agreements"]
    assert next(a for a in listed if a["id"] == added["id"])["validTo"] == added["validTo"]
