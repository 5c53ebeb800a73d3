"""The guard reads the ``Authorization`` and ``DPoP`` headers in one pass over the WSGI environ
(issue 12); it must find exactly what werkzeug's ``request.headers.getlist`` finds, so that the
"exactly one of each" rules (AUTH-16, DPOP-02) judge the same values."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.datastructures import EnvironHeaders
from werkzeug.test import EnvironBuilder

from sharing_api.routes.guard import credentials


def built(headers: list[tuple[str, str]]) -> dict[str, Any]:
    builder = EnvironBuilder(path="/t/fhir/Observation/1", headers=headers)
    try:
        return builder.get_environ()
    finally:
        builder.close()


ENVIRONS = {
    "none": built([]),
    "one of each": built([("Authorization", "DPoP a.b.c"), ("DPoP", "x.y.z"), ("Accept", "*/*")]),
    "lower-case names": built([("authorization", "DPoP a.b.c"), ("dpop", "x.y.z")]),
    "only a proof": built([("DPoP", "x.y.z")]),
    "look-alike names": built([("X-Authorization", "a"), ("DPoP-Nonce", "n"), ("Authorization-2", "b")]),
    "underscore spellings": {"HTTP_D_POP": "x", "HTTP_AUTHORI_ZATION": "y", "REQUEST_METHOD": "GET"},
    "keys not upper-cased": {
        "HTTP_Authorization": "DPoP a",
        "HTTP_AUTHORIZATION": "DPoP b",
        "HTTP_dPoP": "p",
    },
    "CGI variables": {"AUTH_TYPE": "x", "CONTENT_TYPE": "text/plain", "HTTP_DPOP": "p", "PATH_INFO": "/"},
    "empty values": {"HTTP_AUTHORIZATION": "", "HTTP_DPOP": ""},
}


@pytest.mark.parametrize("environ", ENVIRONS.values(), ids=ENVIRONS.keys())
def test_credentials_are_what_werkzeug_reads(environ: dict[str, Any]) -> None:
    headers = EnvironHeaders(environ)
    assert credentials(environ) == (headers.getlist("Authorization"), headers.getlist("DPoP"))
