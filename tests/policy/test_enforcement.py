"""The precedence table of docs/sharing-policy.md, row by row, as a reader sees it over HTTP.

Rows 1-5 (about the organisations) answer 403 saying why; rows 6-14 (about the patient) must look
exactly like "no data" (an empty searchset, or 404 for a read by id). Each test sets up the records
through the API or the store and checks what a hospital's read returns. The ApiClient's reading
parties carry HPR 1234567; ``purpose=`` sets the attestation's purpose of use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from consent.model import Period, PurposeOfUse
from sharing_api.services import Services
from sharing_api.store.schema import tenants
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, HPR, READ, ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.policy.helpers import (
    OTHER_HPR,
    STRANGER,
    THIRD_HOSPITAL,
    as_system,
    block,
    consent,
    controller,
    diagnostics,
    ids_in,
    lastn,
    news2,
    publish,
    read,
    reader,
    record,
    reservation,
    search,
    third_hospital,
    utc,
)

EMERGENCIES = ["ETREAT", "BTG"]
ALL_PURPOSES = ["TREAT", "ETREAT", "COC", "BTG"]


def _patient_with_vitals_and_score(client: ApiClient) -> tuple[str, str, str]:
    """A patient with one heart rate (vital-signs) and one NEWS2 score (survey)."""
    patient = fnr()
    vital, score = publish(client, heart_rate(patient), news2(patient))
    return patient, vital, score


def _agree(
    services: Services,
    *,
    consumer: str = THIRD_HOSPITAL,
    categories: frozenset[str] = frozenset({"vital-signs", "survey"}),
    purposes: frozenset[PurposeOfUse] = frozenset(PurposeOfUse),
    valid_from: datetime = datetime(2020, 1, 1, tzinfo=UTC),
    valid_to: datetime | None = None,
    data_from: datetime | None = None,
    data_to: datetime | None = None,
) -> None:
    services.policy.add_agreement(
        controller=TENANT_A,
        consumer=consumer,
        categories=categories,
        purposes=purposes,
        valid_from=valid_from,
        valid_to=valid_to,
        data_from=data_from,
        data_to=data_to,
    )


def _looks_like_no_data(client: ApiClient, patient: str, obs_id: str, **kwargs: str) -> None:
    found = search(client, patient, **kwargs)
    assert found.status_code == 200
    assert found.get_json()["total"] == 0
    assert "entry" not in found.get_json()
    assert read(client, obs_id, patient, **kwargs).status_code == 404
    assert "entry" not in lastn(client, patient, **kwargs).get_json()


def _refused_saying(client: ApiClient, patient: str, words: str, **kwargs: str) -> None:
    found = search(client, patient, **kwargs)
    assert found.status_code == 403
    assert words in diagnostics(found)


# -- rows 1-5: the organisations -------------------------------------------------------------------


def test_row_no_agreement_is_refused_saying_so(client: ApiClient) -> None:
    patient, _, _ = _patient_with_vitals_and_score(client)

    _refused_saying(client, patient, "no sharing agreement", party=third_hospital(client))


def test_row_agreement_expired_is_refused_saying_so(client: ApiClient, services: Services) -> None:
    patient, _, _ = _patient_with_vitals_and_score(client)
    _agree(services, valid_to=datetime(2025, 1, 1, tzinfo=UTC))

    _refused_saying(client, patient, "has ended", party=third_hospital(client))


def test_row_agreement_ended_through_the_admin_api(client: ApiClient, services: Services) -> None:
    patient, _, _ = _patient_with_vitals_and_score(client)
    (agreement,) = services.policy.agreements(controller=TENANT_A, consumer=HOSPITAL)
    as_system(client, controller(client), "POST", f"/{TENANT_A}/admin/agreements/{agreement.id}/end")

    _refused_saying(client, patient, "has ended")


def test_row_agreement_not_yet_valid_is_refused_saying_so(client: ApiClient, services: Services) -> None:
    patient, _, _ = _patient_with_vitals_and_score(client)
    _agree(services, valid_from=datetime.now(UTC) + timedelta(days=1))

    _refused_saying(client, patient, "not yet in force", party=third_hospital(client))


@pytest.mark.parametrize("purpose", ["ETREAT", "COC", "BTG"])
def test_row_purpose_not_agreed_is_refused_saying_so(
    client: ApiClient, services: Services, purpose: str
) -> None:
    patient, _, _ = _patient_with_vitals_and_score(client)
    _agree(services, purposes=frozenset({PurposeOfUse.TREAT}))

    _refused_saying(client, patient, "purpose of use", party=third_hospital(client), purpose=purpose)


def test_row_purpose_agreed_reads(client: ApiClient, services: Services) -> None:
    patient, _, _ = _patient_with_vitals_and_score(client)
    _agree(services, purposes=frozenset({PurposeOfUse.TREAT}))

    assert search(client, patient, party=third_hospital(client), purpose="TREAT").get_json()["total"] == 2


def test_row_scope_not_agreed_is_refused_saying_so(client: ApiClient, services: Services) -> None:
    """Two agreements in force for the pair narrow each other; disjoint categories leave nothing."""
    patient, _, _ = _patient_with_vitals_and_score(client)
    _agree(services, categories=frozenset({"vital-signs"}))
    _agree(services, categories=frozenset({"survey"}))

    _refused_saying(client, patient, "does not cover the data", party=third_hospital(client))


def test_row_no_agreement_does_not_depend_on_the_patients_directives(client: ApiClient) -> None:
    patient, _, _ = _patient_with_vitals_and_score(client)
    record(client, block(patient))

    _refused_saying(client, patient, "no sharing agreement", party=third_hospital(client))


# -- rows 6-7: blocks -----------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ALL_PURPOSES)
def test_row_blocked_practitioner_looks_like_no_data(client: ApiClient, purpose: str) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, block(patient, HPR))

    _looks_like_no_data(client, patient, vital, purpose=purpose)


def test_row_block_of_another_practitioner_does_not_stop_this_one(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    record(client, block(patient, OTHER_HPR))

    assert ids_in(search(client, patient)) == {vital, score}


def test_row_block_follows_the_practitioner_to_another_hospital(client: ApiClient) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, block(patient, HPR))

    _looks_like_no_data(client, patient, vital, party="other-hospital")


def test_row_block_not_yet_in_force_does_not_stop_anyone(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    record(client, block(patient, HPR, Period(tomorrow, None)))

    assert ids_in(search(client, patient)) == {vital, score}


def test_row_practitioner_not_named_looks_like_no_data(client: ApiClient) -> None:
    """A system with no health worker behind it cannot be checked against the patient's block."""
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, block(patient, OTHER_HPR))
    system = reader(client, "hospital-system", HOSPITAL, point_of_care=HOSPITAL_UNIT, hpr=None)

    _looks_like_no_data(client, patient, vital, party=system)


def test_row_practitioner_not_named_without_blocks_reads(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    system = reader(client, "hospital-system", HOSPITAL, point_of_care=HOSPITAL_UNIT, hpr=None)

    assert ids_in(search(client, patient, party=system)) == {vital, score}


# -- row 8: the controller's own health workers -------------------------------------------------


def _own_nurse(client: ApiClient) -> str:
    return reader(client, "own-nurse", TENANT_A, hpr=HPR, scopes=frozenset({READ}))


def test_row_permit_own_organisation_despite_a_reservation(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    record(client, reservation(patient))

    assert ids_in(search(client, patient, party=_own_nurse(client))) == {vital, score}


def test_row_permit_own_organisation_in_opt_in_mode_without_consent(
    client: ApiClient, services: Services
) -> None:
    services.tenants.add(TENANT_A, "Kommune A", opt_in=True)
    patient, vital, score = _patient_with_vitals_and_score(client)

    assert ids_in(search(client, patient, party=_own_nurse(client))) == {vital, score}


def test_row_own_organisation_is_still_blocked(client: ApiClient) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, block(patient, HPR))

    _looks_like_no_data(client, patient, vital, party=_own_nurse(client))


# -- rows 9-10: reservations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "against", [None, HOSPITAL, HOSPITAL_UNIT], ids=["everyone", "legal-entity", "point-of-care"]
)
def test_row_reservation_looks_like_no_data(client: ApiClient, against: str | None) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, reservation(patient, against))

    _looks_like_no_data(client, patient, vital)


def test_row_reservation_against_another_organisation_does_not_stop_this_one(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    record(client, reservation(patient, STRANGER))

    assert ids_in(search(client, patient)) == {vital, score}


def test_row_reservation_against_one_hospital_does_not_stop_another(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    record(client, reservation(patient, HOSPITAL))

    assert ids_in(search(client, patient, party="other-hospital")) == {vital, score}


@pytest.mark.parametrize("purpose", EMERGENCIES)
def test_row_reservation_holds_in_an_emergency_without_override(client: ApiClient, purpose: str) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, reservation(patient))

    _looks_like_no_data(client, patient, vital, purpose=purpose)


def test_row_reservation_that_has_ended_does_not_stop_anyone(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    record(client, reservation(patient, None, Period(utc("2024-01-01T00:00:00"), utc("2025-01-01T00:00:00"))))

    assert ids_in(search(client, patient)) == {vital, score}


EMERGENCY_BUG = (
    "sharing_api/store/tenants.py: TenantDirectory.add() has no emergency_override (nor processors) "
    "parameter, and _load() builds TenantRecord without reading the emergency_override and processors "
    "columns, so TenantRecord.emergency_override is always False: rows 9 and 12 of the precedence "
    "table (emergency override) can never apply over HTTP, and guard's processor rule never sees a "
    "processor. Fix: add both to add() and to the TenantRecord built in _load()"
)


@pytest.mark.parametrize("purpose", EMERGENCIES)
def test_row_reservation_emergency_override_returns_data(
    client: ApiClient, services: Services, purpose: str
) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    record(client, reservation(patient))

    services.tenants.add(TENANT_A, "Kommune A", emergency_override=True)  # type: ignore[call-arg]

    assert ids_in(search(client, patient, purpose=purpose)) == {vital, score}


def test_row_emergency_override_stored_in_the_tenant_row_still_reads_treat_as_reserved(
    client: ApiClient, services: Services
) -> None:
    """The override is for ETREAT/BTG only: TREAT stays reserved whatever the tenant's switch."""
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, reservation(patient))
    with services.engine.begin() as conn:
        conn.execute(update(tenants).where(tenants.c.orgnr == TENANT_A).values(emergency_override=True))
    services.tenants.add(TENANT_A, "Kommune A")

    _looks_like_no_data(client, patient, vital, purpose="TREAT")


@pytest.mark.parametrize("purpose", EMERGENCIES)
def test_row_emergency_never_overrides_a_block(client: ApiClient, services: Services, purpose: str) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, block(patient, HPR))
    with services.engine.begin() as conn:
        conn.execute(update(tenants).where(tenants.c.orgnr == TENANT_A).values(emergency_override=True))
    services.tenants.add(TENANT_A, "Kommune A")

    _looks_like_no_data(client, patient, vital, purpose=purpose)


# -- rows 11-14: opt-in tenants -------------------------------------------------------------------


@pytest.fixture
def opt_in(services: Services) -> None:
    services.tenants.add(TENANT_A, "Kommune A", opt_in=True)


@pytest.mark.usefixtures("opt_in")
def test_row_no_consent_looks_like_no_data(client: ApiClient) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)

    _looks_like_no_data(client, patient, vital)


@pytest.mark.usefixtures("opt_in")
def test_row_permit_consent_returns_data(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    record(client, consent(patient))

    assert ids_in(search(client, patient)) == {vital, score}
    assert read(client, vital, patient).status_code == 200


@pytest.mark.usefixtures("opt_in")
def test_row_permit_consent_for_this_hospital_by_point_of_care(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    record(client, consent(patient, consumer=HOSPITAL_UNIT))

    assert ids_in(search(client, patient)) == {vital, score}


@pytest.mark.usefixtures("opt_in")
def test_row_permit_consent_narrows_to_its_categories(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    record(client, consent(patient, categories=frozenset({"survey"})))

    assert ids_in(search(client, patient)) == {score}
    assert read(client, vital, patient).status_code == 404


@pytest.mark.usefixtures("opt_in")
def test_row_consent_for_another_organisation_looks_like_no_data(client: ApiClient) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, consent(patient, consumer=STRANGER))

    _looks_like_no_data(client, patient, vital)


@pytest.mark.usefixtures("opt_in")
def test_row_reservation_beats_a_consent(client: ApiClient) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, consent(patient))
    record(client, reservation(patient))

    _looks_like_no_data(client, patient, vital)


@pytest.mark.usefixtures("opt_in")
def test_row_scope_not_consented_looks_like_no_data(client: ApiClient) -> None:
    """A consent only for a category the agreement does not share leaves nothing of the agreed scope."""
    patient, vital, _ = _patient_with_vitals_and_score(client)
    record(client, consent(patient, categories=frozenset({"http://loinc.org|8867-4"})))

    _looks_like_no_data(client, patient, vital)


@pytest.mark.usefixtures("opt_in")
@pytest.mark.parametrize("purpose", EMERGENCIES)
def test_row_no_consent_holds_in_an_emergency_without_override(client: ApiClient, purpose: str) -> None:
    patient, vital, _ = _patient_with_vitals_and_score(client)

    _looks_like_no_data(client, patient, vital, purpose=purpose)


@pytest.mark.usefixtures("opt_in")
def test_row_consent_emergency_override_returns_the_agreed_scope(
    client: ApiClient, services: Services
) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)

    services.tenants.add(TENANT_A, "Kommune A", opt_in=True, emergency_override=True)  # type: ignore[call-arg]

    assert ids_in(search(client, patient, purpose="BTG")) == {vital, score}


# -- row 15: the agreement decides; its narrowing (AZ-05) ----------------------------------------


def test_row_permit_agreement_returns_everything_agreed(client: ApiClient) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)

    assert ids_in(search(client, patient)) == {vital, score}
    assert ids_in(read(client, vital, patient)) == {vital}
    assert ids_in(lastn(client, patient)) == {vital, score}


def test_row_agreement_sharing_only_survey_returns_only_survey(client: ApiClient, services: Services) -> None:
    patient, vital, score = _patient_with_vitals_and_score(client)
    _agree(services, categories=frozenset({"survey"}))
    party = third_hospital(client)

    assert ids_in(search(client, patient, party=party)) == {score}
    assert ids_in(lastn(client, patient, party=party)) == {score}
    assert read(client, vital, patient, party=party).status_code == 404
    assert read(client, score, patient, party=party).status_code == 200


def test_row_agreement_category_narrowing_applies_to_the_count(client: ApiClient, services: Services) -> None:
    patient, _, _ = _patient_with_vitals_and_score(client)
    _agree(services, categories=frozenset({"survey"}))

    found = search(client, patient, party=third_hospital(client), form={"_summary": "count"})

    assert found.get_json()["total"] == 1


def test_row_searching_for_a_category_outside_the_agreement_finds_nothing(
    client: ApiClient, services: Services
) -> None:
    patient, _, _ = _patient_with_vitals_and_score(client)
    _agree(services, categories=frozenset({"survey"}))

    found = search(client, patient, party=third_hospital(client), form={"category": "vital-signs"})

    assert found.status_code == 200
    assert found.get_json()["total"] == 0


EDGES = {
    "before-start": "2026-11-20T07:59:59Z",
    "at-start": "2026-11-20T08:00:00Z",
    "last-second": "2026-11-20T08:59:59Z",
    "at-end": "2026-11-20T09:00:00Z",
}


def _patient_at_the_edges(client: ApiClient) -> tuple[str, dict[str, str]]:
    patient = fnr()
    ids = publish(client, *[heart_rate(patient, when=w) for w in EDGES.values()])
    return patient, dict(zip(EDGES, ids, strict=True))


def test_row_agreement_data_period_edges_to_the_second(client: ApiClient, services: Services) -> None:
    """AZ-05: a data period [08:00:00, 09:00:00) shows 08:00:00 and 08:59:59, not 07:59:59 nor 09:00:00."""
    patient, ids = _patient_at_the_edges(client)
    _agree(services, data_from=utc("2026-11-20T08:00:00"), data_to=utc("2026-11-20T09:00:00"))

    found = ids_in(search(client, patient, party=third_hospital(client)))

    assert found == {ids["at-start"], ids["last-second"]}


@pytest.mark.parametrize(("edge", "visible"), [(k, k in ("at-start", "last-second")) for k in EDGES])
def test_row_agreement_data_period_edges_on_read_by_id(
    client: ApiClient, services: Services, edge: str, visible: bool
) -> None:
    patient, ids = _patient_at_the_edges(client)
    _agree(services, data_from=utc("2026-11-20T08:00:00"), data_to=utc("2026-11-20T09:00:00"))

    response = read(client, ids[edge], patient, party=third_hospital(client))

    assert response.status_code == (200 if visible else 404)


def test_row_agreement_data_period_through_the_admin_api(client: ApiClient) -> None:
    """The admin API reads ``dataTo`` as inclusive at its precision (agreements.py, end=True)."""
    patient, ids = _patient_at_the_edges(client)
    body = {
        "consumer": THIRD_HOSPITAL,
        "categories": ["vital-signs"],
        "purposes": ["TREAT"],
        "dataFrom": "2026-11-20T08:00:00Z",
        "dataTo": "2026-11-20T08:59:59Z",
    }
    assert (
        as_system(client, controller(client), "POST", f"/{TENANT_A}/admin/agreements", json=body).status_code
        == 201
    )

    found = ids_in(search(client, patient, party=third_hospital(client)))

    assert found == {ids["at-start"], ids["last-second"]}


DATA_TO_ROUND_TRIP_BUG = (
    "sharing_api/routes/agreements.py: agreements_add reads dataTo as inclusive (end of its precision, "
    "_moment(..., end=True)) but agreement_json writes dataTo as the exclusive end: an agreement listed "
    "and posted back shares one more second (or day) of data each time, and validTo/dataTo of the same "
    "JSON mean different things. Fix: write dataTo as the last instant inside (as fhir_consent's "
    "_period_json does) or read it as exclusive like validTo"
)


def test_an_agreement_posted_back_as_listed_shares_the_same_data(client: ApiClient) -> None:
    path = f"/{TENANT_A}/admin/agreements"
    body = {
        "consumer": THIRD_HOSPITAL,
        "categories": ["vital-signs"],
        "purposes": ["TREAT"],
        "dataFrom": "2026-11-20T08:00:00Z",
        "dataTo": "2026-11-20T08:59:59Z",
    }
    first = as_system(client, controller(client), "POST", path, json=body).get_json()
    again = {k: first[k] for k in ("consumer", "categories", "purposes", "dataFrom", "dataTo")}

    second = as_system(client, controller(client), "POST", path, json=again).get_json()

    assert second["dataTo"] == first["dataTo"]


HISTORY_SCOPE_BUG = (
    "sharing_api/routes/observations.py history() and vread(): _readable() checks only the CURRENT "
    "version against the decision's narrowing, then services().observations.history()/version() return "
    "every stored version unfiltered, so a version whose effective time (or category) lies outside the "
    "agreement's or consent's scope is served (AZ-05 on _history). Fix: apply the ReadScope to each "
    "version (keep effective_start/effective_end and categories per history row, or re-validate and "
    "filter each version's JSON), answering vread of an out-of-scope version like a missing one"
)


def _corrected_into_scope(client: ApiClient, services: Services) -> tuple[str, str]:
    """An observation first published outside the agreement's data period, then corrected into it."""
    patient = fnr()
    _agree(services, data_from=utc("2026-11-20T08:00:00"), data_to=utc("2026-11-20T09:00:00"))
    (obs,) = publish(client, heart_rate(patient, value=61, when="2026-11-20T07:00:00Z"))
    later = {**heart_rate(patient, value=62, when="2026-11-20T08:30:00Z"), "id": obs}
    corrected = client.put(f"/{TENANT_A}/fhir/Observation/{obs}", json=later)
    assert corrected.status_code == 200
    return patient, obs


def test_a_corrected_observation_is_read_in_its_current_version(
    client: ApiClient, services: Services
) -> None:
    patient, obs = _corrected_into_scope(client, services)

    response = read(client, obs, patient, party=third_hospital(client))

    assert response.get_json()["effectiveDateTime"] == "2026-11-20T08:30:00Z"


def test_history_leaves_out_versions_outside_the_agreed_data_period(
    client: ApiClient, services: Services
) -> None:
    patient, obs = _corrected_into_scope(client, services)

    response = client.get(
        f"/{TENANT_A}/fhir/Observation/{obs}/_history", patient=patient, party=third_hospital(client)
    )

    times = [e["resource"]["effectiveDateTime"] for e in response.get_json()["entry"]]
    assert times == ["2026-11-20T08:30:00Z"]


def test_vread_of_a_version_outside_the_agreed_data_period_is_not_found(
    client: ApiClient, services: Services
) -> None:
    patient, obs = _corrected_into_scope(client, services)

    response = client.get(
        f"/{TENANT_A}/fhir/Observation/{obs}/_history/1", patient=patient, party=third_hospital(client)
    )

    assert response.status_code == 404
