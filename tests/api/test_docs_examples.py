"""The example Observations written for this project (``docs/examples/``) are what the README tells
a municipality developer to start from: each is accepted by the API as it is, and the batch's every
entry is stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sharing_api.fhir.identifiers import ORGNR
from sharing_api.services import Services
from tests.api_client import ApiClient

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
FILES = sorted(EXAMPLES.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return resource


def _tenant(resource: dict[str, Any]) -> str:
    """The organisation the example is published for: its performer organisation."""
    observation = resource["entry"][0]["resource"] if resource["resourceType"] == "Bundle" else resource
    (org,) = (
        p["identifier"]["value"] for p in observation["performer"] if p["identifier"]["system"] == ORGNR
    )
    return str(org)


def test_there_are_examples_of_each_kind() -> None:
    kinds = {_load(f)["resourceType"] for f in FILES}
    assert kinds == {"Observation", "Bundle"}
    codes = {
        c["code"]
        for f in FILES
        if _load(f)["resourceType"] == "Observation"
        for c in _load(f)["code"]["coding"]
    }
    assert {"85354-9", "2708-6", "29463-7"} <= codes  # blood pressure, SpO2, weight


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_example_is_accepted(client: ApiClient, services: Services, path: Path) -> None:
    resource = _load(path)
    tenant = _tenant(resource)
    assert services.tenants.get(tenant) is not None, "the examples publish for the demo municipality"
    if resource["resourceType"] == "Bundle":
        response = client.post(f"/{tenant}/fhir", json=resource)
        assert response.status_code == 200, response.get_json()
        statuses = [e["response"]["status"] for e in response.get_json()["entry"]]
        assert len(statuses) == len(resource["entry"])
        assert all(s.startswith("201") for s in statuses), response.get_json()
    else:
        response = client.post(f"/{tenant}/fhir/Observation", json=resource)
        assert response.status_code == 201, response.get_json()
        stored = client.get(response.headers["Location"].split("/_history")[0].split(".test", 1)[1])
        assert stored.status_code == 200
        assert stored.get_json()["code"] == resource["code"]
