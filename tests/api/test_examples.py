"""The VkpObservation IG's own examples (HL7 Norway), read from ``../shared/reference``.

Issue #2, "Done when": VKP-profile examples are accepted once their placeholder identifiers are made
valid, and read back unchanged; with placeholders, or with an EPJ-local patient id, they are refused
naming the element; mutated variants are refused and nothing is stored.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sharing_api.fhir.identifiers import DNR, FNR, HPR, ORGNR
from sharing_api.services import Services
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import FHIR_JSON, fnr

VKP_PREFIX = "http://hl7.no/fhir/vkpobservation/StructureDefinition/vkp-"
BASE = f"/{TENANT_A}/fhir"


def _examples(shared: Path) -> dict[str, dict[str, Any]]:
    folder = shared / "reference" / "vkpobservation" / "examples"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


@pytest.fixture(scope="module")
def examples(shared_dir: Path) -> dict[str, dict[str, Any]]:
    found = _examples(shared_dir)
    assert len(found) == 16, "the reference pack should hold the IG's 16 examples"
    return found


def vkp_profiled(examples: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: ex
        for name, ex in examples.items()
        if ex["resourceType"] == "Observation"
        and any(p.startswith(VKP_PREFIX) for p in ex.get("meta", {}).get("profile", []))
    }


def epj_local(examples: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: ex
        for name, ex in examples.items()
        if ex["resourceType"] == "Observation" and ex["subject"]["identifier"]["system"] not in (FNR, DNR)
    }


def with_valid_identifiers(example: dict[str, Any]) -> dict[str, Any]:
    """Replace the IG's placeholder numbers with synthetic valid ones (the tenant for an organisation)."""
    obs = copy.deepcopy(example)
    obs["subject"]["identifier"]["value"] = fnr()
    for performer in obs.get("performer", []):
        identifier = performer["identifier"]
        if identifier["system"] == ORGNR:
            identifier["value"] = TENANT_A
        elif identifier["system"] in (FNR, DNR):
            identifier["value"] = fnr()
        elif identifier["system"] == HPR:
            identifier["value"] = "1234567"
    return obs


def count_rows(services: Services) -> int:
    from sqlalchemy import func, select

    from sharing_api.store.schema import observations

    with services.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(observations)).scalar() or 0)


def post(client: ApiClient, resource: dict[str, Any]) -> Any:
    return client.post(f"{BASE}/Observation", json=resource, headers={"Content-Type": FHIR_JSON})


def expressions(response: Any) -> list[str]:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return [e for issue in body["issue"] for e in issue.get("expression", [])]


def test_the_pack_has_vkp_and_epj_examples(examples: dict[str, dict[str, Any]]) -> None:
    assert len(vkp_profiled(examples)) == 8
    assert len(epj_local(examples)) == 6


def test_vkp_examples_are_accepted_and_read_back_unchanged(
    client: ApiClient, examples: dict[str, dict[str, Any]]
) -> None:
    for name, example in vkp_profiled(examples).items():
        sent = with_valid_identifiers(example)
        created = post(client, sent)
        assert created.status_code == 201, (name, created.get_json())
        location = created.headers["Location"]
        assert location.endswith("/_history/1")
        read = client.get(location.split("https://dho.example.test", 1)[1].rsplit("/_history", 1)[0])
        assert read.status_code == 200
        got = read.get_json()
        assert got["meta"]["versionId"] == "1"
        for key in ("id", "meta"):
            got.pop(key)
            sent.pop(key, None)
        meta_profile = example["meta"]["profile"]
        assert read.get_json()["meta"]["profile"] == meta_profile
        assert got == sent, name


def test_vkp_examples_with_placeholder_patient_numbers_are_refused(
    client: ApiClient, services: Services, examples: dict[str, dict[str, Any]]
) -> None:
    for name, example in vkp_profiled(examples).items():
        response = post(client, example)
        assert response.status_code == 400, name
        assert "Observation.subject.identifier.value" in expressions(response), name
    assert count_rows(services) == 0


def test_epj_local_examples_are_refused_naming_the_subject_system(
    client: ApiClient, services: Services, examples: dict[str, dict[str, Any]]
) -> None:
    for name, example in epj_local(examples).items():
        response = post(client, example)
        assert response.status_code == 400, name
        assert "Observation.subject.identifier.system" in expressions(response), name
    assert count_rows(services) == 0


def test_the_pmd_batch_example_gets_a_batch_response_echoing_its_full_url(
    client: ApiClient, examples: dict[str, dict[str, Any]]
) -> None:
    bundle = copy.deepcopy(examples["pmd-Bundle-Request-example"])
    for entry in bundle["entry"]:
        entry["resource"] = with_valid_identifiers(entry["resource"])
    response = client.post(BASE, json=bundle)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["type"] == "batch-response"
    expected = examples["pmd-Bundle-Response-example"]
    assert [e["fullUrl"] for e in body["entry"]] == [e["fullUrl"] for e in expected["entry"]]
    assert all(e["response"]["status"].startswith("201") for e in body["entry"])


def _set(obs: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = obs
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()
MUTATIONS = [
    (
        "no subject system",
        "vkp-heartrate-create",
        "subject.identifier.system",
        _DELETE,
        "Observation.subject.identifier.system",
    ),
    ("wrong unit", "vkp-heartrate-create", "valueQuantity.code", "kg", "Observation.valueQuantity.code"),
    (
        "bad control digit",
        "vkp-heartrate-create",
        "subject.identifier.value",
        "BAD",
        "Observation.subject.identifier.value",
    ),
    (
        "code from no known system",
        "vkp-heartrate-create",
        "code.coding",
        [{"system": "urn:local:codes", "code": "HR"}],
        "Observation.code.coding",
    ),
    (
        "SpO2 150 %",
        "vkp-oxygen-saturation-create",
        "valueQuantity.value",
        150,
        "Observation.valueQuantity.value",
    ),
    ("status outside the value set", "vkp-heartrate-create", "status", "done", "Observation.status"),
    ("no effective time", "vkp-heartrate-create", "effectiveDateTime", _DELETE, "Observation.effective[x]"),
    ("unknown element", "vkp-heartrate-create", "colour", "red", "Observation.colour"),
    (
        "wrong datatype",
        "vkp-heartrate-create",
        "valueQuantity.value",
        "fast",
        "Observation.valueQuantity.value",
    ),
    (
        "glucose in mg/dL",
        "vkp-glucose-create",
        "valueQuantity.code",
        "mg/dL",
        "Observation.valueQuantity.code",
    ),
    (
        "script in narrative",
        "vkp-heartrate-create",
        "text",
        {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>',
        },
        "Observation.text.div",
    ),
    (
        "performer from another organisation",
        "vkp-news2-create",
        "performer.1.identifier.value",
        "974760673",
        "Observation.performer[1].identifier.value",
    ),
]


@pytest.mark.parametrize(
    ("label", "example", "path", "value", "expression"), MUTATIONS, ids=[m[0] for m in MUTATIONS]
)
def test_mutated_examples_are_refused_naming_the_element(
    client: ApiClient,
    services: Services,
    examples: dict[str, dict[str, Any]],
    label: str,
    example: str,
    path: str,
    value: Any,
    expression: str,
) -> None:
    obs = with_valid_identifiers(examples[example])
    if path == "subject.identifier.value" and value == "BAD":
        good = obs["subject"]["identifier"]["value"]
        value = good[:-1] + str((int(good[-1]) + 1) % 10)  # one wrong control digit
    _set(obs, path, value)
    response = post(client, obs)
    assert response.status_code == 400, label
    assert expression in expressions(response), (label, response.get_json())
    assert count_rows(services) == 0


def test_a_patient_inside_a_batch_refuses_the_bundle_and_stores_nothing(
    client: ApiClient, services: Services, examples: dict[str, dict[str, Any]]
) -> None:
    bundle = copy.deepcopy(examples["pmd-Bundle-Request-example"])
    bundle["entry"][0]["resource"] = with_valid_identifiers(bundle["entry"][0]["resource"])
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:patient-1",
            "resource": {"resourceType": "Patient", "identifier": [{"system": FNR, "value": fnr()}]},
            "request": {"method": "POST", "url": "Patient"},
        }
    )
    response = client.post(BASE, json=bundle)
    assert response.status_code == 400
    assert "Bundle.entry[1].resource.resourceType" in expressions(response)
    assert count_rows(services) == 0
