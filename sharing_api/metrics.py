"""Prometheus metrics (issue 9, "The operator"), served at ``GET /metrics`` in the text format.

Labels never carry request data: routes are URL rules (``/<orgnr>/fhir/Observation/<obs_id>``), methods
the ones HTTP defines (any other is ``other``), reasons the sharing policy's reason names and OAuth
error codes (RFC 6749 §5.2), never identifiers: so every label set is bounded.

Under granian or gunicorn each worker is its own process: ``dho-share serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode), every worker writes its values
there, and a scrape of any worker sums them over all (gunicorn's ``child_exit`` marks a dead worker's
files; granian has no such hook, which matters only to ``live*`` gauges, and there are none).
Without it (one process, tests) each app has a registry of its own.

``/metrics`` is served only with ``DHO_METRICS_TOKEN`` set, to ``Authorization: Bearer <that token>``
(compared in constant time); without the setting it answers 404, with a wrong or missing token 401.
"""

from __future__ import annotations

import hmac
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from consent.policy import Decision

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Methods labelled by name (RFC 9110 §9.3 and PATCH, RFC 5789); any other is labelled ``OTHER_METHOD``.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
OTHER_METHOD = "other"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The process's metrics. In multiprocess mode they are registered nowhere (the collector reads the
    shared directory); otherwise in this object's own ``registry``."""

    def __init__(self) -> None:
        # prometheus-client picks its value store when first imported; the CLI may import it before
        # ``serve`` sets the directory, so choose again now (values.ValueClass is read at each metric).
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        reg = None if multiprocess_dir() else self.registry
        self.requests = Counter(
            "dho_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=reg
        )
        self.latency = Histogram(
            "dho_http_request_duration_seconds",
            "time to answer an HTTP request",
            ["route", "method", "status"],
            registry=reg,
        )
        self.tokens = Counter(
            "dho_tokens",
            "token requests by outcome (issued, refused) and OAuth error",
            ["outcome", "reason"],
            registry=reg,
        )
        self.decisions = Counter(
            "dho_sharing_decisions",
            "sharing decisions by outcome and policy reason",
            ["outcome", "reason"],
            registry=reg,
        )
        self.audit_append = Histogram(
            "dho_audit_append_duration_seconds",
            "time to append and commit one request's audit record",
            registry=reg,
        )
        self.sequenced = Counter("dho_audit_sequenced_entries", "audit entries given an index", registry=reg)
        self.sequencer_run = Gauge(
            "dho_audit_sequencer_last_run_timestamp_seconds",
            "when a sequencer last finished a batch (lag: time() minus this)",
            registry=reg,
            multiprocess_mode="max",
        )
        self.backend_errors = Counter(
            "dho_backend_errors", "requests failed by an unavailable backend", ["backend"], registry=reg
        )
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # The method is the client's: any token is let through to a 405, and each distinct one would
        # be a series kept for the life of the worker (here and in the multiprocess files). Label
        # only the methods HTTP defines; routes are URL rules and statuses ours, so the set is bounded.
        if method not in HTTP_METHODS:
            method = OTHER_METHOD
        series = self._request_series.get((route, method, status))
        if series is None:
            # The label children of one (route, method, status), looked up once: ``labels()`` takes
            # a lock and builds its key on every call.
            series = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method, str(status)),
            )
            self._request_series[(route, method, status)] = series
        series[0].inc()
        series[1].observe(seconds)

    def observe_decision(self, decision: Decision) -> None:
        """``AccessPolicy``'s observer: one count per reason of the decision (policy.Reason names)."""
        outcome = "permit" if decision.permit else "deny"
        for reason in decision.reasons or ("none",):
            self.decisions.labels(outcome, str(reason)).inc()

    def observe_token(self, issued: bool, error: str) -> None:
        """An issued token, or a refusal with its OAuth error code (RFC 6749 §5.2)."""
        self.tokens.labels("issued" if issued else "refused", "" if issued else error).inc()

    def observe_sequencer(self, what: str, n: int) -> None:
        """``sequencer.run``'s ``observe`` callback."""
        if what == "done":
            self.sequenced.inc(n)
            self.sequencer_run.set(time.time())

    @contextmanager
    def timing_audit_append(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.audit_append.observe(time.perf_counter() - started)

    def exposition(self) -> bytes:
        """The text format over every worker (multiprocess) or this process."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def use_multiprocess_dir() -> str:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` to a fresh empty directory unless the operator chose one (then it
    must be emptied between runs, e.g. a tmpfs or systemd's ``RuntimeDirectory``); returns it."""
    directory = multiprocess_dir()
    if directory is None:
        directory = tempfile.mkdtemp(prefix="dho-share-metrics-")
        os.environ[MULTIPROC_ENV] = directory
    return directory


def worker_exited(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: a dead worker's live gauges stop counting."""
    mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def authorised(header: str | None, token: str) -> bool:
    """Whether ``Authorization`` is ``Bearer <token>``, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
