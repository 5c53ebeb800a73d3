"""The auditor's AuditEvent search with the standard FHIR R4 parameters (``type``, ``subtype``, ``action``,
``entity``, ``agent``, ``date``, ``patient``, ``outcome``, ``purpose``), mapped to the log's filters.

Expected answers are derived from what the events carry (``events.classification``, the stored events
themselves), not written out again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sharing_api.audit.actions import AuditAction
from sharing_api.audit.events import ACTION_SYSTEM, HPR_SYSTEM, ORGNR_SYSTEM, classification
from sharing_api.fhir.identifiers import FNR
from sharing_api.routes.audit_api import (
    AUDIT_EVENT_SEARCH,
    AUDIT_EVENT_SEARCH_MODIFIERS,
    AUDIT_EVENT_SEARCH_PARAMS,
)
from sharing_api.services import Services
from tests.api_client import HOSPITAL, HPR, ApiClient, Party
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate, search_form

BASE = f"/{TENANT_A}/fhir"
AUDIT = "dho-share/audit.read"
STANDARD = ("type", "subtype", "action", "entity", "agent", "date", "patient", "outcome", "purpose")
OUTCOME_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


@pytest.fixture
def patient(client: ApiClient, services: Services) -> str:
    """A create (publisher), a permitted search (hospital doctor) and a refusal (no token)."""
    client.add_party(Party("auditor-a", TENANT_A, frozenset({AUDIT}), hpr=None))
    who = fnr()
    assert client.post(f"{BASE}/Observation", json=heart_rate(who)).status_code == 201
    assert client.post(f"{BASE}/Observation/_search", data=search_form(who)).status_code == 200
    assert client.post(f"{BASE}/Observation/_search", data=search_form(who), auth=False).status_code == 401
    services.audit_log.drain(TENANT_A)
    return who


def search(client: ApiClient, **form: str) -> list[dict[str, Any]]:
    """The events found, without the auditor's own searches (each search is audited too, so they grow
    from one call to the next)."""
    response = client.post(f"{BASE}/AuditEvent/_search", data={"_count": "200", **form}, party="auditor-a")
    assert response.status_code == 200, response.get_json()
    found = [e["resource"] for e in response.get_json().get("entry", [])]
    return [e for e in found if action_of(e) != AuditAction.AUDIT_SEARCH.value]


def keys(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["recorded"], action_of(e)) for e in events]


def refused(client: ApiClient, name: str, value: str, *, get: bool = False) -> None:
    if get:
        response = client.get(f"{BASE}/AuditEvent", query_string={name: value}, party="auditor-a")
    else:
        response = client.post(f"{BASE}/AuditEvent/_search", data={name: value}, party="auditor-a")
    assert response.status_code == 400, response.get_json()
    issue = response.get_json()["issue"][0]
    assert name in issue.get("expression", []) or name in str(issue), issue


def action_of(event: dict[str, Any]) -> str:
    (code,) = [c["code"] for c in event["subtype"] if c["system"] == ACTION_SYSTEM]
    return str(code)


def test_the_registry_names_every_standard_parameter() -> None:
    assert set(STANDARD) <= set(AUDIT_EVENT_SEARCH_PARAMS)
    types = {"type": "token", "subtype": "token", "action": "token", "outcome": "token", "purpose": "token"}
    types |= {"entity": "reference", "agent": "reference", "patient": "reference", "date": "date"}
    assert {name: AUDIT_EVENT_SEARCH_PARAMS[name] for name in STANDARD} == types  # FHIR R4 AuditEvent
    assert set(AUDIT_EVENT_SEARCH_MODIFIERS) <= set(AUDIT_EVENT_SEARCH_PARAMS)
    assert {p.name: p.type for p in AUDIT_EVENT_SEARCH} == AUDIT_EVENT_SEARCH_PARAMS


def test_type_selects_by_the_events_type_coding(client: ApiClient, patient: str) -> None:
    every = search(client)
    for kind in {(e["type"]["system"], e["type"]["code"]) for e in every}:
        found = search(client, type=f"{kind[0]}|{kind[1]}")
        expected = [e for e in every if (e["type"]["system"], e["type"]["code"]) == kind]
        assert keys(found) == keys(expected)
        assert search(client, type=kind[1]) == found  # the code alone, as FHIR token search allows
    rest = {a.value for a in AuditAction if classification(a).type["code"] == "rest"}
    assert {action_of(e) for e in search(client, type="rest")} <= rest
    assert "request.refused" in {action_of(e) for e in every}
    assert "request.refused" not in {action_of(e) for e in search(client, type="rest")}


def test_subtype_selects_by_interaction_or_our_action(client: ApiClient, patient: str) -> None:
    searches = search(client, subtype="http://hl7.org/fhir/restful-interaction|search-type")
    assert searches
    assert all(
        classification(AuditAction(action_of(e))).subtype[0]["code"] == "search-type" for e in searches
    )
    creates = search(client, subtype=f"{ACTION_SYSTEM}|observation.create")
    assert creates
    assert {action_of(e) for e in creates} == {"observation.create"}
    assert search(client, subtype="http://example.org/other|search-type") == []


def test_action_takes_fhir_codes_and_ours(client: ApiClient, patient: str) -> None:
    creates = search(client, action="C")
    assert creates
    assert {e["action"] for e in creates} == {"C"}
    assert search(client, action="observation.create") == creates
    executes = search(client, action="E")
    assert {e["action"] for e in executes} == {"E"}
    assert search(client, action="D") == []
    refused(client, "action", "observation.delete")


def test_agent_is_a_token_on_the_agents_identifier(client: ApiClient, patient: str) -> None:
    by_hpr = search(client, agent=f"{HPR_SYSTEM}|{HPR}")
    assert by_hpr
    assert (
        by_hpr == search(client, agent=HPR) == search(client, **{"agent:identifier": f"{HPR_SYSTEM}|{HPR}"})
    )
    by_org = search(client, agent=f"{ORGNR_SYSTEM}|{HOSPITAL}")
    assert by_org
    assert by_org == search(client, organisation=HOSPITAL)
    refused(client, "agent", "http://example.org/ids|1")


def test_patient_and_entity_identifier_find_the_patients_events(client: ApiClient, patient: str) -> None:
    found = search(client, patient=f"{FNR}|{patient}")
    assert {action_of(e) for e in found} >= {"observation.create", "observation.search"}
    assert search(client, **{"entity:identifier": f"{FNR}|{patient}"}) == found
    assert search(client, **{"patient:identifier": f"{FNR}|{patient}"}) == found
    refused(client, "entity:identifier", f"{FNR}|{patient}", get=True)  # never in a URL


def test_outcome_and_purpose_take_system_and_code(client: ApiClient, patient: str) -> None:
    failures = search(client, outcome=f"{OUTCOME_SYSTEM}|4")
    assert failures
    assert {e["outcome"] for e in failures} == {"4"}
    assert search(client, outcome="4") == failures
    refused(client, "outcome", "http://example.org/x|4")
    treat = search(client, purpose=f"{ACT_REASON}|TREAT")
    assert treat
    assert treat == search(client, purpose="TREAT")
    refused(client, "purpose", "http://example.org/x|TREAT")


def test_date_prefixes(client: ApiClient, patient: str) -> None:
    today = datetime.now(UTC).date().isoformat()
    every = search(client)
    assert search(client, date=today) == every  # no prefix is eq: the whole day
    assert search(client, date=f"eq{today}") == every
    assert search(client, date=f"gt{today}") == []
    assert search(client, date=f"le{today}") == every
    refused(client, "date", f"sa{today}")


@pytest.mark.parametrize("name", ["patient:exact", "type:not", "code", "agent:missing"])
def test_unknown_parameters_and_modifiers_are_refused(client: ApiClient, patient: str, name: str) -> None:
    refused(client, name, "x")
