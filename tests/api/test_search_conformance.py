"""FHIR search conformance and hardening (issue 8): modifiers, date prefixes, caps, whole numbers,
``_summary``/``_elements`` and the media type of ``_search``. Expectations come from the registry in
``sharing_api.fhir.search`` and from the FHIR R4 definitions fhir.resources carries."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation as FhirObservation
from werkzeug.datastructures import MultiDict

from sharing_api.audit.actions import AuditAction
from sharing_api.fhir.identifiers import FNR
from sharing_api.fhir.search import (
    DATE_PREFIXES,
    FHIR_DATE_PREFIXES,
    FHIR_MODIFIERS,
    OBSERVATION_SEARCH,
    SUMMARIES,
)
from sharing_api.routes.common import MAX_AUDITED_QUERY
from sharing_api.services import Services
from tests.api.test_audit_http import auditor  # noqa: F401 (fixture)
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import LOINC, batch, fnr, heart_rate, search_form, spo2
from tests.policy.helpers import controller

BASE = f"/{TENANT_A}/fhir"
HEART_RATE = f"{LOINC}|8867-4"


def _seed(client: ApiClient, patient: str) -> None:
    resources = [
        heart_rate(patient, value=60 + d, when=f"2026-11-{d:02d}T08:00:00+01:00") for d in range(1, 11)
    ]
    resources += [spo2(patient, value=90 + d, when=f"2026-11-{d:02d}T09:00:00+01:00") for d in range(1, 6)]
    assert client.post(BASE, json=batch(*resources)).status_code == 200


def search(client: ApiClient, form: dict[str, Any], **headers: str) -> Any:
    return client.post(f"{BASE}/Observation/_search", data=form, headers=headers)


def resources(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_json()
    return [e["resource"] for e in response.get_json().get("entry", [])]


def refused(response: Any, expression: str, status: int = 400) -> str:
    """The diagnostics of a refusal that names ``expression``."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    [issue] = body["issue"]
    assert issue["expression"] == [expression]
    return str(issue["diagnostics"])


def audit_count(services: Services) -> int:
    services.audit_log.drain(TENANT_A)
    return len(services.audit_log.search(TENANT_A, count=100_000))


# -- modifiers ------------------------------------------------------------------------------------


def test_code_not_leaves_out_what_it_names(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    found = resources(search(client, search_form(patient, **{"code:not": HEART_RATE})))
    assert len(found) == 5
    assert {r["code"]["coding"][0]["code"] for r in found} == {"2708-6"}
    # Several values: none of them may match (FHIR R5 clarifies R4: "not any").
    both = f"{HEART_RATE},{LOINC}|2708-6"
    assert resources(search(client, search_form(patient, **{"code:not": both}))) == []


def test_status_and_category_not(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    assert resources(search(client, search_form(patient, **{"status:not": "final"}))) == []
    assert len(resources(search(client, search_form(patient, **{"status:not": "amended"})))) == 15
    assert resources(search(client, search_form(patient, **{"category:not": "vital-signs"}))) == []
    # And through a paging cursor, the exclusion still holds.
    first = search(client, search_form(patient, _count="2", **{"code:not": HEART_RATE})).get_json()
    nxt = next(li["url"] for li in first["link"] if li["relation"] == "next")
    page = resources(client.get(nxt.removeprefix(client.public)))
    assert {r["code"]["coding"][0]["code"] for r in page} == {"2708-6"}


UNSUPPORTED = sorted(
    {f"{p.name}:{m}" for p in OBSERVATION_SEARCH for m in FHIR_MODIFIERS if m not in p.modifiers}
    | {"foo:not", "subject:Patient", "code:Patient.identifier"}
)


@pytest.mark.parametrize("prefer", ["handling=lenient", "handling=strict"])
def test_an_unsupported_modifier_is_refused_whatever_prefer_says(client: ApiClient, prefer: str) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient))
    for name in UNSUPPORTED:
        diagnostics = refused(search(client, search_form(patient, **{name: "x"}), Prefer=prefer), name)
        assert name.split(":", 1)[1] in diagnostics


def test_an_unsupported_modifier_is_refused_on_get_and_lastn(client: ApiClient) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient))
    refused(client.get(f"{BASE}/Observation?code:missing=true", patient=patient), "code:missing")
    form = search_form(patient, **{"code:text": "heart"})
    refused(client.post(f"{BASE}/Observation/$lastn", data=form), "code:text")


def test_consent_search_refuses_modifiers(client: ApiClient) -> None:
    patient = fnr()
    form = {"patient.identifier": f"{FNR}|{patient}", "status:not": "active"}
    response = client.post(f"{BASE}/Consent/_search", data=form, party=controller(client))
    refused(response, "status:not")


def test_audit_event_search_refuses_modifiers(client: ApiClient, auditor: str) -> None:  # noqa: F811
    response = client.post(f"{BASE}/AuditEvent/_search", data={"outcome:not": "0"}, party=auditor)
    refused(response, "outcome:not")
    refused(client.get(f"{BASE}/AuditEvent?action:missing=true", party=auditor), "action:missing")


# -- date prefixes --------------------------------------------------------------------------------


def _days(found: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return sorted((r["code"]["coding"][0]["code"], int(r["effectiveDateTime"][8:10])) for r in found)


def test_starts_after_and_ends_before(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    after = _days(resources(search(client, search_form(patient, date="sa2026-11-08"))))
    assert after == [("8867-4", 9), ("8867-4", 10)]
    before = _days(resources(search(client, search_form(patient, date="eb2026-11-03"))))
    assert before == [("2708-6", 1), ("2708-6", 2), ("8867-4", 1), ("8867-4", 2)]
    # A measurement inside the day named is neither after nor before it.
    day = _days(resources(search(client, search_form(patient, date=["sa2026-11-02", "eb2026-11-04"]))))
    assert day == [("2708-6", 3), ("8867-4", 3)]


@pytest.mark.parametrize("prefix", [p for p in FHIR_DATE_PREFIXES if p not in DATE_PREFIXES] + ["xx"])
@pytest.mark.parametrize("name", ["date", "_lastUpdated"])
def test_a_prefix_not_applied_is_refused_by_name(client: ApiClient, prefix: str, name: str) -> None:
    patient = fnr()
    diagnostics = refused(search(client, search_form(patient, **{name: f"{prefix}2026-11-08"})), name)
    assert repr(prefix) in diagnostics


# -- caps -----------------------------------------------------------------------------------------


@pytest.fixture
def capped(services: Services) -> Any:
    return services.settings.search_limits()


def test_caps_refuse_before_authentication_sql_redis_or_audit(
    client: ApiClient, services: Services, capped: Any
) -> None:
    patient = fnr()
    before = audit_count(services)
    too_many = [("code", f"{LOINC}|{n}") for n in range(capped.max_parameters)]
    form = [("patient.identifier", f"{FNR}|{patient}"), *too_many]
    # Without any token: the cap answers first, so nothing was checked, cached or recorded.
    response = client.post(f"{BASE}/Observation/_search", data=MultiDict(form), auth=False)
    refused(response, "code")
    values = ",".join(f"{LOINC}|{n}" for n in range(capped.max_values + 1))
    refused(client.post(f"{BASE}/Observation/_search", data={"code": values}, auth=False), "code")
    long = "x" * (capped.max_value_bytes + 1)
    refused(client.post(f"{BASE}/Observation/_search", data={"category": long}, auth=False), "category")
    refused(client.get(f"{BASE}/Observation?status={long}", auth=False), "status")
    refused(client.post(f"{BASE}/Consent/_search", data={"_count": long}, auth=False), "_count")
    refused(client.post(f"{BASE}/AuditEvent/_search", data={"agent": long}, auth=False), "agent")
    refused(client.get(f"{BASE}/Observation/$lastn?max={long}", auth=False), "max")
    assert audit_count(services) == before
    # With a token the same search is refused the same way, and still not audited.
    refused(search(client, search_form(patient, category=long)), "category")
    assert audit_count(services) == before  # (token issues go to the token service's own log)


def test_within_the_caps_a_search_runs(client: ApiClient, capped: Any) -> None:
    patient = fnr()
    _seed(client, patient)
    values = ",".join([HEART_RATE] + [f"{LOINC}|{n}" for n in range(capped.max_values - 1)])
    form = [("patient.identifier", f"{FNR}|{patient}"), ("code", values)]
    form += [("status", "final")] * (capped.max_parameters - 2)
    found = resources(client.post(f"{BASE}/Observation/_search", data=MultiDict(form), patient=patient))
    assert len(found) == 10


def test_the_audit_record_of_a_refused_search_is_bounded(
    client: ApiClient, services: Services, capped: Any
) -> None:
    # Within the caps, a URL can still be a megabyte; refused (no token), it is audited, cut short.
    value = ",".join(["y" * (capped.max_value_bytes - 1)] * capped.max_values)
    query = "&".join(f"p{n}={value}" for n in range(capped.max_parameters))
    assert len(query) > 1_000_000
    response = client.get(f"{BASE}/Observation?{query}", auth=False)
    assert response.status_code == 401
    services.audit_log.drain(TENANT_A)
    [entry] = services.audit_log.search(
        TENANT_A, action=[AuditAction.REQUEST_REFUSED], count=1, newest_first=True
    )
    assert len(entry.event) < 4 * MAX_AUDITED_QUERY


# -- whole numbers and dates that used to be 500s -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("_count", "²"), ("_count", "١٢"), ("date", "le9999-12-31"), ("_lastUpdated", "ge9999-12-31")],
)
def test_no_500_for_unicode_digits_or_the_last_day(client: ApiClient, name: str, value: str) -> None:
    patient = fnr()
    refused(search(client, search_form(patient, **{name: value})), name)


def test_lastn_max_in_unicode_digits(client: ApiClient) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient))
    refused(client.post(f"{BASE}/Observation/$lastn", data=search_form(patient, max="²")), "max")


def test_audit_and_consent_searches_with_unicode_digits(client: ApiClient, auditor: str) -> None:  # noqa: F811
    refused(client.post(f"{BASE}/AuditEvent/_search", data={"_count": "²"}, party=auditor), "_count")
    refused(client.get(f"{BASE}/AuditEvent?_after=²", party=auditor), "_after")
    refused(client.get(f"{BASE}/AuditEvent?date=le9999-12-31", party=auditor), "date")
    refused(client.get(f"{BASE}/AuditEvent/$inclusion-proof?index=²&size=1", party=auditor), "index")
    form = {"patient.identifier": f"{FNR}|{fnr()}", "_count": "²"}
    refused(client.post(f"{BASE}/Consent/_search", data=form, party=controller(client)), "_count")


# -- _summary and _elements -----------------------------------------------------------------------

FIELDS = FhirObservation.model_fields


def _summary_element(key: str) -> bool:
    info = FIELDS.get(key.removeprefix("_"))
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    return bool(extra.get("summary_element_property")) or key == "resourceType"


def _subsetted(resource: dict[str, Any]) -> bool:
    return any(t.get("code") == "SUBSETTED" for t in resource["meta"].get("tag", []))


def test_summary_true_keeps_the_summary_elements_and_tags_the_result(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    full = resources(search(client, search_form(patient, _summary="false")))
    assert not any(_subsetted(r) for r in full)
    dropped = {k for r in full for k in r if not _summary_element(k)}
    assert "category" in dropped  # Observation.category is not a summary element in R4
    summary = resources(search(client, search_form(patient, _summary="true")))
    assert [r["id"] for r in summary] == [r["id"] for r in full]
    for r in summary:
        assert _subsetted(r)
        assert all(_summary_element(k) for k in r), r.keys()
        assert set(r) == {k for k in next(f for f in full if f["id"] == r["id"]) if _summary_element(k)}


def test_summary_text_data_and_elements(client: ApiClient) -> None:
    patient = fnr()
    client.post(f"{BASE}/Observation", json=heart_rate(patient))
    mandatory = {k for k, info in FIELDS.items() if info.is_required()} | {"status"}
    [text] = resources(search(client, search_form(patient, _summary="text")))
    assert set(text) <= {"resourceType", "id", "meta", "text"} | mandatory
    assert _subsetted(text)
    [data] = resources(search(client, search_form(patient, _summary="data")))
    assert "text" not in data
    assert "valueQuantity" in data
    assert _subsetted(data)
    [elements] = resources(search(client, search_form(patient, _elements="valueQuantity,effective")))
    assert set(elements) == {"resourceType", "id", "meta", "valueQuantity", "effectiveDateTime"} | mandatory
    assert _subsetted(elements)


@pytest.mark.parametrize("value", ["bogus", "TRUE", ""])
def test_an_unknown_summary_is_refused(client: ApiClient, value: str) -> None:
    assert value not in SUMMARIES
    refused(search(client, search_form(fnr(), _summary=value)), "_summary")


def test_summary_and_elements_on_read(client: ApiClient) -> None:
    patient = fnr()
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient)).get_json()
    path = f"{BASE}/Observation/{created['id']}"
    read = client.get(f"{path}?_summary=true", patient=patient)
    assert read.status_code == 200
    body = read.get_json()
    assert _subsetted(body)
    assert "category" not in body
    assert "valueQuantity" in body
    elements = client.get(f"{path}?_elements=status", patient=patient).get_json()
    assert _subsetted(elements)
    assert "valueQuantity" not in elements
    assert not _subsetted(client.get(path, patient=patient).get_json())
    refused(client.get(f"{path}?_summary=count", patient=patient), "_summary")
    refused(client.get(f"{path}?_elements=a.b", patient=patient), "_elements")


# -- the media type of _search --------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", "application/fhir+json", "text/plain"])
def test_a_body_that_is_not_a_form_gets_415(client: ApiClient, content_type: str) -> None:
    patient = fnr()
    body = '{"patient.identifier": "' + f"{FNR}|{patient}" + '"}'
    response = client.post(
        f"{BASE}/Observation/_search", data=body, headers={"Content-Type": content_type}, patient=patient
    )
    assert response.status_code == 415
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "application/x-www-form-urlencoded" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize("path", ["Consent/_search", "AuditEvent/_search", "Patient/_search"])
def test_other_searches_take_a_form_too(client: ApiClient, path: str) -> None:
    response = client.post(
        f"{BASE}/{path}", data=b'{"patient": "x"}', headers={"Content-Type": "application/json"}, auth=False
    )
    assert response.status_code == 415
    assert response.get_json()["resourceType"] == "OperationOutcome"
