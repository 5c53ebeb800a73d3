"""Unknown paths and methods under ``/{orgnr}/fhir`` answer a FHIR OperationOutcome naming the path,
never Werkzeug's HTML or its generic text (issue 9)."""

from __future__ import annotations

import pytest

from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr


@pytest.mark.parametrize("path", [f"/{TENANT_A}/fhir/Observatoin", f"/{TENANT_A}/fhir/Observation/x/y/z"])
def test_an_unknown_path_is_an_operation_outcome_naming_it(client: ApiClient, path: str) -> None:
    response = client.get(path, auth=False)
    assert response.status_code == 404
    assert response.mimetype == "application/fhir+json"
    (issue,) = response.get_json()["issue"]
    assert issue["code"] == "not-found"
    assert path in issue["diagnostics"]
    assert "<" not in response.get_data(as_text=True)


def test_an_unsupported_method_is_an_operation_outcome(client: ApiClient) -> None:
    response = client.open("PATCH", f"/{TENANT_A}/fhir/metadata", auth=False)
    assert response.status_code == 405
    assert response.mimetype == "application/fhir+json"
    (issue,) = response.get_json()["issue"]
    assert "PATCH" in issue["diagnostics"]


def test_an_unknown_path_never_echoes_a_national_identity_number(client: ApiClient) -> None:
    patient = fnr()
    path = f"/{TENANT_A}/fhir/Patient/{patient}/Observation"
    response = client.get(path, auth=False)
    assert response.status_code == 404
    assert patient.encode() not in response.data
    assert f"/{TENANT_A}/fhir/Patient/" in response.get_json()["issue"][0]["diagnostics"]
