"""Search results equal a brute-force filter over generated data, for every parameter and combinations
(``:not`` and the ``sa``/``eb`` prefixes included).

The reference below re-states FHIR R4 search semantics on plain Python values (token matching, date
ranges with prefixes, AND across repeats, OR within commas) independently of the SQL the store builds.
Paging must return every match exactly once, in the requested order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharing_api.fhir.dates import parse_range
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from tests.api_client import ApiClient
from tests.conftest import TENANT_A, empty_observations
from tests.factories import CATEGORY, batch, fnr

BASE = f"/{TENANT_A}/fhir"
PUBLIC = "https://dho.example.test"
LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
PATIENTS = [(FNR, fnr()), (FNR, fnr()), (FNR, fnr())]
KINDS = {
    "hr": ([(LOINC, "8867-4"), (SNOMED, "364075005")], "vital-signs", ("/min", 70)),
    "spo2": ([(LOINC, "2708-6")], "vital-signs", ("%", 96)),
    "weight": ([(SNOMED, "27113001"), (LOINC, "29463-7")], "vital-signs", ("kg", 80)),
    "news2": ([(SNOMED, "1104051000000101")], "survey", None),
}
STATUSES = ["final", "amended", "preliminary", "entered-in-error"]


@dataclass
class Made:
    patient: tuple[str, str]
    codes: list[tuple[str, str]]
    category: str
    status: str
    effective: str
    id: str = ""
    last_updated: str = ""


def _effective(day: int, hour: int, minute: int, precision: str) -> str:
    if precision == "day":
        return f"2026-11-{day:02d}"
    return f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:00+01:00"


made_strategy = st.builds(
    lambda p, kind, status, day, hour, minute, precision, first_only: Made(
        patient=PATIENTS[p],
        codes=KINDS[kind][0][:1] if first_only else KINDS[kind][0],
        category=KINDS[kind][1],
        status=status,
        effective=_effective(day, hour, minute, precision),
    ),
    st.integers(0, 2),
    st.sampled_from(sorted(KINDS)),
    st.sampled_from(STATUSES),
    st.integers(1, 3),
    st.sampled_from([0, 8, 23]),
    st.sampled_from([0, 30]),
    st.sampled_from(["day", "minute", "minute"]),
    st.booleans(),
)

token_codes = st.sampled_from(
    [f"{s}|{c}" for kind in KINDS.values() for s, c in kind[0]]
    + ["8867-4", "2708-6", "27113001", f"{LOINC}|", f"{SNOMED}|", "|8867-4", "9999-9"]
)
date_value = st.builds(
    lambda prefix, day, hour, precision: (
        prefix + (f"2026-11-{day:02d}" if precision == "day" else f"2026-11-{day:02d}T{hour:02d}:00:00+01:00")
    ),
    st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]),
    st.integers(1, 4),
    st.sampled_from([0, 8, 23]),
    st.sampled_from(["day", "day", "hour"]),
)
query_strategy = st.fixed_dictionaries(
    # A search reads one patient's data, the one the caller's attestation names (trust framework).
    {"patient": st.integers(0, 2)},
    optional={
        "patient_param": st.sampled_from(["patient.identifier", "subject:identifier"]),
        "code": st.lists(st.lists(token_codes, min_size=1, max_size=3), min_size=1, max_size=2),
        "category": st.sampled_from(["vital-signs", f"{CATEGORY}|survey", "survey,vital-signs"]),
        "status": st.lists(st.sampled_from(STATUSES), min_size=1, max_size=2, unique=True),
        "code:not": st.lists(token_codes, min_size=1, max_size=2),
        "status:not": st.lists(st.sampled_from(STATUSES), min_size=1, max_size=2, unique=True),
        "date": st.lists(date_value, min_size=1, max_size=2),
        "_sort": st.sampled_from(["date", "-date", "_lastUpdated", "-_lastUpdated"]),
        "_count": st.integers(1, 7),
        "last_updated_split": st.sampled_from(["ge", "lt", "le", "gt"]),
    },
)


def _resource(m: Made) -> dict[str, Any]:
    kind = next(k for k in KINDS.values() if k[0][0] in m.codes or m.codes[0] in k[0])
    value: dict[str, Any] = {"value": 3}
    if kind[2]:
        unit, v = kind[2]
        value = {"value": v, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    return {
        "resourceType": "Observation",
        "status": m.status,
        "category": [{"coding": [{"system": CATEGORY, "code": m.category}]}],
        "code": {"coding": [{"system": s, "code": c} for s, c in m.codes]},
        "subject": {"identifier": {"system": m.patient[0], "value": m.patient[1]}},
        "effectiveDateTime": m.effective,
        "valueQuantity": value,
    }


def _token_match(raw: str, pairs: list[tuple[str, str]]) -> bool:
    if "|" not in raw:
        return any(c == raw for _, c in pairs)
    system, code = raw.split("|", 1)
    return any(s == system and (not code or c == code) for s, c in pairs)


def _date_match(raw: str, target: tuple[int, int]) -> bool:
    prefix, value = (raw[:2], raw[2:]) if raw[:2].isalpha() else ("eq", raw)
    lo, hi = parse_range(value, require_zone_with_time=False)
    s, e = target
    contained = lo <= s and e <= hi
    return {
        "eq": contained,
        "ne": not contained,
        "gt": e > hi,
        "lt": s < lo,
        "ge": e > hi or contained,
        "le": s < lo or contained,
        "sa": s >= hi,
        "eb": e <= lo,
    }[prefix]


def expected(made: list[Made], q: dict[str, Any], split: str | None) -> list[Made]:
    out = []
    for m in made:
        if m.patient != PATIENTS[q["patient"]]:
            continue
        if any(not any(_token_match(t, m.codes) for t in group) for group in q.get("code", [])):
            continue
        if "category" in q and not any(
            _token_match(t, [(CATEGORY, m.category)]) for t in q["category"].split(",")
        ):
            continue
        if "status" in q and m.status not in q["status"]:
            continue
        if any(_token_match(t, m.codes) for t in q.get("code:not", [])):
            continue
        if m.status in q.get("status:not", []):
            continue
        if not all(_date_match(d, parse_range(m.effective)) for d in q.get("date", [])):
            continue
        if split is not None and not _date_match(split, parse_range(m.last_updated)):
            continue
        out.append(m)
    return out


def _form(q: dict[str, Any], split: str | None) -> list[tuple[str, str]]:
    form: list[tuple[str, str]] = []
    patient = PATIENTS[q["patient"]]
    form.append((q.get("patient_param", "patient.identifier"), f"{patient[0]}|{patient[1]}"))
    form += [("code", ",".join(group)) for group in q.get("code", [])]
    if "category" in q:
        form.append(("category", q["category"]))
    if "status" in q:
        form.append(("status", ",".join(q["status"])))
    for name in ("code:not", "status:not"):
        if name in q:
            form.append((name, ",".join(q[name])))
    form += [("date", d) for d in q.get("date", [])]
    if split is not None:
        form.append(("_lastUpdated", split))
    form.append(("_sort", q.get("_sort", "-date")))
    form.append(("_count", str(q.get("_count", 5))))
    return form


@pytest.mark.long
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(made=st.lists(made_strategy, min_size=0, max_size=25), q=query_strategy)
def test_search_equals_brute_force_and_pages_cover_every_match_once(
    client: ApiClient, services: Services, made: list[Made], q: dict[str, Any]
) -> None:
    empty_observations(services)
    if made:
        response = client.post(BASE, json=batch(*[_resource(m) for m in made]))
        for m, entry in zip(made, response.get_json()["entry"], strict=True):
            assert entry["response"]["status"].startswith("201"), entry
            m.id = entry["response"]["location"].split("/Observation/")[1].split("/")[0]
            m.last_updated = entry["response"]["lastModified"]
    split = None
    if "last_updated_split" in q and made:
        pivot = sorted(m.last_updated for m in made)[len(made) // 2]
        split = q["last_updated_split"] + pivot
    want = expected(made, q, split)

    from urllib.parse import urlencode

    body = client.post(
        f"{BASE}/Observation/_search",
        data=urlencode(_form(q, split)),
        content_type="application/x-www-form-urlencoded",
        patient=PATIENTS[q["patient"]],
    ).get_json()
    assert body["resourceType"] == "Bundle", body
    assert body["total"] == len(want)
    pages = [body]
    while (
        nxt := next((li["url"] for li in pages[-1]["link"] if li["relation"] == "next"), None)
    ) is not None:
        pages.append(client.get(nxt.removeprefix(PUBLIC), patient=PATIENTS[q["patient"]]).get_json())
        assert len(pages) <= len(made) + 2, "paging does not end"
    got = [e["resource"]["id"] for p in pages for e in p.get("entry", [])]
    assert len(got) == len(set(got)), "a match was returned twice"
    assert set(got) == {m.id for m in want}

    by_id = {m.id: m for m in made}
    sort = q.get("_sort", "-date")
    keys = [
        parse_range(by_id[i].effective)[0] if sort.endswith("date") else parse_range(by_id[i].last_updated)[0]
        for i in got
    ]
    assert keys == sorted(keys, reverse=sort.startswith("-"))
