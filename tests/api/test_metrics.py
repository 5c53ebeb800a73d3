"""``GET /metrics`` (Prometheus text format; issue 9, "The operator"): protected by DHO_METRICS_TOKEN,
counters that move with requests, labelled by URL rule, and summed over the server's workers."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from consent.policy import Reason
from sharing_api.app import create_app
from sharing_api.fhir.identifiers import FNR
from sharing_api.metrics import Metrics
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.api_client import ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import live_server
from tests.security.helpers import server_env

BASE = f"/{TENANT_A}/fhir"
TOKEN = secrets.token_urlsafe(32)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rule_of(app: Flask, method: str, path: str) -> str:
    """The URL rule Flask matches: expected label values come from the app's url_map."""
    rule, _ = app.url_map.bind("localhost").match(path, method, return_rule=True)
    return str(rule.rule)


@pytest.fixture
def metered(app: Flask, settings: Settings) -> Iterator[tuple[Flask, ApiClient]]:
    """A second app on the fixture's database (tenants, agreements) with a metrics token configured."""
    metered = create_app(settings.model_copy(update={"metrics_token": SecretStr(TOKEN)}))
    svc: Services = metered.extensions["dho"]
    yield metered, ApiClient(metered.test_client(), svc)
    svc.engine.dispose()


def scrape(client: ApiClient) -> Samples:
    response = client.flask.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def test_metrics_are_not_served_without_a_configured_token(client: ApiClient) -> None:
    assert client.flask.get("/metrics").status_code == 404
    assert client.flask.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 404


REFUSED_AUTHORIZATION = {
    "missing": None,
    "wrong token": "Bearer wrong-token",
    "basic scheme": f"Basic {TOKEN}",
    "token plus one": f"Bearer {TOKEN}x",
    "no scheme": TOKEN,
}


@pytest.mark.parametrize("kind", sorted(REFUSED_AUTHORIZATION))  # ids stable across xdist workers
def test_unauthenticated_scrape_is_refused(metered: tuple[Flask, ApiClient], kind: str) -> None:
    _, client = metered
    header = REFUSED_AUTHORIZATION[kind]
    headers = {"Authorization": header} if header is not None else {}
    response = client.flask.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert "dho_http_requests" not in response.get_data(as_text=True)


def test_counters_move_with_requests(metered: tuple[Flask, ApiClient]) -> None:
    app, client = metered
    before = scrape(client)
    patient = fnr()
    publish_path, search_path = f"{BASE}/Observation", f"{BASE}/Observation/_search"
    assert client.post(publish_path, json=heart_rate(patient, value=77.0)).status_code == 201
    form = {"patient.identifier": f"{FNR}|{patient}"}
    assert client.post(search_path, data=form).status_code == 200
    refused = client.flask.post("/connect/token", data={"grant_type": "client_credentials"})
    assert refused.status_code in (400, 401)
    error = refused.get_json()["error"]
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    publish = {"route": rule_of(app, "POST", publish_path), "method": "POST", "status": "201"}
    search = {"route": rule_of(app, "POST", search_path), "method": "POST", "status": "200"}
    assert moved("dho_http_requests_total", **publish) == 1
    assert moved("dho_http_requests_total", **search) == 1
    assert moved("dho_http_request_duration_seconds_count", **search) == 1
    assert moved("dho_tokens_total", outcome="issued", reason="") == 2  # writer and reader
    assert moved("dho_tokens_total", outcome="refused", reason=error) == 1
    decisions = {
        dict(labels)["reason"]: n - before.get((name, labels), 0.0)
        for (name, labels), n in after.items()
        if name == "dho_sharing_decisions_total" and dict(labels)["outcome"] == "permit"
    }
    assert sum(decisions.values()) >= 1, "the search's permit was not counted"
    assert set(decisions) <= {str(r) for r in Reason}
    assert moved("dho_audit_append_duration_seconds_count") >= 3  # 2 tokens, the write, the search
    text = client.flask.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
    assert patient not in text
    assert "77.0" not in text


def test_each_series_counts_every_request_it_is_given() -> None:
    """The label children of a (route, method, status) are kept: the second observation of a series
    still counts, and another status is a series of its own."""
    metrics = Metrics()
    for status, seconds in ((200, 0.01), (200, 0.02), (404, 0.03)):
        metrics.observe_request("/<orgnr>/fhir/Observation", "GET", status, seconds)
    samples = parse(metrics.exposition().decode())
    ok = {"route": "/<orgnr>/fhir/Observation", "method": "GET", "status": "200"}
    assert value(samples, "dho_http_requests_total", **ok) == 2
    assert value(samples, "dho_http_request_duration_seconds_count", **ok) == 2
    assert value(samples, "dho_http_request_duration_seconds_sum", **ok) == pytest.approx(0.03)
    assert value(samples, "dho_http_requests_total", **{**ok, "status": "404"}) == 1


def test_sequencer_runs_are_counted(metered: tuple[Flask, ApiClient]) -> None:
    app, client = metered
    assert client.post(f"{BASE}/Observation", json=heart_rate(fnr())).status_code == 201
    metrics = app.extensions["dho_metrics"]
    services: Services = app.extensions["dho"]
    from sharing_api.audit import sequencer

    before = scrape(client)
    sequenced = sequencer.run(services.audit_log, observe=metrics.observe_sequencer)
    after = scrape(client)
    assert sequenced >= 1
    moved = value(after, "dho_audit_sequenced_entries_total") - value(
        before, "dho_audit_sequenced_entries_total"
    )
    assert moved == sequenced
    assert value(after, "dho_audit_sequencer_last_run_timestamp_seconds") > 0


def _healthz_count(samples: Samples, route: str) -> float:
    return value(samples, "dho_http_requests_total", route=route, method="GET", status="200")


@pytest.mark.slow
def test_server_workers_are_summed(app: Flask, settings: Settings, tmp_path: Path) -> None:
    """Two workers each count what they served (one file per process in PROMETHEUS_MULTIPROC_DIR); a
    scrape answered by either worker reports the sum."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {**server_env(settings), "DHO_METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    route = rule_of(app, "GET", "/healthz")
    with live_server(env, workers=2) as base:
        served_by: dict[str, float] = {}
        sent = 0
        while sent < 400 and len([n for n in served_by.values() if n > 0]) < 2:
            for _ in range(10):  # a fresh connection each: the kernel hands them to either worker
                assert requests.get(f"{base}/healthz", headers={"Connection": "close"}, timeout=10).ok
                sent += 1
            served_by = {
                path.name: _healthz_count(_file_samples(path), route)
                for path in directory.glob("counter_*.db")
            }
        assert len([n for n in served_by.values() if n > 0]) >= 2, "one worker served every request"
        assert sum(served_by.values()) == sent
        for _ in range(4):
            answer = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            assert answer.status_code == 200
            assert _healthz_count(parse(answer.text), route) == sent
        refused = requests.get(f"{base}/metrics", timeout=10)
        assert refused.status_code == 401


def _file_samples(path: Path) -> Samples:
    """One worker's counters, read from its own file."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for metric in MultiProcessCollector.merge([os.fspath(path)], accumulate=True)  # type: ignore[no-untyped-call]
        for s in metric.samples
    }


def test_methods_a_client_makes_up_share_one_series(metered: tuple[Flask, ApiClient]) -> None:
    """Any method token reaches the app (and is answered 405 or 404); each distinct one must not become a
    series the worker keeps for its lifetime (memory, and the scrape's size): they are counted as
    ``other``, and answered exactly as before."""
    _, client = metered
    scrape(client)  # the scrape's own series exists from here on
    before = scrape(client)
    path = f"{BASE}/Observation"
    for n in range(300):
        made_up = f"X{n:04d}"
        response = client.flask.open(path, method=made_up)
        assert response.status_code == 405
        outcome = response.get_json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["diagnostics"] == f"{made_up} is not supported on {path}"
        assert client.flask.open(f"/no-such-{n}", method=made_up).status_code == 404
    after = scrape(client)
    series = [k for k in after if k[0] == "dho_http_requests_total"]
    assert len(series) - len([k for k in before if k[0] == "dho_http_requests_total"]) <= 2
    assert not any(dict(labels)["method"].startswith("X") for _, labels in series)
    other = {"route": "unmatched", "method": "other"}
    assert value(after, "dho_http_requests_total", **other, status="405") == 300
    assert value(after, "dho_http_requests_total", **other, status="404") == 300
    assert client.flask.delete(path).status_code == 405  # a method HTTP defines keeps its own label
    delete = {"route": "unmatched", "method": "DELETE", "status": "405"}
    assert value(scrape(client), "dho_http_requests_total", **delete) == 1
