"""AuditEvent shapes: IHE BALP and HL7 Norway's trust-framework IG, validated with fhir.resources R4B.

security-tests.md AUD-01 (BALP-conformant events), AUD-02 (failures, the decision with its Consent and
agreement references, ``urn:ietf:params:oauth:jti:`` in the user agent's ``policy``), AUD-03 (raw query
base64, byte-exact), AUD-04 (no token anywhere). Shapes of the Norwegian IG are compared with its FSH
reference read in place (``shared_dir``); docs/audit-profile.md lists where BALP and the IG disagree.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from hypothesis import assume, given
from hypothesis import strategies as st

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.encoding import canonical_event
from sharing_api.audit.events import (
    ACTION_SYSTEM,
    AGREEMENT_RESOURCE,
    AUTHORIZATION_SYSTEM,
    EXT_CARE_RELATION,
    EXT_PATIENT,
    HPR_SYSTEM,
    JTI_PREFIX,
    ORGNR_SYSTEM,
    Coded,
    SharingDecision,
    build_audit_event,
    build_audit_events,
    redact_tokens,
)
from sharing_api.audit.log import entry_row, facts_row
from sharing_api.audit.terms import facts_terms, search_terms
from tests.audit.factories import FNR, HOSPITAL, TENANT, facts
from tests.audit.fsh import Fsh, extension_slices, read_fsh

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
OAUTH_AGENT_SYSTEM = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
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
    assert_contained_are_referenced(event)


def assert_contained_are_referenced(event: dict[str, Any]) -> None:
    """FHIR dom-3: every contained resource is referenced from elsewhere in the resource."""
    text = json.dumps({k: v for k, v in event.items() if k != "contained"}) + json.dumps(
        [{k: v for k, v in r.items() if k != "id"} for r in event.get("contained", [])]
    )
    for res in event.get("contained", []):
        assert f'"#{res["id"]}"' in text, f"contained {res['id']} is not referenced"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"practitioner_hpr": None},
        {"organisation": None},
        {"practitioner_hpr": None, "organisation": None},
        {"point_of_care": HOSPITAL},
        {"practitioner_hpr": None, "point_of_care": HOSPITAL},
    ],
)
def test_every_contained_resource_is_referenced(changes: dict[str, Any]) -> None:
    event = build_audit_event(facts(**changes))
    validated(event)
    assert_contained_are_referenced(event)


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
    assert (OAUTH_AGENT_SYSTEM, "UserOauthAgent") in codings(user["type"])
    assert user["policy"] == [JTI_PREFIX + "jti-0"]
    org = agent_of(event, "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "PROV")
    assert org["who"]["identifier"] == {"system": ORGNR_SYSTEM, "value": HOSPITAL}
    assert "policy" not in org
    role = contained(event, "practitioner-role")
    assert role["practitioner"] == {"reference": "#practitioner"}
    practitioner = contained(event, "practitioner")
    assert practitioner["identifier"] == [{"system": HPR_SYSTEM, "value": "9144897"}]
    assert practitioner["name"] == [{"text": "August September"}]
    assert role["organization"] == {"reference": "#legal-entity"}
    assert contained(event, "legal-entity")["identifier"] == [{"system": ORGNR_SYSTEM, "value": HOSPITAL}]
    assert role["location"] == [{"reference": "#point-of-care"}]
    location = contained(event, "point-of-care")
    assert "identifier" not in location  # the org.nr belongs to the Organization, not the Location
    assert location["managingOrganization"] == {"reference": "#point-of-care-org"}
    assert contained(event, "point-of-care-org")["identifier"] == [
        {"system": ORGNR_SYSTEM, "value": "874716782"}
    ]
    assert role["code"] == [
        {"coding": [{"system": "urn:oid:2.16.578.1.12.4.1.1.8655", "code": "S03", "display": "Indremedisin"}]}
    ]
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
    assert {f"{AGREEMENT_RESOURCE}/ag-1", "Consent/c-9"} <= refs
    idents = {x["what"]["identifier"]["value"] for x in entities if "identifier" in x.get("what", {})}
    assert idents == {"req-0"}  # the jti is the user agent's policy, not an entity


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


def test_one_request_records_one_event_carrying_its_decision() -> None:
    """Issue 12: no second AuthZconsent event; the decision, its reasons and the records it rests on
    are entities of the request's own event (BALP's RESTful patterns slice ``entity`` openly)."""
    f = facts()
    (event,) = build_audit_events(f)
    assert event == build_audit_event(f)
    assert search_terms(event).action is AuditAction.OBSERVATION_SEARCH
    (decision,) = [x for x in event["entity"] if x.get("name") == "sharing-decision"]
    assert decision["detail"][0] == {"type": "permit", "valueString": "true"}
    typed = {
        (x["type"]["code"], x["what"]["reference"])
        for x in event["entity"]
        if "reference" in x.get("what", {})
        and x.get("type", {}).get("system") == "http://hl7.org/fhir/resource-types"
    }
    assert typed == {(AGREEMENT_RESOURCE, f"{AGREEMENT_RESOURCE}/ag-1"), ("Consent", "Consent/c-9")}
    assert len(build_audit_events(facts(decision=None))) == 1


def test_a_deny_is_the_events_outcome_with_its_reasons() -> None:
    f = facts(
        outcome=Outcome.MINOR_FAILURE,
        decision=SharingDecision(permit=False, reasons=("DENY_BLOCKED",), used=("Consent/block-1",)),
    )
    (event,) = build_audit_events(f)
    validated(event)
    assert event["outcome"] == "4"
    (decision,) = [x for x in event["entity"] if x.get("name") == "sharing-decision"]
    assert decision["description"] == "deny"
    assert {"type": "reason", "valueString": "DENY_BLOCKED"} in decision["detail"]
    assert {
        "what": {"reference": "Consent/block-1"},
        "type": {"system": RESOURCE_TYPES, "code": "Consent"},
    } in (event["entity"])


def test_no_reference_names_an_internal_type() -> None:
    """Every reference the event makes is a FHIR resource type (or a contained resource)."""
    event = build_audit_event(
        facts(action=AuditAction.AGREEMENT_CHANGE, resources=("SharingAgreement/ag-7",), query=None)
    )
    references = [x["what"]["reference"] for x in event["entity"] if "reference" in x.get("what", {})]
    assert f"{AGREEMENT_RESOURCE}/ag-7" in references
    assert not any("SharingAgreement" in r for r in references)
    assert "SharingAgreement" not in str(build_audit_event(facts()))
    assert AGREEMENT_RESOURCE in {"Contract", "Basic"}  # FHIR R4 resource types, as documented


def test_system_client_event_has_no_practitioner_role_and_carries_the_jti_on_its_organisation() -> None:
    f = facts(
        practitioner_hpr=None, practitioner_name=None, purpose_of_use_details=None, point_of_care=HOSPITAL
    )
    event = build_audit_event(f)
    validated(event)
    kinds = [r["resourceType"] for r in event["contained"]]
    assert "PractitionerRole" not in kinds
    assert "Practitioner" not in kinds
    org = agent_of(event, "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "PROV")
    assert org["requestor"] is True
    assert (OAUTH_AGENT_SYSTEM, "UserOauthAgent") in codings(org["type"])
    assert org["policy"] == [JTI_PREFIX + "jti-0"]
    assert org["location"] == {"reference": "#point-of-care"}
    terms = search_terms(event)
    assert (terms.organisation, terms.agent_hpr) == (HOSPITAL, None)


def test_practitioner_authorisation_is_the_practitioners_qualification() -> None:
    event = build_audit_event(
        facts(practitioner_authorization=Coded(system=AUTHORIZATION_SYSTEM, code="LE", display="Lege"))
    )
    validated(event)
    assert contained(event, "practitioner")["qualification"] == [
        {"code": {"coding": [{"system": AUTHORIZATION_SYSTEM, "code": "LE", "display": "Lege"}]}}
    ]
    assert "qualification" not in contained(build_audit_event(facts()), "practitioner")


def test_care_relation_extension_carries_what_the_attestation_has() -> None:
    event = build_audit_event(facts(decision_ref=None, attested_at=None))
    assert EXT_CARE_RELATION not in {x["url"] for x in event["extension"]}
    only_toa = build_audit_event(facts(decision_ref=None))
    (care,) = [x for x in only_toa["extension"] if x["url"] == EXT_CARE_RELATION]
    assert [x["url"] for x in care["extension"]] == ["toa"]


# --- against the HL7 Norway reference (FSH), read in place ------------------------------------------


@pytest.fixture(scope="module")
def fsh(shared_dir: Path) -> Fsh:
    return read_fsh(shared_dir / "reference" / "auditevent" / "fsh")


def test_care_relation_extension_matches_the_ig(fsh: Fsh) -> None:
    definition = fsh.blocks["AuditEventCareRelationMetaData"]
    slices = extension_slices(definition)
    types = {name: definition.only(f"extension[{name}].value[x]") for name in slices}
    (care,) = [x for x in build_audit_event(facts())["extension"] if x["url"] == EXT_CARE_RELATION]
    assert [x["url"] for x in care["extension"]] == slices  # all four, in the IG's order
    for part in care["extension"]:
        (value_key,) = [k for k in part if k.startswith("value")]
        assert value_key == "value" + types[part["url"]][0].upper() + types[part["url"]][1:]
    # The IG's instance 1 values, carried through ours.
    instance = fsh.blocks["NOBasisAuditeventInstance1"]
    values = {
        name: fsh.expand(instance.value(f"extension[_careRelationMetaData].extension[{name}].valueString"))
        for name in ("decision-ref-id", "decision-ref-description")
    }
    assert values == {"decision-ref-id": "23423255", "decision-ref-description": "Innlagt pasient"}
    assert {x["url"]: x.get("valueString") for x in care["extension"]}["decision-ref-description"] == (
        values["decision-ref-description"]
    )


def test_practitioner_and_point_of_care_are_shaped_as_the_ig_instances(fsh: Fsh) -> None:
    practitioner_fsh = fsh.blocks["PractitionerInstance1"]
    system, _, code = fsh.expand(practitioner_fsh.value("qualification.code")).partition("#")
    assert system == AUTHORIZATION_SYSTEM
    event = build_audit_event(facts(practitioner_authorization=Coded(system=system, code=code)))
    validated(event)
    assert contained(event, "practitioner")["qualification"][0]["code"]["coding"][0] == {
        "system": system,
        "code": code,
    }
    assert fsh.expand("$HPR") == HPR_SYSTEM == contained(event, "practitioner")["identifier"][0]["system"]
    # PractitionerRole -> Practitioner, Organization (legal entity), Location (point of care)
    role_fsh = fsh.blocks["PractitionerRoleInstance2"]
    target = {
        name: fsh.blocks[role_fsh.value(name).split("(")[1].rstrip(")")]
        for name in ("practitioner", "organization", "location")
    }
    kinds = {
        "AuditEventNorwayPractitioner": "Practitioner",
        "AuditeventPractitionerLegalentity": "Organization",
        "AuditeventPractitionerPointofcare": "Location",
        "AuditeventDepartment": "Organization",
    }
    role = contained(event, "practitioner-role")
    for name, block in target.items():
        ref = role[name][0] if isinstance(role[name], list) else role[name]
        assert contained(event, ref["reference"][1:])["resourceType"] == kinds[block.keywords["InstanceOf"]]
    # The point of care: a Location whose managing Organization carries the org.nr ($ORGNR).
    poc_fsh = fsh.blocks["PractitionerPointOfCareInstance1"]
    assert [p for p, _ in poc_fsh.rules] == ["managingOrganization"]  # no identifier on the Location
    org_fsh = fsh.blocks[poc_fsh.value("managingOrganization").split("(")[1].rstrip(")")]
    assert fsh.expand(org_fsh.value("identifier.system")) == ORGNR_SYSTEM
    location = contained(event, "point-of-care")
    assert set(location) == {"resourceType", "id", "managingOrganization"}
    managing = contained(event, location["managingOrganization"]["reference"][1:])
    assert managing["resourceType"] == "Organization"
    assert managing["identifier"][0]["system"] == fsh.expand(org_fsh.value("identifier.system"))
    # Instance 2 (a GP): point of care managed by the legal entity itself; so is ours when they are one.
    gp = fsh.blocks["PractitionerPointOfCareInstance2"]
    assert gp.value("managingOrganization") == "Reference(PractitionerLegalEntityInstance2)"
    same = build_audit_event(facts(point_of_care=HOSPITAL))
    assert contained(same, "point-of-care")["managingOrganization"] == {"reference": "#legal-entity"}
    assert "point-of-care-org" not in {r["id"] for r in same["contained"]}


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
    with pytest.raises(ValueError, match="token"):
        facts(decision=SharingDecision(permit=True, used=(f"Consent/{JWT}",)))
    with pytest.raises(TypeError):
        facts(decision=SharingDecision(permit=True, used=(b"Consent/1",)))  # type: ignore[arg-type]


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
    with pytest.raises(ValueError, match="time zone"):
        search_terms({**build_audit_event(f), "recorded": "2025-03-19T06:45:00"})


SHAPES: list[dict[str, Any]] = [
    {},
    {"practitioner_hpr": None},
    {"organisation": None},
    {"practitioner_hpr": None, "organisation": None},
    {"point_of_care": HOSPITAL},
    {"practitioner_hpr": None, "point_of_care": HOSPITAL},
    {"client_id": None, "organisation": None, "practitioner_hpr": None, "patient": None},
    {"client_id": "", "organisation": "", "practitioner_hpr": ""},
    {"purpose_of_use": None, "purpose_of_use_details": None},
    {"purpose_of_use": "ETREAT", "token_jti": None},
    {"recorded": datetime.fromisoformat("2026-12-03T14:09:36.807727+01:00")},
    {"decision": None, "resources": (), "query": None},
]


@pytest.mark.parametrize("action", list(AuditAction))
@pytest.mark.parametrize("outcome", list(Outcome))
@pytest.mark.parametrize("shape", SHAPES)
def test_the_row_from_the_facts_is_the_row_from_the_event(
    action: AuditAction, outcome: Outcome, shape: dict[str, Any]
) -> None:
    """The request path makes an event's row from its facts (``facts_row``): every column and the
    bytes are what reading the event back gives."""
    f = facts(7, action=action, outcome=outcome, **shape)
    event = build_audit_event(f)
    assert facts_terms(f) == search_terms(event)
    assert facts_row(f) == entry_row(TENANT, event)


@given(
    client=st.sampled_from([None, "", "c"]),
    organisation=st.sampled_from([None, "", HOSPITAL]),
    hpr=st.sampled_from([None, "", "9144897"]),
    point_of_care=st.sampled_from([None, "", HOSPITAL, "874716782"]),
    purpose=st.sampled_from([None, "TREAT", "ETREAT"]),
    micro=st.integers(0, 999_999),
)
def test_the_columns_from_the_facts_for_any_caller(
    client: str | None,
    organisation: str | None,
    hpr: str | None,
    point_of_care: str | None,
    purpose: str | None,
    micro: int,
) -> None:
    f = facts(
        client_id=client,
        organisation=organisation,
        practitioner_hpr=hpr,
        point_of_care=point_of_care,
        purpose_of_use=purpose,
        recorded=facts().recorded.replace(microsecond=micro),
    )
    assert facts_terms(f) == search_terms(build_audit_event(f))
