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
import os
import re
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

__all__ = [
    "REQUEST_LOG",
    "RequestStart",
    "TraceContext",
    "configure_json_logging",
    "json_formatter",
    "log_request",
    "route_of",
    "start_request",
]

REQUEST_LOG = logging.getLogger("dho_share.requests")
_ORGNR = re.compile(r"[0-9]{9}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_CORRELATION = re.compile(r"[A-Za-z0-9._-]{1,64}")


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
    def continue_from(cls, header: str | None, random: bytes | None = None) -> TraceContext:
        """A new span under a valid ``traceparent``; a fresh trace when it is absent or invalid (§3.2.2:
        version ``ff`` and all-zero trace or parent ids are invalid; version 00 has exactly 55 chars).
        ``random``: 24 fresh random bytes to take the span id (8) and a new trace id (16) from."""
        random = random if random is not None else os.urandom(24)
        span = random[:8].hex()
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
        return cls(random[8:24].hex(), span, "00")


@dataclass(frozen=True, slots=True)
class RequestStart:
    """What a request is given when it starts: its id (``X-Request-ID``) and its trace context."""

    correlation_id: str
    trace: TraceContext


def start_request(request_id: str | None, traceparent: str | None) -> RequestStart:
    """The request id (the client's ``X-Request-ID`` when it is 1-64 characters of ``[A-Za-z0-9._-]``,
    else a fresh UUID 4) and the trace context: the random parts drawn from the OS in one call."""
    random = os.urandom(40)
    given = request_id or ""
    correlation = given if _CORRELATION.fullmatch(given) else str(uuid.UUID(bytes=random[24:], version=4))
    return RequestStart(correlation, TraceContext.continue_from(traceparent, random[:24]))


def log_request(
    started: RequestStart | None,
    method: str,
    route: str,
    status: int,
    latency_ms: float | None,
    client_id: str | None,
    tenant: str | None,
) -> None:
    """The request's one log line (the module doc's fields), handed to the handlers directly: the
    same record ``REQUEST_LOG.info`` would make, without looking up the caller's source line."""
    if not REQUEST_LOG.isEnabledFor(logging.INFO):
        return
    trace = started.trace if started is not None else None
    extra = {
        "request_id": started.correlation_id if started is not None else "",
        "trace_id": trace.trace_id if trace else None,
        "span_id": trace.span_id if trace else None,
        "method": method,
        "route": route,
        "status": status,
        "latency_ms": latency_ms,
        "client_id": client_id,
        "tenant": tenant,
    }
    record = REQUEST_LOG.makeRecord(
        REQUEST_LOG.name, logging.INFO, __file__, 0, "request", (), None, "log_request", extra
    )
    REQUEST_LOG.handle(record)


def tenant_of(tenant: Any, orgnr: Any) -> str | None:
    """The tenant addressed: the resolved one, else the URL's ``<orgnr>`` only if it has an org.nr's
    nine digits (an 11-digit identity number put there is not logged)."""
    if tenant is not None and getattr(tenant, "orgnr", None):
        return str(tenant.orgnr)
    return orgnr if isinstance(orgnr, str) and _ORGNR.fullmatch(orgnr) else None


def route_of(rule: Any) -> str:
    """The URL rule that matched (``/<orgnr>/fhir/Observation/<obs_id>``), or ``unmatched``: never the
    raw path, which may hold an identity number."""
    return str(rule.rule) if rule is not None else "unmatched"


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
