"""One JSON line per request with the request id, the W3C trace context, the route (its URL rule), status,
latency, client and tenant (issue 9, "The operator"; W3C Trace Context §3.2)."""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from typing import Any

import pytest
from flask import Flask

from sharing_api.app import SECURITY_HEADERS
from sharing_api.fhir.identifiers import FNR
from sharing_api.request_log import (
    REQUEST_LOG,
    configure_json_logging,
    json_formatter,
    log_request,
    start_request,
)
from sharing_api.response_headers import ResponseHeaders
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate

BASE = f"/{TENANT_A}/fhir"


def request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == REQUEST_LOG.name]


def rule_of(app: Flask, method: str, path: str) -> str:
    """The URL rule Flask matches for ``path``: the expected ``route`` comes from the app's url_map."""
    rule, _ = app.url_map.bind("localhost").match(path.split("?")[0], method, return_rule=True)
    return str(rule.rule)


def test_one_line_per_request_with_rule_status_client_and_tenant(
    app: Flask, client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOG.name)
    patient = fnr()
    created = client.post(f"{BASE}/Observation", json=heart_rate(patient))
    assert created.status_code == 201
    path = f"{BASE}/Observation/{created.get_json()['id']}"
    caplog.clear()
    read = client.get(path)
    assert read.status_code == 200
    token_line, line = request_records(caplog)  # the client fetched a token first
    assert token_line.route == "/connect/token"  # type: ignore[attr-defined]
    assert line.route == rule_of(app, "GET", path)  # type: ignore[attr-defined]
    assert line.route != path  # type: ignore[attr-defined]
    assert line.method == "GET"  # type: ignore[attr-defined]
    assert line.status == 200  # type: ignore[attr-defined]
    assert line.latency_ms >= 0  # type: ignore[attr-defined]
    assert line.client_id == "hospital"  # type: ignore[attr-defined]
    assert line.tenant == TENANT_A  # type: ignore[attr-defined]
    assert line.request_id == read.headers["X-Request-ID"]  # type: ignore[attr-defined]
    formatted = json.loads(json_formatter().format(line))
    assert formatted["route"] == rule_of(app, "GET", path)


def test_token_request_logs_the_issued_client(client: ApiClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOG.name)
    assert client.token_response(client.parties["hospital"]).status_code == 200
    (line,) = request_records(caplog)
    assert (line.route, line.status, line.client_id) == ("/connect/token", 200, "hospital")  # type: ignore[attr-defined]


def test_valid_traceparent_keeps_its_trace_and_returns_a_new_span(
    client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOG.name)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    response = client.flask.get("/healthz", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    version, returned_trace, span, flags = response.headers["traceparent"].split("-")
    assert (version, returned_trace, flags) == ("00", trace_id, "01")
    assert span != parent
    assert len(span) == 16
    assert span != "0" * 16
    (line,) = request_records(caplog)
    assert (line.trace_id, line.span_id) == (trace_id, span)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "header",
    [
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # all-zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 is 55 chars
        "garbage",
    ],
)
def test_invalid_traceparent_is_replaced(client: ApiClient, header: str) -> None:
    response = client.flask.get("/healthz", headers={"traceparent": header})
    returned = response.headers["traceparent"]
    assert returned.split("-")[1] not in header
    assert len(returned) == 55
    assert returned.split("-")[1] != "0" * 32


def test_a_number_in_the_path_is_logged_as_the_rule(
    app: Flask, client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOG.name)
    patient = fnr()
    for path in (f"{BASE}/Observation/{patient}", f"/{patient}/fhir/Observation", f"/nowhere/{patient}"):
        client.get(path, patient=patient)
    lines = [r for r in request_records(caplog) if r.route != "/connect/token"]  # type: ignore[attr-defined]
    assert len(lines) == 3
    assert [r.route for r in lines] == [  # type: ignore[attr-defined]
        rule_of(app, "GET", f"{BASE}/Observation/{patient}"),
        rule_of(app, "GET", f"/{patient}/fhir/Observation"),
        "unmatched",
    ]
    dumped = [json.loads(json_formatter().format(r)) for r in lines]
    assert patient not in json.dumps(dumped)
    assert f"{FNR}|" not in json.dumps(dumped)


def test_json_logging_writes_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("dho_share")
    before = (list(logger.handlers), logger.level, logger.propagate)
    try:
        configure_json_logging()
        configure_json_logging()  # idempotent: one handler
        assert sum(getattr(h, "dho_json", False) for h in logger.handlers) == 1
        REQUEST_LOG.info("request", extra={"route": "/x", "status": 204})
        (line,) = capsys.readouterr().err.splitlines()
        parsed = json.loads(line)
        assert (parsed["message"], parsed["route"], parsed["status"], parsed["name"]) == (
            "request",
            "/x",
            204,
            REQUEST_LOG.name,
        )
        # the fields README.md "Logs and metrics" names first, in the order it names them
        assert list(parsed)[:4] == ["time", "levelname", "name", "message"]
        assert parsed["levelname"] == "INFO"
    finally:
        logger.handlers[:], logger.level, logger.propagate = before


def test_the_line_written_directly_is_the_line_logging_writes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the JSON handler alone, ``log_request`` writes its line itself; with one more handler it
    goes through logging's record and formatter. The same request gives the same bytes either way."""
    logger = logging.getLogger("dho_share")
    before = (list(logger.handlers), logger.level, logger.propagate)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    extra_handler = Keep()
    monkeypatch.setattr(time, "time", lambda: 1764767470.0071)
    start = start_request("abc-1", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    try:
        configure_json_logging()
        for handlers in ([], [extra_handler]):
            REQUEST_LOG.handlers[:] = handlers
            log_request(start, "GET", "/<orgnr>/fhir/Observation/<obs_id>", 200, 1.25, "hospital", TENANT_A)
            log_request(None, "GET", "unmatched", 404, None, None, None)
    finally:
        REQUEST_LOG.handlers[:] = []
        logger.handlers[:], logger.level, logger.propagate = before
    direct, direct_unmatched, through_logging, through_logging_unmatched = (
        capsys.readouterr().err.splitlines()
    )
    assert len(records) == 2  # the second pass went through logging
    assert direct == through_logging
    assert direct_unmatched == through_logging_unmatched
    parsed = json.loads(direct)
    assert parsed["time"].endswith(",007")
    assert (parsed["request_id"], parsed["route"], parsed["tenant"]) == (
        "abc-1",
        "/<orgnr>/fhir/Observation/<obs_id>",
        TENANT_A,
    )


def test_a_valid_request_id_is_kept_and_any_other_replaced_by_a_fresh_uuid(client: ApiClient) -> None:
    kept = client.flask.get("/healthz", headers={"X-Request-ID": "abc.DEF-123_x"})
    assert kept.headers["X-Request-ID"] == "abc.DEF-123_x"
    given = ["a b", "x" * 65, "ü", ""]
    returned = [
        client.flask.get("/healthz", headers={"X-Request-ID": g}).headers["X-Request-ID"] for g in given
    ]
    assert [uuid.UUID(r).version for r in returned] == [4] * len(given)
    assert len(set(returned)) == len(given)


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/healthz"), ("GET", "/nowhere"), ("GET", f"{BASE}/Observation/x")]
)
def test_every_answer_carries_the_security_headers(client: ApiClient, method: str, path: str) -> None:
    """Answered, not found, refused (no token): each with its id, span and the constant headers."""
    response = client.flask.open(path, method=method)
    assert response.status_code in (200, 401, 404)
    for name, expected in SECURITY_HEADERS:
        assert response.headers.get_all(name) == [expected]
    assert len(response.headers.get_all("X-Request-ID")) == 1
    assert len(response.headers["traceparent"]) == 55


def test_a_header_of_the_same_name_set_by_a_route_is_replaced() -> None:
    """The id, span and security headers are the app's: a value a route (or anything under the edge)
    set for one of them is dropped, whatever its case, and every other header is kept."""

    def route(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(
            "200 OK",
            [("cache-control", "public, max-age=600"), ("X-Request-ID", "forged"), ("ETag", 'W/"1"')],
        )
        return [b""]

    answered: list[tuple[str, list[tuple[str, str]]]] = []
    environ = {"HTTP_X_REQUEST_ID": "abc-2", "REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    ResponseHeaders(route)(environ, lambda status, headers, exc_info=None: answered.append((status, headers)))
    ((status, headers),) = answered
    assert status == "200 OK"
    names = [name.lower() for name, _ in headers]
    assert sorted(names) == sorted(
        ["etag", "x-request-id", "traceparent", *(name.lower() for name, _ in SECURITY_HEADERS)]
    )
    assert dict(headers)["X-Request-ID"] == "abc-2"
    assert dict(headers)["Cache-Control"] == "no-store"
    assert dict(headers)["ETag"] == 'W/"1"'
