"""Observation search: parameters, paging links, cursors, PII rules and ``$lastn``."""

from __future__ import annotations

from typing import Any

import pytest

from sharing_api.fhir.identifiers import FNR
from sharing_api.fhir.search import MAX_CURSOR_BYTES
from sharing_api.services import Services
from tests.api.test_examples import expressions
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import batch, fnr, heart_rate, search_form, spo2

BASE = f"/{TENANT_A}/fhir"
PUBLIC = "https://dho.example.test"


def _seed(client: ApiClient, patient: str) -> None:
    resources = [
        heart_rate(patient, value=60 + d, when=f"2026-11-{d:02d}T08:00:00+01:00") for d in range(1, 11)
    ]
    resources += [spo2(patient, value=90 + d, when=f"2026-11-{d:02d}T09:00:00+01:00") for d in range(1, 6)]
    assert client.post(BASE, json=batch(*resources)).status_code == 200


def search(client: ApiClient, form: dict[str, str], **headers: str) -> Any:
    return client.post(f"{BASE}/Observation/_search", data=form, headers=headers)


def follow(client: ApiClient, url: str) -> Any:
    return client.get(url.removeprefix(PUBLIC))


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((li["url"] for li in bundle["link"] if li["relation"] == relation), None)


def test_search_by_patient_and_code_newest_first(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    _seed(client, fnr())
    body = search(client, search_form(patient, code="http://loinc.org|8867-4")).get_json()
    assert body["type"] == "searchset"
    assert body["total"] == 10
    values = [e["resource"]["valueQuantity"]["value"] for e in body["entry"]]
    assert values == list(range(70, 60, -1))
    assert all(e["search"]["mode"] == "match" for e in body["entry"])
    assert body["entry"][0]["fullUrl"] == f"{PUBLIC}{BASE}/Observation/{body['entry'][0]['resource']['id']}"


def test_code_or_and_date_range(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    form = search_form(patient, code="http://loinc.org|8867-4,http://loinc.org|2708-6", _sort="date")
    body = client.post(
        f"{BASE}/Observation/_search",
        data={**form, "date": ["ge2026-11-03", "lt2026-11-05"]},  # repeated: AND
    ).get_json()
    got = [
        (e["resource"]["code"]["coding"][0]["code"], e["resource"]["effectiveDateTime"][:10])
        for e in body["entry"]
    ]
    assert got == [
        ("8867-4", "2026-11-03"),
        ("2708-6", "2026-11-03"),
        ("8867-4", "2026-11-04"),
        ("2708-6", "2026-11-04"),
    ]


def test_paging_links_walk_every_match_once_and_back(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    first = search(client, search_form(patient, _count="4")).get_json()
    pages = [first]
    while (url := link(pages[-1], "next")) is not None:
        pages.append(follow(client, url).get_json())
    ids = [e["resource"]["id"] for p in pages for e in p["entry"]]
    assert len(ids) == 15
    assert len(set(ids)) == 15
    assert [len(p["entry"]) for p in pages] == [4, 4, 4, 3]
    back = follow(client, link(pages[-1], "previous") or "").get_json()
    assert [e["resource"]["id"] for e in back["entry"]] == [e["resource"]["id"] for e in pages[-2]["entry"]]
    again = follow(client, link(first, "self") or "").get_json()
    assert "entry" in again, again
    assert [e["resource"]["id"] for e in again["entry"]] == [e["resource"]["id"] for e in first["entry"]]


def test_links_carry_no_patient_identifier(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    body = search(client, search_form(patient, _count="2")).get_json()
    assert body["link"]
    for li in body["link"]:
        assert patient not in li["url"]
        assert "patient" not in li["url"]


def test_a_cursor_is_bound_to_its_requester(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    body = search(client, search_form(patient, _count="2")).get_json()
    url = (link(body, "next") or "").removeprefix(PUBLIC)
    other = client.get(url, party="other-hospital", patient=patient)
    assert other.status_code == 403
    assert "entry" not in other.get_json()


def test_a_tampered_or_unknown_cursor_is_refused(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    body = search(client, search_form(patient, _count="2")).get_json()
    url = (link(body, "next") or "").removeprefix(PUBLIC)
    tampered = url[:-2] + ("AA" if not url.endswith("AA") else "BB")
    response = client.get(tampered)
    assert response.status_code == 410
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert client.get(f"{url}&code=x").status_code == 400


def test_a_cursor_has_its_own_length_cap(client: ApiClient) -> None:
    # A sealed cursor is longer than a search value may be (256 bytes), and capped at 1,500 bytes.
    patient = fnr()
    _seed(client, patient)
    body = search(client, search_form(patient, _count="2")).get_json()
    cursor = (link(body, "next") or "").split("_cursor=", 1)[1]
    assert 256 < len(cursor) <= MAX_CURSOR_BYTES
    assert client.get(f"{BASE}/Observation?_cursor={'A' * MAX_CURSOR_BYTES}").status_code == 410
    too_long = client.get(f"{BASE}/Observation?_cursor={'A' * (MAX_CURSOR_BYTES + 1)}")
    assert too_long.status_code == 400
    assert expressions(too_long) == ["_cursor"]


def test_a_cursor_without_a_patient_attestation_is_refused_first(client: ApiClient) -> None:
    # A cursor is bound to the attested patient, so the attestation is checked before the cursor is
    # opened: 403 whatever the cursor (an unknown one was 410 before the check).
    assert client.last_patient is None  # this client's token names no patient
    response = client.get(f"{BASE}/Observation?_cursor={'A' * 400}")
    assert response.status_code == 403
    assert "patient" in response.get_json()["issue"][0]["diagnostics"]  # the attestation names none


def test_a_search_writes_no_paging_record_and_its_links_work(
    client: ApiClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The links' cursors are sealed (sharing_api/cursors.py): no session record per search (issue 12).
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a paging record was written")

    monkeypatch.setattr(services.searcher.cursors.sessions, "put", refuse)
    monkeypatch.setattr(services.searcher.cursors.sessions, "put_many", refuse)
    patient = fnr()
    _seed(client, patient)
    single = search(client, search_form(patient)).get_json()
    assert [li["relation"] for li in single["link"]] == ["self"]
    again = follow(client, link(single, "self") or "").get_json()
    assert [e["resource"]["id"] for e in again["entry"]] == [e["resource"]["id"] for e in single["entry"]]
    first = search(client, search_form(patient, _count="10")).get_json()
    rest = follow(client, link(first, "next") or "").get_json()
    assert len(first["entry"]) + len(rest["entry"]) == single["total"] == 15


def test_a_cursor_presented_for_another_patient_is_unknown(client: ApiClient) -> None:
    patient, other = fnr(), fnr()
    _seed(client, patient)
    _seed(client, other)
    body = search(client, search_form(patient, _count="2")).get_json()
    url = (link(body, "next") or "").removeprefix(PUBLIC)
    response = client.get(url, patient=other)  # the same requester, attested for another patient
    assert response.status_code == 410
    assert "entry" not in response.get_json()


def test_get_with_a_national_identity_number_is_refused(client: ApiClient) -> None:
    patient = fnr()
    for query in (
        f"patient.identifier={FNR}|{patient}",
        f"subject:identifier={FNR}|{patient}",
        f"code={patient}",
    ):
        response = client.get(f"{BASE}/Observation?{query}")
        assert response.status_code == 400, query
        assert "POST" in response.get_json()["issue"][0]["diagnostics"]
    assert client.post(f"{BASE}/Observation/_search?patient.identifier={FNR}|{patient}").status_code == 400


def test_a_search_reads_one_patient_the_attested_one(client: ApiClient) -> None:
    patient, other = fnr(), fnr()
    _seed(client, patient)
    unnamed = client.get(f"{BASE}/Observation?code=2708-6&_summary=count", patient=patient)
    assert unnamed.status_code == 403
    assert "total" not in unnamed.get_json()
    both = client.post(
        f"{BASE}/Observation/_search",
        data={"patient.identifier": f"{FNR}|{patient},{FNR}|{other}"},
        patient=patient,
    )
    assert both.status_code == 403
    wrong = client.post(f"{BASE}/Observation/_search", data=search_form(patient), patient=other)
    assert wrong.status_code == 403
    assert "entry" not in wrong.get_json()


def test_unknown_parameters_strict_and_lenient(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    strict = search(client, search_form(patient, colour="red"), Prefer="handling=strict")
    assert strict.status_code == 400
    assert expressions(strict) == ["colour"]
    lenient = search(client, search_form(patient, colour="red"))
    assert lenient.status_code == 200
    assert lenient.get_json()["total"] == 15


def test_bad_parameter_values_are_400(client: ApiClient) -> None:
    for form in (
        {"date": "xx2026-01-01"},
        {"date": "2026-13-01"},
        {"_sort": "value"},
        {"_count": "-1"},
        {"_total": "all"},
    ):
        response = search(client, form)
        assert response.status_code == 400, form
        assert response.get_json()["resourceType"] == "OperationOutcome"


def test_total_none_and_summary_count(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    assert "total" not in search(client, search_form(patient, _total="none")).get_json()
    counted = search(client, search_form(patient, _summary="count")).get_json()
    assert counted["total"] == 15
    assert "entry" not in counted


def test_sort_by_last_updated(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    body = search(client, search_form(patient, _sort="-_lastUpdated", _count="100")).get_json()
    stamps = [e["resource"]["meta"]["lastUpdated"] for e in body["entry"]]
    assert stamps == sorted(stamps, reverse=True)


def test_lastn_gives_the_newest_per_measurement_type(client: ApiClient) -> None:
    patient = fnr()
    _seed(client, patient)
    _seed(client, fnr())
    body = client.post(f"{BASE}/Observation/$lastn", data=search_form(patient)).get_json()
    got = sorted(
        (e["resource"]["code"]["coding"][0]["code"], e["resource"]["valueQuantity"]["value"])
        for e in body["entry"]
    )
    assert got == [("2708-6", 95), ("8867-4", 70)]
    two = client.post(f"{BASE}/Observation/$lastn", data=search_form(patient, max="2")).get_json()
    assert len(two["entry"]) == 4
    assert client.post(f"{BASE}/Observation/$lastn", data={"code": "8867-4"}).status_code == 400


DATE_EDGES = [
    # (prefix+value, which of [day 2 (whole day), day 2 at 08:00, day 3 (whole day)] match)
    ("eq2026-11-02", {"d2", "d2t8"}),
    ("ne2026-11-02", {"d3"}),
    ("gt2026-11-02", {"d3"}),
    ("ge2026-11-02", {"d2", "d2t8", "d3"}),
    ("lt2026-11-03", {"d2", "d2t8"}),
    ("le2026-11-02", {"d2", "d2t8"}),
    ("lt2026-11-02T08:00:00+01:00", {"d2"}),
    ("gt2026-11-02T08:00:00+01:00", {"d2", "d3"}),
    ("eq2026-11-02T08:00:00+01:00", {"d2t8"}),
    ("2026-11", {"d2", "d2t8", "d3"}),
]


def test_date_prefixes_compare_ranges_at_the_edges(client: ApiClient) -> None:
    patient = fnr()
    whens = {"d2": "2026-11-02", "d2t8": "2026-11-02T08:00:00+01:00", "d3": "2026-11-03"}
    ids = {}
    for name, when in whens.items():
        ids[client.post(f"{BASE}/Observation", json=heart_rate(patient, when=when)).get_json()["id"]] = name
    for value, want in DATE_EDGES:
        body = search(client, search_form(patient, date=value)).get_json()
        assert {ids[e["resource"]["id"]] for e in body["entry"]} == want, value
