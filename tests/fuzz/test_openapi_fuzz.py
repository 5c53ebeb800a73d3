"""A schema-driven fuzz run over every route of ``/openapi.json`` (schemathesis, issue 8).

Each operation gets a bounded number of generated requests (``EXAMPLES``, derandomized: a fixed seed),
sent with a valid DPoP-bound token of the scope the route needs, into tenant ``TENANT_A``. No answer may
be a 5xx, every answer must match the document (status, content type, schema), and every FHIR JSON body
must pass :func:`tests.fhir_validation.assert_valid_fhir`. Both backends run (the ``app`` fixture).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from sharing_api.fhir.identifiers import FNR
from sharing_api.routes.guard import RULES
from tests.api_client import ApiClient, Party
from tests.conftest import TENANT_A
from tests.factories import fnr
from tests.fhir_validation import assert_valid_fhir
from tests.fuzz.conftest import EXAMPLES

EXAMPLES_PER_OPERATION = 25
PATIENT = fnr()
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _party(client: ApiClient, scope: str) -> str:
    """A client of ``TENANT_A`` (or the hospital, for reads) holding ``scope``."""
    if scope == "dho-share/observation.read":
        return "hospital"
    name = f"fuzz-{scope.rsplit('/', 1)[-1]}"
    if name not in client.parties:
        client.add_party(Party(name, TENANT_A, frozenset({scope}), hpr=None))
    return name


def _scope(operation_id: str) -> str | None:
    return next((s for e, (s, _) in RULES.items() if operation_id.startswith(e.split(".", 1)[1] + "_")), None)


def _fuzzer(operation: Any, client: ApiClient, sent: dict[str, int]) -> Any:
    """A Hypothesis test sending ``EXAMPLES_PER_OPERATION`` generated requests to ``operation``."""
    label = f"{operation.method.upper()} {operation.path}"
    scope = _scope(operation.definition.raw.get("operationId", ""))

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,  # a fixed seed: the same examples every run
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the example as found
        report_multiple_bugs=True,
    )
    @given(case=operation.as_strategy())
    def send(case: Any) -> None:
        if "orgnr" in (case.path_parameters or {}):
            case.path_parameters["orgnr"] = TENANT_A
        headers = dict(case.headers or {})
        if scope is not None:
            party = _party(client, scope)
            patient = (FNR, PATIENT) if party == "hospital" else None
            token = client.token(client.parties[party], patient)
            headers.update(client.auth_headers(case.method.upper(), case.formatted_path, token))
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS)
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("application/fhir+json") and response.get_data():
            assert_valid_fhir(response.get_json())
        sent[label] = sent.get(label, 0) + 1

    return send


@pytest.mark.long
def test_no_server_errors_and_valid_answers(
    app: Flask, client: ApiClient, request: pytest.FixtureRequest
) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    sent: dict[str, int] = {}
    for operation in operations:
        _fuzzer(operation, client, sent)()
    assert set(sent) == {f"{o.method.upper()} {o.path}" for o in operations}, "every operation was fuzzed"
    request.node.user_properties.append((EXAMPLES, sum(sent.values())))
