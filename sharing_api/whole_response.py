"""Answers whose body is already in memory go to the WSGI server as one list, head and body together.

Werkzeug hands every response to the server as an iterator (``ClosingIterator``), and granian sends an
iterator's head at once and pulls the body from it afterwards, chunk by chunk under the GIL
(``response_iter``); only a ``list`` is written whole (``response_bytes``). A node killed between the
two writes left nginx with a head it had already passed on and half a body: the client got a broken
answer instead of the 503 nginx gives for a node that dies before it answers (seen once in the
multi-node test's node kill). A list also spares the server the iterator's round trips.

Bodies that are streamed stay streamed: a generator (the audit export) and ``direct_passthrough``
(static files) keep Werkzeug's iterator.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Response


class WholeResponse(Response):
    """Flask's response class for the app (``Flask.response_class``; ``make_response`` turns a
    view's plain :class:`flask.Response` into this one)."""

    def get_app_iter(self, environ: Any) -> Iterable[bytes]:
        app_iter = super().get_app_iter(environ)
        if not self.is_sequence or self.direct_passthrough:
            return app_iter
        try:
            return list(app_iter)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
