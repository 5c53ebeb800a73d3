"""The headers every answer of the app carries: its ``X-Request-ID``, its span (``traceparent``, W3C
Trace Context §3.2) and the constant security headers, added at the WSGI edge.

Set on Flask's response object (``after_request``), each header was validated and its name looked up
in the list when set, and again when Werkzeug copied the headers for the WSGI server: about an eighth
of a ``GET /healthz``'s instructions for five headers (issue 12). Here they are appended to the list
handed to ``start_response``, after any header of the same name the route set has been dropped: the
values are constants and the request's own id and span (``request_log.start_request``: a checked
token or a UUID, and hex digits), none of which can hold a line break.

The request's start (its id and trace context) is made here, before the app runs, and kept in the
environ under :data:`REQUEST_START` for the app's ``before_request`` hook, which puts it on ``g``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sharing_api.request_log import RequestStart, start_request

SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Strict-Transport-Security", "max-age=31536000"),
)
"""Sent with every answer of the app (after its ``X-Request-ID``), replacing any value a route set."""
REQUEST_START = "dho.request_start"
"""The environ key of the request's :class:`~sharing_api.request_log.RequestStart`."""
_OURS = frozenset(name.lower() for name in ("X-Request-ID", "traceparent", *dict(SECURITY_HEADERS)))

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def request_start(environ: dict[str, Any]) -> RequestStart:
    """The request's start: the one :class:`ResponseHeaders` made, or (an app called without it, as
    a test's request context is) a new one from the same headers."""
    start: RequestStart | None = environ.get(REQUEST_START)
    if start is None:
        start = environ[REQUEST_START] = start_request(
            environ.get("HTTP_X_REQUEST_ID"), environ.get("HTTP_TRACEPARENT")
        )
    return start


class ResponseHeaders:
    """WSGI middleware: the request's start made before ``app`` runs; the headers of the module doc
    on every answer ``app`` gives."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start = request_start(environ)
        ours = [
            ("X-Request-ID", start.correlation_id),
            *SECURITY_HEADERS,
            ("traceparent", start.trace.traceparent),
        ]

        def start_with_ours(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            kept = [header for header in headers if header[0].lower() not in _OURS]
            return start_response(status, kept + ours, exc_info)

        return self._app(environ, start_with_ours)
