"""The tillitsrammeverk attestation: real shapes parse, broken ones are refused with a JSON path."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from auth.attestation import (
    ATTESTATION_TYPE,
    OID_PURPOSE_OF_USE,
    Attestation,
    PurposeOfUse,
    attestation_from_model,
    find_attestation,
    parse_attestation,
    require_patient_access,
)
from auth.errors import InvalidAuthorizationDetails

PATIENT = "05076600324"


def _load(shared_dir: Path, *parts: str) -> Any:
    return json.loads(shared_dir.joinpath("reference", *parts).read_text(encoding="utf-8"))


@pytest.fixture
def token_details(shared_dir: Path) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = _load(shared_dir, "helseid", "access-token.payload.user-bound.json")[
        "authorization_details"
    ]
    return details


@pytest.fixture
def fastlege(shared_dir: Path) -> dict[str, Any]:
    example: dict[str, Any] = _load(
        shared_dir, "tillitsrammeverk", "extracted", "vedlegg-c-eksempel-1-fastlege.json"
    )
    return example


def complete(**changes: Any) -> dict[str, Any]:
    """A complete attestation (HelseID spelling) for one patient; ``changes`` patch top-level members."""
    entry: dict[str, Any] = {
        "type": ATTESTATION_TYPE,
        "practitioner": {
            "identifier": {"id": "03117000205", "system": "urn:oid:2.16.578.1.12.4.1.4.1"},
            "hpr_nr": {"id": "9144900", "system": "urn:oid:2.16.578.1.12.4.1.4.4"},
            "authorization": {"code": "LE", "system": "urn:oid:2.16.578.1.12.4.1.1.9060"},
            "legal_entity": {"id": "997506499", "system": "urn:oid:2.16.578.1.12.4.1.4.101"},
            "point_of_care": {"id": "875300342", "system": "urn:oid:2.16.578.1.12.4.1.4.101"},
            "department": {"id": "705592", "system": "urn:oid:2.16.578.1.12.4.1.4.102"},
        },
        "care_relationship": {
            "healthcare_service": {"code": "KP01", "system": "urn:oid:2.16.578.1.12.4.1.1.8663"},
            "purpose_of_use": {"code": "TREAT", "system": OID_PURPOSE_OF_USE},
            "purpose_of_use_details": {"code": "15", "system": "urn:oid:2.16.578.1.12.4.1.1.9151"},
            "decision_ref": {"id": "30F4AB40-DBC2-41A7-8AC4-181AD3FDC25B", "user_selected": False},
        },
        "patients": [{"identifier": {"id": PATIENT, "system": "urn:oid:2.16.578.1.12.4.1.4.1"}}],
    }
    entry.update(changes)
    return entry


# --- the real shapes ------------------------------------------------------------------------------------


def test_helseid_user_bound_token_parses(token_details: list[dict[str, Any]]) -> None:
    attestation = parse_attestation(token_details)
    assert attestation.legal_entity.id == "997506499"
    assert attestation.point_of_care.id == "875300342"
    assert attestation.practitioner_pid == "03117000205"
    assert attestation.practitioner_hpr == "9144900"
    assert attestation.authorization is not None
    assert attestation.authorization.code == "LE"
    assert attestation.purpose_of_use is PurposeOfUse.TREAT
    assert attestation.purpose_of_use_details is not None
    assert attestation.decision_ref is not None
    assert attestation.decision_ref.user_selected is True
    assert attestation.patient_ids == ()  # HelseID's example names the patient's point of care only


def test_helseid_client_assertion_parses(shared_dir: Path) -> None:
    details = _load(shared_dir, "helseid", "client-assertion.payload.tillitsrammeverk.json")[
        "assertion_details"
    ]
    attestation = parse_attestation(details, path="assertion_details")
    assert attestation.healthcare_service is not None
    assert attestation.healthcare_service.code == "KP01"
    assert len(attestation.patients) == 1


def test_specification_example_1_fastlege_parses(fastlege: dict[str, Any]) -> None:
    """Vedlegg C example 1 uses ``care_relation`` and has neither purpose_of_use nor decision_ref."""
    attestation = attestation_from_model(fastlege)
    assert attestation.legal_entity.id == "100100673"
    assert attestation.healthcare_service is not None
    assert attestation.healthcare_service.code == "KX17"
    assert attestation.purpose_of_use is None
    assert attestation.patient_ids == (PATIENT,)
    typed = parse_attestation([{"type": ATTESTATION_TYPE, **fastlege}])
    assert typed == attestation


def test_specification_wrapper_with_toa(fastlege: dict[str, Any]) -> None:
    attestation = attestation_from_model({"attestation": {"toa": 1700121037, **fastlege}})
    assert attestation.toa == 1700121037


def test_repr_carries_no_national_identity_numbers() -> None:
    attestation = parse_attestation([complete()])
    assert PATIENT not in repr(attestation)
    assert "03117000205" not in repr(attestation)


# --- finding the entry -------------------------------------------------------------------------------------


def test_other_entry_types_are_skipped(token_details: list[dict[str, Any]]) -> None:
    only_helseid = [d for d in token_details if d["type"] != ATTESTATION_TYPE]
    assert find_attestation(only_helseid) is None
    with pytest.raises(InvalidAuthorizationDetails, match=ATTESTATION_TYPE):
        parse_attestation(only_helseid)


def test_single_object_form() -> None:
    assert parse_attestation(complete()).purpose_of_use is PurposeOfUse.TREAT


@pytest.mark.parametrize(
    ("details", "path"),
    [
        ("a string", "authorization_details"),
        (None, "authorization_details"),
        ([complete(), complete()], "authorization_details"),
        ([{"no": "type"}], "authorization_details[0].type"),
        ([42], "authorization_details[0]"),
        ([complete(type=7)], "authorization_details[0].type"),
    ],
)
def test_bad_container(details: Any, path: str) -> None:
    with pytest.raises(InvalidAuthorizationDetails) as caught:
        parse_attestation(details)
    assert caught.value.path == path


# --- required parts and code systems, each failure names its path ----------------------------------------


def _broken(mutate: Any) -> dict[str, Any]:
    entry = copy.deepcopy(complete())
    mutate(entry)
    return entry


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda e: e.pop("practitioner"), "practitioner"),
        (lambda e: e["practitioner"].pop("legal_entity"), "practitioner.legal_entity"),
        (lambda e: e["practitioner"].pop("point_of_care"), "practitioner.point_of_care"),
        (lambda e: e["practitioner"]["legal_entity"].update(id="12345"), "practitioner.legal_entity.id"),
        (
            lambda e: e["practitioner"]["legal_entity"].update(system="urn:oid:1.2.3"),
            "practitioner.legal_entity.system",
        ),
        (lambda e: e["practitioner"]["point_of_care"].update(id=875300342), "practitioner.point_of_care.id"),
        (
            lambda e: e["practitioner"]["authorization"].update(system="urn:oid:9"),
            "practitioner.authorization.system",
        ),
        (lambda e: e["practitioner"]["authorization"].pop("code"), "practitioner.authorization.code"),
        (lambda e: e["practitioner"]["hpr_nr"].update(system="urn:oid:x"), "practitioner.hpr_nr.system"),
        (lambda e: e["practitioner"]["identifier"].update(id="0311700020"), "practitioner.identifier.id"),
        (lambda e: e["practitioner"]["department"].pop("system"), "practitioner.department.system"),
        (
            lambda e: e["care_relationship"]["purpose_of_use"].update(code="HPAYMT"),
            "care_relationship.purpose_of_use.code",
        ),
        (
            lambda e: e["care_relationship"]["purpose_of_use"].update(system="urn:oid:2.16.840.1.113883.5.8"),
            "care_relationship.purpose_of_use.system",
        ),
        (
            lambda e: e["care_relationship"]["healthcare_service"].update(system="urn:oid:1.2.3"),
            "care_relationship.healthcare_service.system",
        ),
        (
            lambda e: e["care_relationship"]["decision_ref"].update(user_selected="yes"),
            "care_relationship.decision_ref.user_selected",
        ),
        (
            lambda e: e["care_relationship"]["decision_ref"].update(id={"x": 1}),
            "care_relationship.decision_ref.id",
        ),
        (lambda e: e.update(care_relationship=[]), "care_relationship"),
        (lambda e: e.update(care_relation={}), "care_relationship"),
        (lambda e: e.pop("patients"), "patients"),
        (lambda e: e.update(patients={}), "patients"),
        (lambda e: e.update(patients=[{}] * 101), "patients"),
        (
            lambda e: e["patients"][0]["identifier"].update(system="urn:oid:2.16.578.1.12.4.1.4.4"),
            "patients[0].identifier.system",
        ),
        (
            lambda e: e["patients"][0].update(
                point_of_care={"id": "1", "system": "urn:oid:2.16.578.1.12.4.1.4.101"}
            ),
            "patients[0].point_of_care.id",
        ),
        (lambda e: e.update(toa="yesterday"), "toa"),
        (
            lambda e: e["practitioner"]["legal_entity"].update(name="x" * 300),
            "practitioner.legal_entity.name",
        ),
        (
            lambda e: e["practitioner"]["legal_entity"].update(name="evil\nline"),
            "practitioner.legal_entity.name",
        ),
        (lambda e: e["practitioner"]["legal_entity"].update(name="\ud800"), "practitioner.legal_entity.name"),
        (lambda e: e["practitioner"]["point_of_care"].update(id=" "), "practitioner.point_of_care.id"),
    ],
)
def test_broken_attestation_names_the_path(mutate: Any, path: str) -> None:
    with pytest.raises(InvalidAuthorizationDetails) as caught:
        parse_attestation([{"type": "helseid_authorization"}, _broken(mutate)])
    assert caught.value.path == f"authorization_details[1].{path}"
    assert str(caught.value).endswith(f"@ authorization_details[1].{path}")


@pytest.mark.parametrize("code", ["TREAT", "ETREAT", "COC", "BTG"])
def test_every_allowed_purpose_of_use(code: str) -> None:
    entry = _broken(lambda e: e["care_relationship"]["purpose_of_use"].update(code=code))
    purpose = parse_attestation(entry).purpose_of_use
    assert purpose is not None
    assert purpose.value == code
    assert purpose.is_emergency == (code in ("ETREAT", "BTG"))


def test_care_relation_spelling_is_read(fastlege: dict[str, Any]) -> None:
    entry = complete()
    entry["care_relation"] = entry.pop("care_relationship")
    assert parse_attestation(entry).purpose_of_use is PurposeOfUse.TREAT


def test_unknown_members_are_ignored() -> None:
    entry = complete(extension={"x": 1})
    entry["practitioner"]["legal_entity"]["extra"] = True
    parse_attestation(entry)


# --- completeness for a patient-data read -------------------------------------------------------------------


def test_complete_attestation_binds_one_patient() -> None:
    patient = require_patient_access(parse_attestation(complete()))
    assert patient.identifier is not None
    assert patient.identifier.id == PATIENT


@pytest.mark.parametrize(
    ("attestation_json", "path"),
    [
        (_broken(lambda e: e["care_relationship"].pop("purpose_of_use")), "care_relationship.purpose_of_use"),
        (_broken(lambda e: e["care_relationship"].pop("decision_ref")), "care_relationship.decision_ref"),
        (complete(patients=[]), "patients"),
        (complete(patients=[{}]), "patients"),
        (
            complete(
                patients=[
                    {"identifier": {"id": PATIENT, "system": "urn:oid:2.16.578.1.12.4.1.4.1"}},
                    {"identifier": {"id": "05076600325", "system": "urn:oid:2.16.578.1.12.4.1.4.1"}},
                ]
            ),
            "patients",
        ),
    ],
)
def test_incomplete_for_a_patient_read(attestation_json: dict[str, Any], path: str) -> None:
    attestation: Attestation = parse_attestation(attestation_json)
    with pytest.raises(InvalidAuthorizationDetails) as caught:
        require_patient_access(attestation)
    assert caught.value.path == f"authorization_details.{path}"


def test_specification_example_1_is_not_enough_for_a_patient_read(fastlege: dict[str, Any]) -> None:
    with pytest.raises(InvalidAuthorizationDetails, match="purpose_of_use"):
        require_patient_access(attestation_from_model(fastlege))
