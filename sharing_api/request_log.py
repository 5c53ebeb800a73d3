"""One JSON log line per request, with the request id and the W3C trace context (issue 9, "The operator").

A line names the route by its URL rule (``/<orgnr>/fhir/Observation/<obs_id>``), never the raw path,
which can carry a national identity number; and it holds no header, query, body, token, proof or
measurement value (product.md §5, security-tests.md AUD-04). Fields: ``request_id``, ``trace_id``,
``span_id``, ``method``, ``route``, ``status``, ``latency_ms``, ``client_id``, ``tenant``.

Trace context (W3C Trace Context, https://www.w3.org/TR/trace-context/ §3.2): a valid incoming
``traceparent`` keeps its trace-id and its sampled flag, this request becomes a new span under it, and
the response carries ``traceparent`` with that span; an invalid or absent one is replaced by a fresh
trace.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from dataclasses import dataclass

from flask import Flask, Response, g, request
from pythonjsonlogger.orjson import OrjsonFormatter

__all__ = ["REQUEST_LOG", "TraceContext", "configure_json_logging", "install_request_log", "json_formatter"]

REQUEST_LOG = logging.getLogger("dho_share.requests")
_ORGNR = re.compile(r"[0-9]{9}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """This request's place in a distributed trace (W3C Trace Context §3.2)."""

    trace_id: str
    span_id: str
    flags: str

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @classmethod
    def continue_from(cls, header: str | None) -> TraceContext:
        """A new span under a valid ``traceparent``; a fresh trace when it is absent or invalid (§3.2.2:
        version ``ff`` and all-zero trace or parent ids are invalid; version 00 has exactly 55 chars)."""
        span = secrets.token_hex(8)
        found = _TRACEPARENT.fullmatch((header or "").strip())
        if found:
            version, trace_id, parent_id, flags = found.groups()
            valid = (
                version != "ff"
                and (version != "00" or len(header or "") == 55)
                and trace_id != "0" * 32
                and parent_id != "0" * 16
            )
            if valid:
                return cls(trace_id, span, "01" if int(flags, 16) & 1 else "00")
        return cls(secrets.token_hex(16), span, "00")


def install_request_log(app: Flask) -> None:
    """Hooks that start the trace context and write the request's log line when it is answered."""

    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()
        g.trace = TraceContext.continue_from(request.headers.get("traceparent"))

    @app.after_request
    def _finish(response: Response) -> Response:
        trace: TraceContext | None = g.get("trace")
        if trace is not None:
            response.headers["traceparent"] = trace.traceparent
        caller = g.get("caller")
        started = g.get("request_started")
        REQUEST_LOG.info(
            "request",
            extra={
                "request_id": g.get("correlation_id", ""),
                "trace_id": trace.trace_id if trace else None,
                "span_id": trace.span_id if trace else None,
                "method": request.method,
                "route": route_of_request(),
                "status": response.status_code,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3) if started else None,
                "client_id": getattr(caller, "client_id", None) or g.get("token_client_id"),
                "tenant": tenant_of_request(),
            },
        )
        return response


def tenant_of_request() -> str | None:
    """The tenant addressed: the resolved one, else the URL's ``<orgnr>`` only if it has an org.nr's
    nine digits (an 11-digit identity number put there is not logged)."""
    tenant = g.get("tenant")
    if tenant is not None and getattr(tenant, "orgnr", None):
        return str(tenant.orgnr)
    orgnr = g.get("orgnr")
    return orgnr if isinstance(orgnr, str) and _ORGNR.fullmatch(orgnr) else None


def route_of_request() -> str:
    """The URL rule that matched (``/<orgnr>/fhir/Observation/<obs_id>``), or ``unmatched``: never the
    raw path, which may hold an identity number."""
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def json_formatter() -> OrjsonFormatter:
    """A record as one JSON object: time, level, logger name, message and the record's ``extra``
    (python-json-logger's orjson formatter: the same fields, serialised by orjson, ~30 % cheaper)."""
    fields = "{asctime}{levelname}{name}{message}"
    return OrjsonFormatter(fields, style="{", rename_fields={"asctime": "time"})


def configure_json_logging(level: int = logging.INFO) -> None:
    """Write every ``dho_share`` log record as one JSON line on stderr (gunicorn workers, ``wsgi``).
    Idempotent: a second call in the same process adds no second handler."""
    logger = logging.getLogger("dho_share")
    if any(getattr(h, "dho_json", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter())
    handler.dho_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
