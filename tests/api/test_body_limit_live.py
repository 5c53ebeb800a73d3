"""Bodies over ``DHO_MAX_BODY_BYTES`` under each HTTP server ``dho-share serve`` offers (granian, gunicorn):
413 naming the limit in bytes, chunked or not, and the keep-alive connection is either closed or still
serves the next request correctly (issues 9, 13)."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import pytest

from sharing_api.body_limit import too_large_message
from sharing_api.serving import SERVERS
from sharing_api.settings import Settings
from tests.conftest import TENANT_A
from tests.http_wire import chunked, next_request_or_close, read_response
from tests.live_server import live_server

pytestmark = pytest.mark.slow  # runs the API server

LIMIT = 2048


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
        "DHO_AUDIT_KEY_PATH": str(settings.audit_key_path),
        "DHO_MAX_BODY_BYTES": str(LIMIT),
    }
    options = ("--server", request.param)
    with live_server(env, workers=1, log=tmp_path / "server.log", options=options) as base:
        yield base


def _body(size: int) -> bytes:
    return orjson.dumps({"resourceType": "Observation", "note": [{"text": "x" * size}]})


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_oversized_body_gets_413_with_the_limit_and_the_connection_stays_sane(
    app: object, server: str, framing: str
) -> None:
    host = server.split("//", 1)[1]
    port = int(host.rsplit(":", 1)[1])
    body = _body(4 * LIMIT)
    head = (
        f"POST /{TENANT_A}/fhir/Observation HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/fhir+json\r\n"
    )
    if framing == "chunked":
        request = head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)
    else:
        request = head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        response = read_response(sock)
        assert response is not None
        status, _, payload = response
        assert status == 413, payload
        outcome = orjson.loads(payload)
        assert outcome["issue"][0]["diagnostics"] == too_large_message(LIMIT)
        assert f"{LIMIT} bytes" in outcome["issue"][0]["diagnostics"]
        following = next_request_or_close(sock, host)
        # Closed is fine; if the connection is still open, the next request must be served as itself.
        assert following is None or following[0] == 200, following
