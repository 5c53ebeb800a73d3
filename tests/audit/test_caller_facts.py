"""The caller's part of the audit facts is made once per caller, and never serves another caller."""

from __future__ import annotations

from dataclasses import replace

from auth.attestation import Attestation, Coding, DecisionRef, Identifier, PatientRef, PurposeOfUse
from auth.caller import Caller
from sharing_api import auditing
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.pseudonym import PidHasher
from sharing_api.auditing import MAX_KNOWN_CALLERS, RequestInfo, _caller_facts, audit_facts, caller_facts
from tests.audit.factories import FNR, HOSPITAL, T0

POINT_OF_CARE = "874716782"
REQUEST = RequestInfo(
    "GET", "/921234562/fhir/Observation/1", None, "req-1", "10.1.2.3", "https://dho.example"
)
HASHER = PidHasher(b"s" * 32)


def _caller(
    hpr: str, pid: str, jti: str, *, authorization: str = "LE", user_selected: bool = False
) -> Caller:
    """A health worker at the hospital; callers made here share the client and the organisation."""
    attestation = Attestation(
        legal_entity=Identifier(id=HOSPITAL, system="urn:oid:2.16.578.1.12.4.1.4.101", name="Sykehuset"),
        point_of_care=Identifier(id=POINT_OF_CARE, system="urn:oid:2.16.578.1.12.4.1.4.101", name="Avdeling"),
        patients=(PatientRef(identifier=Identifier(id="13116900216", system=FNR)),),
        practitioner=Identifier(id=pid, system=FNR),
        hpr_number=Identifier(id=hpr, system="urn:oid:2.16.578.1.12.4.1.4.4"),
        authorization=Coding(code=authorization, system="urn:oid:2.16.578.1.12.4.1.1.9060"),
        healthcare_service=Coding(code="S03", system="urn:oid:2.16.578.1.12.4.1.1.8655", text="Indremedisin"),
        purpose_of_use=PurposeOfUse.TREAT,
        decision_ref=DecisionRef(id=f"ref-{jti}", user_selected=user_selected),
        toa=int(T0.timestamp()),
    )
    return Caller(
        client_id="ous-dips-epj",
        issuer="https://helseid.example",
        token_jti=jti,
        scopes=frozenset({"observation.read"}),
        organisation=HOSPITAL,
        point_of_care=POINT_OF_CARE,
        practitioner_hpr=hpr,
        purpose_of_use=PurposeOfUse.TREAT,
        attestation=attestation,
        pid=pid,
    )


def test_each_caller_gets_its_own_facts_however_they_alternate() -> None:
    doctor = _caller("9144897", "01017012345", "jti-a", authorization="LE", user_selected=True)
    nurse = _caller("9144898", "02027012345", "jti-b", authorization="SP")
    for _ in range(2):
        for who in (doctor, nurse):
            assert caller_facts(who, HASHER) == _caller_facts(who, HASHER)
    mine, theirs = caller_facts(doctor, HASHER), caller_facts(nurse, HASHER)
    assert (mine.practitioner_hpr, mine.token_jti, mine.practitioner_pid_hash) == (
        "9144897",
        "jti-a",
        HASHER("01017012345"),
    )
    assert (theirs.practitioner_hpr, theirs.token_jti, theirs.practitioner_pid_hash) == (
        "9144898",
        "jti-b",
        HASHER("02027012345"),
    )
    assert mine.practitioner_authorization != theirs.practitioner_authorization
    assert mine.decision_ref != theirs.decision_ref


def test_an_equal_caller_of_another_token_and_another_hasher_are_made_afresh() -> None:
    doctor = _caller("9144897", "01017012345", "jti-a")
    first = caller_facts(doctor, HASHER)
    twin = replace(doctor)  # equal, but another object (another cached token)
    assert caller_facts(twin, HASHER) == first
    assert caller_facts(twin, HASHER) is not first
    other = PidHasher(b"t" * 32)
    assert caller_facts(doctor, other).practitioner_pid_hash == other("01017012345")
    assert caller_facts(doctor, None).practitioner_pid_hash is None


def test_the_facts_are_those_made_without_remembering() -> None:
    doctor = _caller("9144897", "01017012345", "jti-a", user_selected=True)
    kwargs = {"tenant": "921234562", "request": REQUEST, "patient": (FNR, "13116900216"), "pid_hash": HASHER}
    made = [
        audit_facts(action=AuditAction.OBSERVATION_READ, outcome=Outcome.SUCCESS, caller=doctor, **kwargs)
        for _ in range(2)
    ]
    fresh = _caller_facts(doctor, HASHER)
    for facts in made:
        assert facts.practitioner_pid_hash == fresh.practitioner_pid_hash
        assert facts.decision_ref == fresh.decision_ref
        assert facts.attested_at == T0
        assert facts.organisation_name == "Sykehuset"
        assert facts.point_of_care_name == "Avdeling"
    assert made[0] == replace(made[1], recorded=made[0].recorded)
    nobody = audit_facts(
        action=AuditAction.REQUEST_REFUSED, outcome=Outcome.MINOR_FAILURE, caller=None, **kwargs
    )
    assert (nobody.client_id, nobody.practitioner_hpr, nobody.token_jti) == (None, None, None)


def test_memory_stays_bounded() -> None:
    for n in range(MAX_KNOWN_CALLERS + 10):
        caller_facts(_caller("9144897", "01017012345", f"jti-{n}"), HASHER)
        assert len(auditing._known_callers) <= MAX_KNOWN_CALLERS
