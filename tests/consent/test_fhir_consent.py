"""FHIR R4 ``Consent`` <-> Reservation, Block, Consent (consent/fhir_consent.py, docs/sharing-policy.md)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.consent import Consent as FhirConsent
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.fhir_consent import (
    ACT_REASON_SYSTEM,
    LOCAL_ZONE,
    ConsentFormatError,
    directive_from_fhir,
    directive_to_fhir,
)
from consent.model import (
    DNR,
    FHN,
    FNR,
    HPR,
    ORGNR,
    PURPOSE_OF_USE_SYSTEM,
    Block,
    Consent,
    PatientDirective,
    PatientId,
    Period,
    PurposeOfUse,
    Reservation,
)

PATIENT = PatientId(FNR, "01819012365")  # synthetic: month + 80
HOSPITAL = "974000016"
DOCTOR = "565501872"
SPRING = Period(datetime(2025, 3, 1, 8, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC))

DIRECTIVES: dict[str, PatientDirective] = {
    "reservation-everyone": Reservation("r1", PATIENT),
    "reservation-organisation": Reservation("r2", PATIENT, HOSPITAL, SPRING),
    "reservation-withdrawn": Reservation("r3", PATIENT, active=False),
    "block": Block("b1", PATIENT, DOCTOR, Period(datetime(2025, 1, 1, tzinfo=UTC))),
    "consent-minimal": Consent("c1", PatientId(DNR, "41819012359")),
    "consent-full": Consent(
        "c2",
        PatientId(FHN, "800123456"),
        consumer=HOSPITAL,
        categories=frozenset({"vital-signs", "http://loinc.org|8867-4"}),
        purposes=frozenset({PurposeOfUse.TREAT, PurposeOfUse.COC}),
        period=SPRING,
        data_period=Period(end=datetime(2025, 5, 1, 12, 30, 15, 250_000, tzinfo=UTC)),
        active=False,
    ),
}


def fhir_reservation() -> dict[str, Any]:
    """A reservation against one organisation, as a client would send it."""
    return {
        "resourceType": "Consent",
        "id": "r2",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": FNR, "value": PATIENT.value}},
        "provision": {
            "type": "deny",
            "period": {"start": "2025-03-01T09:00:00+01:00", "end": "2025-05-31T23:59:59Z"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"identifier": {"system": ORGNR, "value": HOSPITAL}},
                }
            ],
        },
    }


@pytest.mark.parametrize("name", list(DIRECTIVES))
def test_a_directive_survives_the_round_trip(name: str) -> None:
    directive = DIRECTIVES[name]
    assert directive_from_fhir(directive_to_fhir(directive)) == directive


@pytest.mark.parametrize("name", list(DIRECTIVES))
def test_what_is_written_is_valid_fhir_r4(name: str) -> None:
    resource = directive_to_fhir(DIRECTIVES[name])
    FhirConsent.model_validate(resource)
    assert directive_to_fhir(directive_from_fhir(resource)) == resource


def test_the_written_form() -> None:
    resource = directive_to_fhir(DIRECTIVES["consent-full"])
    assert resource["status"] == "inactive"
    assert resource["policyRule"]["coding"][0]["code"] == "OPTIN"
    provision = resource["provision"]
    assert provision["type"] == "permit"
    assert provision["actor"][0]["reference"] == {
        "type": "Organization",
        "identifier": {"system": ORGNR, "value": HOSPITAL},
    }
    assert provision["purpose"] == [
        {"system": ACT_REASON_SYSTEM, "code": "COC"},
        {"system": ACT_REASON_SYSTEM, "code": "TREAT"},
    ]
    assert provision["class"] == [
        {"system": "http://loinc.org", "code": "8867-4"},
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"},
    ]
    # Exclusive ends are written as the last instant inside: FHIR's end includes what matches it.
    assert provision["period"] == {"start": "2025-03-01T08:00:00Z", "end": "2025-05-31T23:59:59Z"}
    assert provision["dataPeriod"] == {"end": "2025-05-01T12:30:15.249999Z"}


def test_a_reservation_against_an_organisation_is_read() -> None:
    directive = directive_from_fhir(fhir_reservation())
    assert directive == Reservation(
        "r2",
        PATIENT,
        HOSPITAL,
        Period(datetime(2025, 3, 1, 8, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC)),
    )


def test_a_deny_without_actor_is_a_reservation_against_everyone() -> None:
    resource = fhir_reservation()
    del resource["provision"]["actor"]
    directive = directive_from_fhir(resource)
    assert isinstance(directive, Reservation)
    assert directive.applies_to_everyone


def test_a_deny_of_a_practitioner_is_a_block() -> None:
    resource = fhir_reservation()
    resource["provision"]["actor"][0]["reference"] = {
        "type": "Practitioner",
        "identifier": {"system": HPR, "value": DOCTOR},
    }
    directive = directive_from_fhir(resource)
    assert isinstance(directive, Block)
    assert directive.practitioner_hpr == DOCTOR


def test_a_permit_is_a_consent() -> None:
    resource = fhir_reservation()
    resource["provision"]["type"] = "permit"
    resource["provision"]["purpose"] = [{"system": PURPOSE_OF_USE_SYSTEM, "code": "ETREAT"}]
    directive = directive_from_fhir(resource)
    assert isinstance(directive, Consent)
    assert directive.consumer == HOSPITAL
    assert directive.purposes == frozenset({PurposeOfUse.ETREAT})
    assert directive.categories is None


@pytest.mark.parametrize(("status", "active"), [("active", True), ("inactive", False), ("rejected", False)])
def test_status(status: str, active: bool) -> None:
    resource = fhir_reservation()
    resource["status"] = status
    assert directive_from_fhir(resource).active is active


def test_the_record_id_names_a_new_resource() -> None:
    resource = fhir_reservation()
    del resource["id"]
    assert directive_from_fhir(resource, record_id="new-1").id == "new-1"


def test_hl7s_primary_recipient_role_and_read_actions_are_accepted() -> None:
    resource = fhir_reservation()
    resource["provision"]["actor"][0]["role"]["coding"][0]["code"] = "PRCP"
    resource["provision"]["action"] = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]},
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "correct"}]},
    ]
    assert isinstance(directive_from_fhir(resource), Reservation)


# --- periods ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fhir_period", "expected"),
    [
        # A date is a Norwegian local day; the end keeps the whole of its day.
        (
            {"start": "2025-06-01", "end": "2025-06-30"},
            Period(datetime(2025, 6, 1, tzinfo=LOCAL_ZONE), datetime(2025, 7, 1, tzinfo=LOCAL_ZONE)),
        ),
        (
            {"start": "2025-06", "end": "2025"},
            Period(datetime(2025, 6, 1, tzinfo=LOCAL_ZONE), datetime(2026, 1, 1, tzinfo=LOCAL_ZONE)),
        ),
        (
            {"start": "2025-12", "end": "2025-12"},
            Period(datetime(2025, 12, 1, tzinfo=LOCAL_ZONE), datetime(2026, 1, 1, tzinfo=LOCAL_ZONE)),
        ),
        # A time keeps the whole of its last second, or tenth, or microsecond.
        ({"end": "2025-06-01T10:00:00+02:00"}, Period(end=datetime(2025, 6, 1, 8, 0, 1, tzinfo=UTC))),
        (
            {"end": "2025-06-01T10:00:00.5+02:00"},
            Period(end=datetime(2025, 6, 1, 8, 0, 0, 600_000, tzinfo=UTC)),
        ),
        (
            {"end": "2025-06-01T08:00:00.123456789Z"},
            Period(end=datetime(2025, 6, 1, 8, 0, 0, 123_457, tzinfo=UTC)),
        ),
        (
            {"start": "2025-06-01T10:00:00.5-01:30"},
            Period(datetime(2025, 6, 1, 11, 30, 0, 500_000, tzinfo=UTC)),
        ),
        ({}, Period()),
    ],
)
def test_fhir_periods_are_read_half_open(fhir_period: dict[str, str], expected: Period) -> None:
    resource = fhir_reservation()
    resource["provision"]["period"] = fhir_period
    assert directive_from_fhir(resource).period == expected


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(hours=1), timedelta(hours=-9, minutes=-30)])
def test_a_period_end_is_exact_to_the_microsecond(offset: timedelta) -> None:
    end = datetime(2025, 6, 1, 8, 0, 0, 1, tzinfo=timezone(offset))
    directive = Reservation("r1", PATIENT, period=Period(end=end))
    read_back = directive_from_fhir(directive_to_fhir(directive))
    assert read_back.period.end == end
    assert read_back.period.contains(end - timedelta(microseconds=1))
    assert not read_back.period.contains(end)


moments = st.datetimes(
    min_value=datetime(1900, 1, 2),  # hypothesis takes naive bounds and adds the zones
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, LOCAL_ZONE, timezone(timedelta(hours=-3, minutes=-30))]),
)


@st.composite
def periods(draw: st.DrawFn) -> Period:
    start, end = draw(st.none() | moments), draw(st.none() | moments)
    if start is not None and end is not None and not start < end:
        start, end = (end, start) if end < start else (start, None)
    return Period(start, end)


patients = st.sampled_from([PATIENT, PatientId(DNR, "41819012359"), PatientId(FHN, "800123456")])
record_ids = st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True)
categories = st.frozensets(
    st.sampled_from(
        ["vital-signs", "survey", "http://loinc.org|8867-4", "urn:oid:2.16.578.1.12.4.1.1.7280|NPU02187"]
    ),
    min_size=1,
)
directives = st.one_of(
    st.builds(Reservation, record_ids, patients, st.none() | st.just(HOSPITAL), periods(), st.booleans()),
    st.builds(Block, record_ids, patients, st.just(DOCTOR), periods(), st.booleans()),
    st.builds(
        Consent,
        record_ids,
        patients,
        st.none() | st.just(HOSPITAL),
        st.none() | categories,
        st.frozensets(st.sampled_from(list(PurposeOfUse))),
        periods(),
        st.none() | periods(),
        st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None)
@given(directive=directives)
def test_every_directive_survives_the_round_trip(directive: PatientDirective) -> None:
    resource = directive_to_fhir(directive)
    assert directive_from_fhir(resource) == directive
    assert directive_to_fhir(directive_from_fhir(resource)) == resource


# --- refusals name the element ------------------------------------------------------------------


def _set(path: list[str | int], value: object) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        target: Any = resource
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(path: list[str | int]) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        target: Any = resource
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


ACTOR: list[str | int] = ["provision", "actor", 0]
RESH = "urn:oid:2.16.578.1.12.4.1.4.102"

REFUSALS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("wrong resource", _set(["resourceType"], "Patient"), "Consent.resourceType", "expected a Consent"),
    ("no id", _delete(["id"]), "Consent.id", "no id"),
    ("bad id", _set(["id"], "a/b"), "Consent.id", "not a FHIR id"),
    ("draft", _set(["status"], "draft"), "Consent.status", "active, inactive"),
    ("no status", _delete(["status"]), "Consent.status", "non-empty string"),
    ("other scope", _set(["scope", "coding", 0, "code"], "research"), "Consent.scope", "patient-privacy"),
    ("scope not a concept", _set(["scope"], "patient-privacy"), "Consent.scope", "JSON object"),
    ("no category", _delete(["category"]), "Consent.category", "non-empty JSON array"),
    ("no patient", _delete(["patient"]), "Consent.patient", "JSON object"),
    (
        "literal patient",
        _set(["patient"], {"reference": "Patient/1"}),
        "Consent.patient.reference",
        "by identifier",
    ),
    (
        "patient by HPR",
        _set(["patient", "identifier", "system"], HPR),
        "Consent.patient.identifier.system",
        "fødselsnummer",
    ),
    (
        "bad FNR",
        _set(["patient", "identifier", "value"], "01819012364"),
        "Consent.patient.identifier.value",
        "national identity number",
    ),
    ("no provision", _delete(["provision"]), "Consent.provision", "JSON object"),
    (
        "nested provision",
        _set(["provision", "provision"], [{"type": "permit"}]),
        "Consent.provision.provision",
        "not supported",
    ),
    (
        "provision.code",
        _set(["provision", "code"], [{"text": "x"}]),
        "Consent.provision.code",
        "not supported",
    ),
    ("no type", _delete(["provision", "type"]), "Consent.provision.type", "deny or permit"),
    (
        "two actors",
        lambda r: r["provision"]["actor"].append(copy.deepcopy(r["provision"]["actor"][0])),
        "Consent.provision.actor[1]",
        "one actor",
    ),
    (
        "actor role",
        _set([*ACTOR, "role", "coding", 0, "code"], "AUT"),
        "Consent.provision.actor[0].role",
        "recipient",
    ),
    (
        "actor by RESH",
        _set([*ACTOR, "reference", "identifier", "system"], RESH),
        "Consent.provision.actor[0].reference.identifier.system",
        "organisation",
    ),
    (
        "literal actor",
        _set([*ACTOR, "reference"], {"reference": "Organization/1"}),
        "Consent.provision.actor[0].reference.reference",
        "by identifier",
    ),
    (
        "bad orgnr",
        _set([*ACTOR, "reference", "identifier", "value"], "974000017"),
        "Consent.provision.actor[0].reference.identifier.value",
        "organisasjonsnummer",
    ),
    (
        "actor type",
        _set([*ACTOR, "reference", "type"], "Practitioner"),
        "Consent.provision.actor[0].reference.type",
        "Organization",
    ),
    (
        "purpose on a deny",
        _set(["provision", "purpose"], [{"system": ACT_REASON_SYSTEM, "code": "TREAT"}]),
        "Consent.provision.purpose",
        "every purpose",
    ),
    (
        "class on a deny",
        _set(["provision", "class"], [{"system": "http://loinc.org", "code": "8867-4"}]),
        "Consent.provision.class",
        "every purpose, category",
    ),
    (
        "dataPeriod on a deny",
        _set(["provision", "dataPeriod"], {"start": "2025-01-01"}),
        "Consent.provision.dataPeriod",
        "every purpose, category and time",
    ),
    (
        "read actions missing",
        _set(
            ["provision", "action"],
            [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "correct"}
                    ]
                }
            ],
        ),
        "Consent.provision.action",
        "access, use or disclose",
    ),
    (
        "period backwards",
        _set(["provision", "period"], {"start": "2025-06-01", "end": "2025-05-31"}),
        "Consent.provision.period",
        "ends before it starts",
    ),
    (
        "not a dateTime",
        _set(["provision", "period", "start"], "1 March 2025"),
        "Consent.provision.period.start",
        "not a FHIR dateTime",
    ),
    (
        "time without zone",
        _set(["provision", "period", "end"], "2025-05-31T23:59:59"),
        "Consent.provision.period.end",
        "not a FHIR dateTime",
    ),
    (
        "no such day",
        _set(["provision", "period", "start"], "2025-02-30"),
        "Consent.provision.period.start",
        "not a valid date",
    ),
    (
        "beyond year 9999",
        _set(["provision", "period", "end"], "9999-12-31"),
        "Consent.provision.period.end",
        "not a valid date",
    ),
]


@pytest.mark.parametrize(
    ("change", "expression", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusals_name_the_element(
    change: Callable[[dict[str, Any]], None], expression: str, message: str
) -> None:
    resource = fhir_reservation()
    change(resource)
    with pytest.raises(ConsentFormatError) as caught:
        directive_from_fhir(resource)
    assert caught.value.expression == expression
    assert message in caught.value.message
    assert str(caught.value) == f"{caught.value.message} @ {expression}"


def _permit(resource: dict[str, Any]) -> None:
    resource["provision"]["type"] = "permit"


PERMIT_REFUSALS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    (
        "consent for a practitioner",
        _set([*ACTOR, "reference"], {"identifier": {"system": HPR, "value": DOCTOR}}),
        "Consent.provision.actor[0].reference.identifier.system",
        "not a health worker",
    ),
    (
        "unknown purpose",
        _set(["provision", "purpose"], [{"system": ACT_REASON_SYSTEM, "code": "HRESCH"}]),
        "Consent.provision.purpose[0].code",
        "TREAT, ETREAT, COC, BTG",
    ),
    (
        "purpose system",
        _set(["provision", "purpose"], [{"system": "http://example.org", "code": "TREAT"}]),
        "Consent.provision.purpose[0].system",
        "PurposeOfUse",
    ),
    (
        "class without system",
        _set(["provision", "class"], [{"code": "vital-signs"}]),
        "Consent.provision.class[0].system",
        "non-empty string",
    ),
    (
        "empty class",
        _set(["provision", "class"], []),
        "Consent.provision.class",
        "non-empty JSON array",
    ),
    (
        "bad dataPeriod",
        _set(["provision", "dataPeriod"], {"end": "2025-13-01"}),
        "Consent.provision.dataPeriod.end",
        "not a valid date",
    ),
]


@pytest.mark.parametrize(
    ("change", "expression", "message"), [r[1:] for r in PERMIT_REFUSALS], ids=[r[0] for r in PERMIT_REFUSALS]
)
def test_permit_refusals_name_the_element(
    change: Callable[[dict[str, Any]], None], expression: str, message: str
) -> None:
    resource = fhir_reservation()
    _permit(resource)
    change(resource)
    with pytest.raises(ConsentFormatError) as caught:
        directive_from_fhir(resource)
    assert (caught.value.expression, message in caught.value.message) == (expression, True)


def test_a_non_object_is_refused() -> None:
    with pytest.raises(ConsentFormatError) as caught:
        directive_from_fhir(["Consent"])
    assert caught.value.expression == "Consent"
    assert isinstance(caught.value, ValueError)
