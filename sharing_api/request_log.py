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
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter, orjson_default

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
    """The request's one log line (the module doc's fields). Under :func:`configure_json_logging` alone
    the line is written by :func:`_write_line`; with any other setup (tests' ``caplog``, an operator's
    own handlers) it is the record ``REQUEST_LOG.info`` would make, handed to the handlers."""
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
    handler = _json_handler_alone()
    if handler is not None:
        _write_line(handler, extra)
        return
    record = REQUEST_LOG.makeRecord(
        REQUEST_LOG.name, logging.INFO, __file__, 0, "request", (), None, "log_request", extra
    )
    REQUEST_LOG.handle(record)


def _json_handler_alone() -> logging.StreamHandler[Any] | None:
    """The handler of :func:`configure_json_logging` when it is the only place a request line goes: no
    filter or handler on ``REQUEST_LOG``, none on ``dho_share`` but that one (unfiltered, at INFO or
    below, with its own formatter), and ``dho_share`` not propagating. Then logging would do nothing
    with the record but have that handler format and write it."""
    log = REQUEST_LOG
    parent = log.parent
    if log.handlers or log.filters or not log.propagate or parent is None:
        return None
    if parent.filters or parent.propagate or parent.disabled or len(parent.handlers) != 1:
        return None
    handler = parent.handlers[0]
    formatter = handler.formatter
    if not getattr(formatter, "dho_json", False) or handler.filters or handler.level > logging.INFO:
        return None
    assert isinstance(handler, logging.StreamHandler)
    return handler


_second: tuple[int, str] = (-1, "")
"""The last whole second :func:`_asctime` formatted, and its text (one ``strftime`` per second)."""


def _asctime(formatter: logging.Formatter, now: float) -> str:
    """``formatter.formatTime`` of a record made at ``now`` (by default local time, ``,`` and the
    milliseconds: ``2026-12-03 13:11:10,123``)."""
    global _second
    whole = int(now)
    second = _second  # read once: another thread may replace it meanwhile (gthread workers)
    if second[0] != whole:
        second = _second = (whole, time.strftime(formatter.default_time_format, formatter.converter(whole)))
    msec_format = formatter.default_msec_format
    return msec_format % (second[1], int((now - whole) * 1000)) if msec_format else second[1]


def _write_line(handler: logging.StreamHandler[Any], extra: dict[str, Any]) -> None:
    """What ``handler.handle`` of the request's record writes, without the record: the fields of
    :func:`json_formatter` (``time``, ``levelname``, ``name``, ``message``) and then ``extra``, one
    JSON line, flushed (tests/api/test_request_log.py compares the two)."""
    assert handler.formatter is not None  # _json_handler_alone's
    now = _asctime(handler.formatter, time.time())
    line = {"time": now, "levelname": "INFO", "name": REQUEST_LOG.name, "message": "request"}
    line.update(extra)
    text = orjson.dumps(line, default=orjson_default, option=orjson.OPT_NON_STR_KEYS).decode()
    handler.acquire()
    try:
        handler.stream.write(text + handler.terminator)
        handler.flush()
    except RecursionError:
        raise
    except Exception:  # as ``StreamHandler.emit``: report on stderr, never fail the request
        handler.handleError(
            REQUEST_LOG.makeRecord(
                REQUEST_LOG.name, logging.INFO, __file__, 0, "request", (), None, "log_request", extra
            )
        )
    finally:
        handler.release()


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
    formatter = OrjsonFormatter(fields, style="{", rename_fields={"asctime": "time"})
    formatter.dho_json = True  # type: ignore[attr-defined]  # what log_request's direct line writes
    return formatter


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
