"""AUD-04 / product.md §5: no access token, DPoP proof, client assertion, measurement value or national
identity number ever appears in a log line.

Two full runs, each recording every secret that went over the wire (from the requests themselves, not
from what the code under test says it sent): one through the Flask app with the root logger captured at
DEBUG, one against each HTTP server ``dho-share serve`` offers (gunicorn, granian; two workers) with its
stderr captured as well. Each run gets tokens, writes,
reads, searches, and is refused in the usual ways; the Flask run also forces an unhandled exception whose
message quotes a patient's number, a measurement and a token (as a database error quoting SQL parameters
would), because that is the one place the app itself logs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from flask import Flask, Response, request
from sqlalchemy import select

from auth.client import ASSERTION_TYPE, DhoClient, attestation, client_assertion, dpop_proof
from auth.server import INTROSPECTION_PATH, REVOCATION_PATH
from sharing_api.fhir.identifiers import FNR
from sharing_api.request_log import REQUEST_LOG, json_formatter
from sharing_api.services import Services
from sharing_api.serving import SERVERS
from sharing_api.settings import Settings
from sharing_api.store.observations import ObservationStore
from sharing_api.store.schema import audit_entries
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, READ, WRITE, ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import live_server
from tests.security.helpers import READ_VALUE, WRITE_VALUE, make_scene, server_env

BASE = f"/{TENANT_A}/fhir"
VALUES = (71.394, 88.216, 59.731)


class Secrets:
    """Everything that must stay out of the logs: credentials (tokens, proofs, assertions, and their
    payload and signature segments), national identity numbers and measurement values."""

    def __init__(self) -> None:
        self.credentials: set[str] = set()
        self.identities: set[str] = set()
        self.values: set[str] = set()

    @property
    def items(self) -> set[str]:
        return self.credentials | self.identities | self.values

    def add_jwt(self, value: str | None) -> None:
        """A token, proof or assertion, and its payload and signature segments (the header segment of
        our tokens is the same for all of them and is not secret)."""
        if not value:
            return
        value = value.removeprefix("DPoP ").removeprefix("Bearer ").strip()
        self.credentials.add(value)
        parts = value.split(".")
        if len(parts) == 3:
            self.credentials.update(p for p in parts[1:] if len(p) >= 16)

    def add_request(self, headers: Any, form: Any) -> None:
        self.add_jwt(headers.get("Authorization"))
        self.add_jwt(headers.get("DPoP"))
        for name in ("client_assertion", "token", "access_token"):
            for value in form.get(name, []) if isinstance(form, dict) else []:
                self.add_jwt(value)

    @staticmethod
    def found(secrets: Iterable[str], lines: Iterable[str]) -> list[tuple[str, str]]:
        return [(s[:24] + "...", line[:200]) for line in lines for s in secrets if s in line]

    def found_in(self, lines: Iterable[str]) -> list[tuple[str, str]]:
        return self.found(self.items, lines)


def record_wire(app: Flask, secrets: Secrets) -> None:
    """Hooks on the app that record every credential in requests and every token in responses."""

    @app.before_request
    def _request() -> None:
        # The cached raw body, not request.form: parsing the form here would consume the stream before
        # the guard keeps the raw body for the audit record.
        is_form = request.mimetype == "application/x-www-form-urlencoded"
        form = parse_qs(request.get_data(cache=True).decode("utf-8", "replace")) if is_form else {}
        secrets.add_request(request.headers, form)

    @app.after_request
    def _response(response: Response) -> Response:
        body = response.get_json(silent=True)
        if isinstance(body, dict):
            secrets.add_jwt(body.get("access_token"))
        return response


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [caplog.text]
    for record in caplog.records:
        lines.append(record.getMessage())
        lines.append(repr(record.args))
        lines.append(record.exc_text or "")
        lines.append(json_formatter().format(record))  # with the request log's fields (``extra``)
        lines.append(repr({k: v for k, v in vars(record).items() if k not in LOGGING_CLOCK}))
    return lines


LOGGING_CLOCK = frozenset({"created", "msecs", "relativeCreated"})
"""A record's times, as floats that logging makes (never from a request): ``created`` 1764780088.2163...
holds the measurement value 88.216 as a substring now and then (CI, 2026-12-03), a false finding. The
time as the JSON line writes it (ISO, seconds below 60) is still checked, through ``json_formatter``."""


def rule_of(app: Flask, method: str, path: str) -> str:
    """The URL rule Flask matches for ``path`` (what the request log names instead of the path)."""
    return str(app.url_map.bind("localhost").match(path, method, return_rule=True)[0].rule)


def request_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The request log's JSON lines (sharing_api/request_log.py) among ``lines``."""
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict) and parsed.get("name") == REQUEST_LOG.name:
                found.append(parsed)
    return found


def run_app_scenario(app: Flask, client: ApiClient, services: Services, monkeypatch: Any) -> Secrets:
    """Tokens, writes, reads, searches, refusals and one crash through the Flask app; what was sent."""
    secrets = Secrets()
    record_wire(app, secrets)
    patients = [fnr(), fnr()]
    secrets.identities.update(patients)
    secrets.values.update(str(v) for v in (*VALUES, READ_VALUE, WRITE_VALUE))

    # Writes (tokens from the token endpoint), reads, searches, history.
    scene = make_scene(client, services)
    secrets.identities.add(scene.patient)
    for patient, value in zip(patients, VALUES, strict=False):
        assert client.post(f"{BASE}/Observation", json=heart_rate(patient, value=value)).status_code == 201
    assert client.get(scene.read.path).status_code == 200
    assert client.get(scene.read.path + "/_history").status_code == 200
    for patient in patients:
        searched = client.post(f"{BASE}/Observation/_search", data={"patient.identifier": f"{FNR}|{patient}"})
        assert searched.status_code == 200
    # Refusals: replayed proof, forged token, Bearer, scope, token in the URL, PII in a URL, client auth.
    reader = scene.read
    headers = reader.headers()
    assert reader.send(headers).status_code == 200
    assert reader.send(headers).status_code == 401
    assert reader.send_with(reader.mint(aud="other")).status_code == 401
    assert reader.send({"Authorization": f"Bearer {reader.token}", "DPoP": reader.proof()}).status_code == 401
    assert reader.send(reader.headers(scene.write.token)).status_code == 403
    assert scene.write.send(scene.write.headers(reader.token)).status_code == 403
    in_url = reader.send({"DPoP": reader.proof()}, path=f"{reader.path}?access_token={reader.token}")
    assert in_url.status_code in (400, 401)
    secrets.add_jwt(reader.token)
    pii = client.get(f"{BASE}/Observation?patient.identifier={FNR}|{patients[0]}", patient=patients[0])
    assert pii.status_code == 400
    bad = client.flask.post(
        "/connect/token", data={"grant_type": "client_credentials", "client_assertion": reader.token}
    )
    assert bad.status_code in (400, 401)
    party = client.parties["hospital"]
    for path in (INTROSPECTION_PATH, REVOCATION_PATH):
        form = {
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(party.key, client_id=party.client_id, issuer=client.issuer),
            "token": reader.token,
        }
        assert client.flask.post(path, data=form).status_code == 200
    assert reader.send(reader.headers()).status_code == 401  # revoked
    # An unhandled error whose message quotes PHI and a token (like a driver error quoting SQL params).
    leaky = f"row for {scene.patient} value {READ_VALUE} token {reader.token}"

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(leaky)

    monkeypatch.setattr(ObservationStore, "read", explode)
    fresh = client.token_response(party, patient=(FNR, scene.patient)).get_json()["access_token"]
    crashed = reader.send(reader.headers(fresh))
    assert crashed.status_code == 500
    assert scene.patient not in crashed.get_data(as_text=True)
    monkeypatch.undo()
    assert len(secrets.credentials) > 20
    return secrets


def test_no_secrets_in_app_logs(
    app: Flask, client: ApiClient, services: Services, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger, everything
    secrets = run_app_scenario(app, client, services, monkeypatch)
    assert any("unhandled RuntimeError" in r.getMessage() for r in caplog.records), "the 500 was not logged"
    lines = log_lines(caplog)
    logged = request_lines(lines)
    routes = {(line["method"], line["route"], line["status"]) for line in logged}
    assert ("POST", rule_of(app, "POST", "/connect/token"), 200) in routes
    assert ("POST", rule_of(app, "POST", f"{BASE}/Observation/_search"), 200) in routes
    assert ("POST", rule_of(app, "POST", f"{BASE}/Observation"), 201) in routes
    assert any(line["status"] == 500 for line in logged), "the crashed request has its line"
    assert secrets.found_in(lines) == []


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, and what it decodes to if it is base64 (``entity.query``)."""
    if isinstance(value, str):
        yield value
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(ValueError):  # not base64, or not text (UnicodeDecodeError)
                yield decode(value + "=" * (-len(value) % 4)).decode("utf-8")
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_no_credentials_or_measurements_in_the_audit_log(
    app: Flask, client: ApiClient, services: Services, monkeypatch: Any
) -> None:
    """AUD-04 for the database: the audit log names patients (it must), but never holds a token, proof,
    assertion or measurement value, not even base64-encoded in ``entity.query``."""
    secrets = run_app_scenario(app, client, services, monkeypatch)
    with services.engine.connect() as conn:
        events = [json.loads(row.event) for row in conn.execute(select(audit_entries.c.event))]
    assert len(events) > 10
    assert any(e["outcome"] != "0" for e in events)
    strings = [s for event in events for s in _strings(event)]
    assert any("patient.identifier=" in s for s in strings), "entity.query was not decoded"
    assert Secrets.found(secrets.credentials | secrets.values, strings) == []


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_no_secrets_in_the_server_log_or_client_logs(
    server: str,
    app: Flask,
    client: ApiClient,
    settings: Settings,
    services: Services,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = Secrets()
    patients = [fnr(), fnr()]
    secrets.identities.update(patients)
    secrets.values.update(str(v) for v in VALUES)
    session = requests.Session()

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        sent = response.request
        body = sent.body.decode() if isinstance(sent.body, bytes) else (sent.body or "")
        form = parse_qs(body) if "x-www-form-urlencoded" in sent.headers.get("Content-Type", "") else {}
        secrets.add_request(sent.headers, form)
        if response.headers.get("Content-Type", "").startswith("application/json"):
            secrets.add_jwt(response.json().get("access_token"))

    session.hooks["response"].append(record)
    env = server_env(settings)
    log = tmp_path / "server.log"
    with live_server(env, workers=2, log=log, options=("--server", server)) as base:
        publisher = client.parties[f"publisher-{TENANT_A}"]
        writer = DhoClient(base, publisher.client_id, publisher.key, WRITE, session=session)
        for patient, value in zip(patients, VALUES, strict=False):
            response = writer.request(
                "POST", f"{base}{BASE}/Observation", json=heart_rate(patient, value=value)
            )
            assert response.status_code == 201
        hospital = client.parties["hospital"]
        for patient in patients:
            reader = DhoClient(
                base,
                hospital.client_id,
                hospital.key,
                READ,
                attestation=attestation(
                    legal_entity=HOSPITAL, point_of_care=HOSPITAL_UNIT, patient=(FNR, patient)
                ),
                session=session,
            )
            found = reader.request(
                "POST", f"{base}{BASE}/Observation/_search", data={"patient.identifier": f"{FNR}|{patient}"}
            )
            assert found.status_code == 200
            token = reader.access_token()
            url = f"{base}{BASE}/Observation/_search"
            proof = dpop_proof(reader.dpop_key, method="POST", url=url, access_token=token)
            form = {"patient.identifier": f"{FNR}|{patient}"}
            headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
            assert session.post(url, data=form, headers=headers, timeout=10).status_code == 200
            assert session.post(url, data=form, headers=headers, timeout=10).status_code == 401  # replay
            headers["Authorization"] = f"Bearer {token}"
            assert session.post(url, data=form, headers=headers, timeout=10).status_code == 401
            big = {"Authorization": f"DPoP {token}" + "A" * 20_000, "DPoP": proof}
            assert session.post(url, data=form, headers=big, timeout=10).status_code == 431
    assert len(secrets.items) > 20
    server_lines = log.read_text(errors="replace").splitlines()
    logged = request_lines(server_lines)
    search = rule_of(app, "POST", f"{BASE}/Observation/_search")
    assert {(line["method"], line["route"], line["status"]) for line in logged} >= {
        ("POST", rule_of(app, "POST", "/connect/token"), 200),
        ("POST", rule_of(app, "POST", f"{BASE}/Observation"), 201),
        ("POST", search, 200),
        ("POST", search, 401),
    }, "one JSON line per request"
    assert all(line["request_id"] and len(line["trace_id"]) == 32 for line in logged)
    assert secrets.found_in(server_lines) == []
    assert secrets.found_in(log_lines(caplog)) == []


def _raw_request(base: str, lines: list[str]) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return sock.recv(4096)


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_no_token_in_the_server_log_for_a_malformed_header_line(
    server: str, client: ApiClient, settings: Settings, tmp_path: Path
) -> None:
    env = server_env(settings)
    log = tmp_path / "server.log"
    with live_server(env, workers=2, log=log, options=("--server", server)) as base:
        publisher = client.parties[f"publisher-{TENANT_A}"]
        token = DhoClient(base, publisher.client_id, publisher.key, WRITE).access_token()
        answer = _raw_request(
            base, [f"GET {BASE}/metadata HTTP/1.1", "Host: 127.0.0.1", f"Authorization DPoP {token}"]
        )
        assert answer.startswith(b"HTTP/1.1 400")
    assert token.split(".")[2] not in log.read_text(errors="replace")
