"""``Caller`` from verified token claims: organisation, point of care, practitioner, patient, purpose."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auth.attestation import PurposeOfUse
from auth.caller import caller_from_claims
from auth.errors import InvalidAuthorizationDetails, InvalidToken
from auth.keys import SigningKeySet
from auth.tokens import (
    CLAIM_HPR_NUMBER,
    CLAIM_ORGNR_PARENT,
    TokenPolicy,
    issue_access_token,
    verify_access_token,
)
from tests.auth.factories import CLIENT_ID, ISSUER, NOW, ORGNR_CHILD, ORGNR_PARENT, ec_key, token_claims
from tests.auth.test_attestation import PATIENT, complete


@pytest.fixture
def user_bound(shared_dir: Path) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(
        (shared_dir / "reference" / "helseid" / "access-token.payload.user-bound.json").read_text()
    )
    return claims


def test_machine_token_from_our_token_service(keyset: SigningKeySet) -> None:
    jkt = ec_key().thumbprint()
    issued = issue_access_token(
        keyset,
        issuer=ISSUER,
        client_id=CLIENT_ID,
        scopes=["dho-share/observation.read"],
        jkt=jkt,
        now=NOW,
        orgnr_parent=ORGNR_PARENT,
        orgnr_child=ORGNR_CHILD,
    )
    verified = verify_access_token(
        issued.token,
        policy=TokenPolicy.own(ISSUER),
        keys=lambda kid: keyset.verification_key(kid, NOW),
        now=NOW,
    )
    caller = caller_from_claims(verified.claims)
    assert caller.client_id == CLIENT_ID
    assert caller.issuer == ISSUER
    assert caller.token_jti == issued.jti
    assert caller.organisation == ORGNR_PARENT
    assert caller.point_of_care == ORGNR_CHILD
    assert caller.scopes == {"dho-share/observation.read"}
    assert caller.has_scope("dho-share/observation.read")
    assert caller.jkt == jkt
    assert caller.attestation is None
    assert caller.patient is None
    assert not caller.is_person


def test_helseid_user_bound_token(user_bound: dict[str, Any]) -> None:
    caller = caller_from_claims(user_bound)
    assert caller.organisation == "997506499"
    assert caller.point_of_care == "875300342"
    assert caller.practitioner_hpr == "9144900"
    assert caller.pid == "03117000205"
    assert caller.is_person
    assert caller.security_level == "4"
    assert caller.purpose_of_use is PurposeOfUse.TREAT
    assert caller.attestation is not None
    assert caller.patient is None  # the example names no patient identifier
    assert "nhn:kjernejournal/api" in caller.scopes
    assert "03117000205" not in repr(caller)


def test_attestation_binds_the_patient() -> None:
    claims = token_claims(jkt="x" * 43, authorization_details=[complete()])
    caller = caller_from_claims(claims)
    assert caller.patient == PATIENT
    assert caller.patient_ids == (PATIENT,)
    assert PATIENT not in repr(caller)
    assert caller.practitioner_hpr == "9144900"  # from the attestation, the token has no HPR claim


def test_hpr_claim_wins_over_attestation() -> None:
    extra: dict[str, Any] = {CLAIM_HPR_NUMBER: "1234567"}
    claims = token_claims(jkt="x" * 43, authorization_details=[complete()], **extra)
    assert caller_from_claims(claims).practitioner_hpr == "1234567"


def test_attestation_for_another_legal_entity_is_refused() -> None:
    extra: dict[str, Any] = {CLAIM_ORGNR_PARENT: "974589095"}
    claims = token_claims(jkt="x" * 43, authorization_details=[complete()], **extra)
    with pytest.raises(InvalidAuthorizationDetails, match="legal entity") as caught:
        caller_from_claims(claims)
    assert caught.value.path == "authorization_details[0].practitioner.legal_entity.id"


def test_without_orgnr_parent_the_attestation_names_the_organisation() -> None:
    claims = token_claims(jkt="x" * 43, authorization_details=[complete()])
    del claims[CLAIM_ORGNR_PARENT]
    assert caller_from_claims(claims).organisation == "997506499"


def test_malformed_attestation_names_its_path() -> None:
    broken = complete(patients="nope")
    with pytest.raises(InvalidAuthorizationDetails) as caught:
        caller_from_claims(token_claims(jkt="x" * 43, authorization_details=[broken]))
    assert caught.value.path == "authorization_details[0].patients"


@pytest.mark.parametrize("missing", ["client_id", "iss", "jti"])
def test_claims_of_an_unverified_token_are_refused(missing: str) -> None:
    claims = token_claims(jkt="x" * 43)
    del claims[missing]
    with pytest.raises(InvalidToken):
        caller_from_claims(claims)
