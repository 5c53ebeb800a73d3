"""AuditEvent shapes: IHE BALP and HL7 Norway's trust-framework IG, validated with fhir.resources R4B.

security-tests.md AUD-01 (BALP-conformant events), AUD-02 (failures, AuthZconsent with consent ref and
``urn:ietf:params:oauth:jti:``), AUD-03 (raw query base64, byte-exact), AUD-04 (no token anywhere).
"""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from hypothesis import assume, given
from hypothesis import strategies as st

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.encoding import canonical_event
from sharing_api.audit.events import (
    ACTION_SYSTEM,
    EXT_CARE_RELATION,
    EXT_PATIENT,
    HPR_SYSTEM,
    JTI_PREFIX,
    ORGNR_SYSTEM,
    SharingDecision,
    build_audit_event,
    build_audit_events,
    build_authz_event,
    redact_tokens,
)
from sharing_api.audit.terms import search_terms
from tests.audit.factories import FNR, HOSPITAL, TENANT, facts

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
DCM = "http://dicom.nema.org/resources/ontology/DCM"
JWT = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9."
    "eyJzdWIiOiJ4IiwianRpIjoiYWJjIn0."
    "MEUCIQDr3hV6Lr7y0Hv3Y1V8p0c1Zl4kq8pY5x3m2n1b0v9c8w"
)
MALICIOUS = [
    b"patient=' OR 1=1 --&code=8867-4",
    b"patient=13116900216%00&code=../../etc/passwd",
    b"\x00\x01\x02\xff\xfe invalid utf-8 \xc3\x28",
    b"code=8867-4\r\nX-Injected: yes\r\n\r\n<script>alert(1)</script>",
    "patient=\u202etxt.exe&name=Ærlig Østby Ålesund 𝄞".encode(),
    b"_count=1000000&_include:iterate=*&_revinclude=*" * 200,
    b"",
]


def validated(event: dict[str, Any]) -> AuditEvent:
    """The event parsed by the FHIR R4B model (raises on any structural error)."""
    return AuditEvent.model_validate(event)


def codings(concept: dict[str, Any] | list[dict[str, Any]]) -> set[tuple[str, str]]:
    items = concept if isinstance(concept, list) else concept.get("coding", [concept])
    return {(c["system"], c["code"]) for c in items}


def agent_of(event: dict[str, Any], system: str, code: str) -> dict[str, Any]:
    (agent,) = [a for a in event["agent"] if (system, code) in codings(a["type"])]
    return dict(agent)


def contained(event: dict[str, Any], res_id: str) -> dict[str, Any]:
    (res,) = [r for r in event["contained"] if r["id"] == res_id]
    return dict(res)


@pytest.mark.parametrize("action", list(AuditAction))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_action_and_outcome_is_a_valid_r4_auditevent(action: AuditAction, outcome: Outcome) -> None:
    event = build_audit_event(facts(action=action, outcome=outcome))
    model = validated(event)
    assert model.outcome == outcome.value
    assert (ACTION_SYSTEM, action.value) in codings(event["subtype"])
    assert search_terms(event).action is action
    assert canonical_event(event)  # has a canonical form


def test_patient_query_follows_balp_and_the_norwegian_ig() -> None:
    f = facts()
    event = build_audit_event(f)
    validated(event)
    assert event["meta"]["profile"] == [BALP + "PatientQuery"]
    assert (event["type"]["code"], event["action"], event["outcome"]) == ("rest", "E", "0")
    assert ("http://hl7.org/fhir/restful-interaction", "search-type") in codings(event["subtype"])
    assert event["recorded"] == "2025-03-19T06:45:00.000000Z"
    # who: client (source role, with its address), server, the health worker, the legal entity
    client = agent_of(event, DCM, "110153")
    assert client["who"]["identifier"]["value"] == "ous-dips-epj"
    assert client["network"] == {"address": "10.1.2.3", "type": "2"}
    server = agent_of(event, DCM, "110152")
    assert server["network"]["address"] == "https://dho.kommune.example"
    user = agent_of(event, "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP")
    assert user["requestor"] is True
    assert user["who"] == {"reference": "#practitioner-role"}
    org = agent_of(event, "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "PROV")
    assert org["who"]["identifier"] == {"system": ORGNR_SYSTEM, "value": HOSPITAL}
    role = contained(event, "practitioner-role")
    assert role["practitioner"] == {
        "identifier": {"system": HPR_SYSTEM, "value": "9144897"},
        "display": "August September",
    }
    assert role["organization"]["identifier"] == {"system": ORGNR_SYSTEM, "value": HOSPITAL}
    assert role["location"] == [{"identifier": {"system": ORGNR_SYSTEM, "value": "874716782"}}]
    assert role["code"] == [
        {"coding": [{"system": "urn:oid:2.16.578.1.12.4.1.1.8655", "code": "S03", "display": "Indremedisin"}]}
    ]
    assert {r["resourceType"] for r in event["contained"]} == {"Patient", "PractitionerRole"}
    # for whom: the patient, in the NO patient extension and BALP's patient entity
    assert contained(event, "patient")["identifier"] == [{"system": FNR, "value": f.patient[1]}]  # type: ignore[index]
    ext = {x["url"]: x for x in event["extension"]}
    assert ext[EXT_PATIENT]["valueReference"] == {"reference": "#patient"}
    care = {x["url"]: x for x in ext[EXT_CARE_RELATION]["extension"]}
    assert care["decision-ref-id"]["valueString"] == "23423255"
    assert care["decision-ref-user-selected"]["valueBoolean"] is False
    assert care["decision-ref-description"]["valueString"] == "Innlagt pasient"
    assert care["toa"]["valueUnsignedInt"] == int(f.attested_at.timestamp())  # type: ignore[union-attr]
    entities = event["entity"]
    patient = [x for x in entities if x.get("role", {}).get("code") == "1"]
    assert patient == [
        {
            "what": {"reference": "#patient"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
        }
    ]
    # why: v3 PurposeOfUse (as the IG's instances code it) and the details coding
    (purpose,) = event["purposeOfEvent"]
    assert codings(purpose) == {
        ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT"),
        ("https://terminology.dips.com/decisiontemplate", "POLBESOK"),
    }
    # what: raw query, resources, categories, decision, token jti, X-Request-Id
    (query,) = [x for x in entities if x.get("role", {}).get("code") == "24"]
    assert base64.b64decode(query["query"]) == f.query
    assert {"what": {"reference": f.resources[0]}} in entities
    (cats,) = [x for x in entities if x.get("name") == "data-categories"]
    assert cats["detail"] == [{"type": "data-category", "valueString": "vital-signs"}]
    (decision,) = [x for x in entities if x.get("name") == "sharing-decision"]
    assert decision["description"] == "permit"
    assert {"type": "reason", "valueString": "PERMIT_AGREEMENT"} in decision["detail"]
    refs = {x["what"].get("reference") for x in entities if "what" in x}
    assert {"SharingAgreement/ag-1", "Consent/c-9"} <= refs
    idents = {x["what"]["identifier"]["value"] for x in entities if "identifier" in x.get("what", {})}
    assert idents == {JTI_PREFIX + "jti-0", "req-0"}


def test_patient_read_names_the_client_destination_and_the_resource() -> None:
    event = build_audit_event(facts(action=AuditAction.OBSERVATION_READ, query=None))
    validated(event)
    assert event["meta"]["profile"] == [BALP + "PatientRead"]
    assert event["action"] == "R"
    assert ("http://hl7.org/fhir/restful-interaction", "read") in codings(event["subtype"])
    assert agent_of(event, DCM, "110152")["who"]["identifier"]["value"] == "ous-dips-epj"  # client
    (data,) = [x for x in event["entity"] if x.get("role", {}).get("code") == "4"]
    assert data["what"]["reference"].startswith("Observation/")
    assert data["type"]["code"] == "2"


def test_patient_create_records_the_author() -> None:
    event = build_audit_event(
        facts(action=AuditAction.OBSERVATION_CREATE, query=None, decision=None, purpose_of_use=None)
    )
    validated(event)
    assert event["meta"]["profile"] == [BALP + "PatientCreate"]
    assert event["action"] == "C"
    author = agent_of(event, "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "AUT")
    assert author["requestor"] is True
    assert "purposeOfEvent" not in event


def test_update_is_balp_patient_update() -> None:
    event = build_audit_event(facts(action=AuditAction.OBSERVATION_UPDATE, query=None))
    validated(event)
    assert event["meta"]["profile"] == [BALP + "PatientUpdate"]
    assert event["action"] == "U"


def test_a_refusal_keeps_the_shape_with_a_failure_outcome_and_claims_no_profile() -> None:
    f = facts(
        outcome=Outcome.MINOR_FAILURE,
        resources=(),
        description="no sharing agreement",
        decision=SharingDecision(permit=False, reasons=("DENY_NO_AGREEMENT",)),
    )
    event = build_audit_event(f)
    validated(event)
    assert "meta" not in event  # BALP fixes outcome 0; failures follow FHIR core Access Denied
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "no sharing agreement"
    (decision,) = [x for x in event["entity"] if x.get("name") == "sharing-decision"]
    assert decision["description"] == "deny"


def test_authentication_failure_is_a_security_alert_without_patient() -> None:
    f = facts(
        action=AuditAction.REQUEST_REFUSED,
        outcome=Outcome.MINOR_FAILURE,
        patient=None,
        practitioner_hpr=None,
        decision=None,
        resources=(),
        description="DPoP proof replayed",
    )
    event = build_audit_event(f)
    validated(event)
    assert codings(event["type"]) == {(DCM, "110113")}
    assert "contained" in event  # the legal entity from the token, when it was readable
    assert not any(x.get("role", {}).get("code") == "1" for x in event["entity"])
    assert search_terms(event).patient_value is None


def test_token_issue_is_a_user_authentication_login() -> None:
    event = build_audit_event(facts(action=AuditAction.TOKEN_ISSUE, patient=None, query=None, resources=()))
    validated(event)
    assert codings(event["type"]) == {(DCM, "110114")}
    assert (DCM, "110122") in codings(event["subtype"])


def test_authz_consent_event_for_a_permit() -> None:
    f = facts()
    event = build_authz_event(f)
    assert event is not None
    validated(event)
    assert event["meta"]["profile"] == [BALP + "AuthZconsent"]
    assert codings(event["type"]) == {(DCM, "110113")}
    assert codings(event["subtype"]) == {
        ("https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType", "AuthZ-Consent")
    }
    assert (event["action"], event["outcome"]) == ("E", "0")
    consents = [x["what"]["reference"] for x in event["entity"] if x["type"].get("code") == "Consent"]
    assert consents == ["SharingAgreement/ag-1", "Consent/c-9"]
    (token,) = [x for x in event["entity"] if x["type"].get("code") == "UserOauthAgent"]
    assert token["what"]["identifier"]["value"] == "urn:ietf:params:oauth:jti:jti-0"
    assert agent_of(event, "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "authserver")
    assert agent_of(event, DCM, "110150")["network"]["address"] == "10.1.2.3"
    # AuthZconsent's entity slicing is closed: patient, consent, token only
    assert {x["type"]["code"] for x in event["entity"]} == {"1", "Consent", "UserOauthAgent"}
    assert search_terms(event).action is AuditAction.ACCESS_DECISION


def test_authz_consent_event_for_a_deny_is_a_failure_with_reasons() -> None:
    f = facts(
        outcome=Outcome.MINOR_FAILURE,
        decision=SharingDecision(permit=False, reasons=("DENY_BLOCKED",), used=("Consent/block-1",)),
    )
    event = build_authz_event(f)
    assert event is not None
    validated(event)
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "deny: DENY_BLOCKED"


def test_one_request_with_a_decision_records_two_events() -> None:
    events = build_audit_events(facts())
    assert [search_terms(e).action for e in events] == [
        AuditAction.OBSERVATION_SEARCH,
        AuditAction.ACCESS_DECISION,
    ]
    assert len(build_audit_events(facts(decision=None))) == 1
    assert build_authz_event(facts(decision=None)) is None


@pytest.mark.parametrize("query", MALICIOUS)
def test_raw_query_is_kept_byte_exact_in_entity_query(query: bytes) -> None:
    """AUD-03: base64 of exactly what was received, malicious patterns included."""
    event = build_audit_event(facts(query=query))
    validated(event)
    (entity,) = [x for x in event["entity"] if x.get("role", {}).get("code") == "24"]
    assert base64.b64decode(entity["query"], validate=True) == query


@given(st.binary(max_size=2048))
def test_any_query_without_a_token_round_trips(query: bytes) -> None:
    assume(b"eyJ" not in query)
    event = build_audit_event(facts(query=query))
    (entity,) = [x for x in event["entity"] if x.get("role", {}).get("code") == "24"]
    assert base64.b64decode(entity["query"]) == query


def test_a_token_in_the_query_is_redacted_and_nothing_else_changes() -> None:
    """AUD-04 wins over AUD-03 where a client sent its token in the query (AUTH-02)."""
    query = f"patient=1&access_token={JWT}&code=8867-4".encode()
    assert redact_tokens(query) == b"patient=1&access_token=[redacted-jwt]&code=8867-4"
    event = build_audit_event(facts(query=query))
    assert b"eyJ" not in canonical_event(event)
    jwe = b"x=" + b".".join([b"eyJhbGciOiJSU0EtT0FFUCJ9", b"a", b"b", b"c", b"d"]) + b"&y=1"
    assert redact_tokens(jwe) == b"x=[redacted-jwt]&y=1"


@pytest.mark.parametrize(
    "field", ["client_id", "token_jti", "description", "correlation_id", "practitioner_name"]
)
def test_a_token_in_any_text_field_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match="token"):
        facts(0, **{field: JWT})
    with pytest.raises(ValueError, match="token"):
        facts(resources=(f"Observation/{JWT}",))


def test_facts_are_checked() -> None:
    with pytest.raises(ValueError, match="aware"):
        facts(recorded=datetime(2025, 1, 1))  # a naive time: the point of the test
    with pytest.raises(ValueError, match="purpose_of_use"):
        facts(purpose_of_use="HMARKT")
    with pytest.raises(TypeError):
        facts(action="observation.read")
    with pytest.raises(TypeError):
        facts(query="a string")
    with pytest.raises(ValueError, match="tenant"):
        facts(tenant="")
    with pytest.raises(ValueError, match="patient"):
        facts(patient=("", "1"))
    with pytest.raises(TypeError):
        facts(resources=["Observation/1"])


def test_no_token_or_measurement_value_field_exists() -> None:
    names = set(facts().__dataclass_fields__)
    assert not names & {"token", "access_token", "proof", "dpop", "assertion", "value", "values"}


def test_events_are_fresh_data_every_time() -> None:
    f = facts()
    first, second = build_audit_event(f), build_audit_event(f)
    assert first == second
    first["agent"][0]["who"]["display"] = "changed"
    assert build_audit_event(f) == second
    assert build_audit_event(replace(f, tenant=TENANT)) == second


def test_search_terms_are_read_back_from_the_event() -> None:
    f = facts(3, purpose_of_use="ETREAT", outcome=Outcome.MINOR_FAILURE)
    terms = search_terms(build_audit_event(f))
    assert terms.action is AuditAction.OBSERVATION_SEARCH
    assert terms.outcome is Outcome.MINOR_FAILURE
    assert terms.purpose == "ETREAT"
    assert (terms.patient_system, terms.patient_value) == f.patient
    assert (terms.agent_hpr, terms.organisation, terms.client_id) == ("9144897", HOSPITAL, "ous-dips-epj")
    assert terms.recorded == int(f.recorded.timestamp()) * 1_000_000
    bare = search_terms(build_audit_event(facts(patient=None, practitioner_hpr=None, organisation=None)))
    assert (bare.patient_value, bare.agent_hpr, bare.organisation) == (None, None, None)
    authz = build_authz_event(f)
    assert authz is not None
    assert search_terms(authz).agent_hpr == "9144897"
    with pytest.raises(ValueError, match="time zone"):
        search_terms({**build_audit_event(f), "recorded": "2025-03-19T06:45:00"})
