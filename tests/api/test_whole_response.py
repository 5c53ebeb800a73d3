"""Every answer whose body is in memory reaches the WSGI server as one list (granian then writes head
and body at once, so a node killed while answering cannot leave a client with a head and half a body:
``sharing_api/whole_response.py``); the audit export, a generator, still streams."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from sharing_api.services import Services
from tests.api.test_audit_http import AUDIT
from tests.api_client import ApiClient, Party
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate, search_form

BASE = f"/{TENANT_A}/fhir"


def test_answers_go_whole_and_the_export_streams(app: Flask, client: ApiClient, services: Services) -> None:
    handed: list[tuple[str, str, Iterable[bytes]]] = []
    inner: Callable[..., Iterable[bytes]] = app.wsgi_app

    def recording(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        answer = inner(environ, start_response)
        handed.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], answer))
        return answer

    app.wsgi_app = recording  # type: ignore[method-assign]
    client.add_party(Party("auditor-a", TENANT_A, frozenset({AUDIT}), hpr=None))
    patient = fnr()
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient, identifier="whole-1"))
    assert created.status_code == 201
    obs = created.get_json()["id"]
    answers = {
        "read": client.get(f"{BASE}/Observation/{obs}"),
        "search": client.post(f"{BASE}/Observation/_search", data=search_form(patient)),
        "not found": client.get(f"{BASE}/Observation/no-such-id"),
        "bad search": client.post(
            f"{BASE}/Observation/_search", data={**search_form(patient), "date": "not-a-date"}
        ),
        "head": client.open("HEAD", f"{BASE}/Observation/{obs}"),
    }
    assert [(k, a.status_code) for k, a in answers.items()] == [
        ("read", 200),
        ("search", 200),
        ("not found", 404),
        ("bad search", 400),
        ("head", 200),
    ]
    assert answers["read"].get_json()["id"] == obs
    assert answers["head"].get_data() == b""
    services.audit_log.drain(TENANT_A)
    export = client.get(f"{BASE}/AuditEvent/$export", party="auditor-a")
    assert export.status_code == 200
    assert len(export.get_data().splitlines()) >= 4  # the write, read, search and not-found above

    streamed = [(m, p) for m, p, a in handed if not isinstance(a, list)]
    assert streamed == [("GET", f"{BASE}/AuditEvent/$export")]
    whole = {(m, p) for m, p, a in handed if isinstance(a, list)}
    assert {("POST", "/connect/token"), ("POST", f"{BASE}/Observation/_search")} <= whole
    assert {("GET", f"{BASE}/Observation/{obs}"), ("HEAD", f"{BASE}/Observation/{obs}")} <= whole
