"""The request-body limit at the WSGI edge: 413 for any body over ``DHO_MAX_BODY_BYTES``, chunked or not.

Issue 13 ("a chunked body over DHO_MAX_BODY_BYTES gets 400 'not valid JSON'") and issue 9 (a 413 must
not break the next request on a keep-alive connection; the message states the limit in bytes).

* ``Content-Length`` over the limit: 413 before the app runs, nothing read.
* ``Transfer-Encoding: chunked`` (no length): at most ``limit + 1`` bytes are read. Over the limit:
  413. Within it: the app gets the bytes as an ordinary body with ``CONTENT_LENGTH`` set, so every WSGI
  server behaves the same (Werkzeug hands an app an *empty* stream for a chunked body unless the server
  sets ``wsgi.input_terminated``).
* Every 413 says ``Connection: close``. Servers that honour it close; gunicorn (which treats the header
  as hop-by-hop) drains up to 64 KiB of the unread body and otherwise closes the connection itself, so
  the leftover body is never parsed as the next request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any

import orjson

from sharing_api.errors import Issue, operation_outcome

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def too_large_message(limit: int) -> str:
    return f"the request body is larger than the limit of {limit} bytes (DHO_MAX_BODY_BYTES)"


class BodyLimit:
    """WSGI middleware enforcing ``limit`` bytes of request body (see the module doc)."""

    def __init__(self, app: WsgiApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        if length.strip().isdigit():
            if int(length) > self._limit:
                return self._refuse(environ, start_response)
            return self._app(environ, start_response)
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            stream = environ["wsgi.input"]
            data = stream.read(self._limit + 1)
            if len(data) > self._limit:
                return self._refuse(environ, start_response)
            environ["wsgi.input"] = BytesIO(data)
            environ["CONTENT_LENGTH"] = str(len(data))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["wsgi.input_terminated"] = True
        return self._app(environ, start_response)

    def _refuse(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = orjson.dumps(operation_outcome([Issue(too_large_message(self._limit), None, "too-costly")]))
        start_response(
            "413 Content Too Large",
            [
                ("Content-Type", "application/fhir+json"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [body]
