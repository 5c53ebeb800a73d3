"""A subscriber's rest-hook endpoint on loopback, as a receiving system would run it.

Every POST is checked the way a subscriber must: the access token's signature against the issuer's
JWKS (fetched from ``/.well-known/openid-configuration/jwks`` beforehand), its ``typ``, ``iss``,
``aud`` (this endpoint), ``exp`` and ``cnf.jkt``; and the DPoP proof in full (RFC 9449 §4.3: ``htm``,
``htu``, ``ath``, ``iat``, single use, the key whose thumbprint is ``cnf.jkt``). A notification that
fails a check is answered 401 and recorded as refused. Statuses to answer can be queued (e.g. 500s).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from joserfc import jwt
from joserfc.jwk import KeySet

from auth.dpop import verify_proof
from auth.replay import InMemoryReplayCache


@dataclass
class Received:
    body: dict[str, Any]
    claims: dict[str, Any]
    proof_jkt: str


@dataclass
class Receiver:
    jwks: dict[str, Any]
    issuer: str
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    answers: deque[int] = field(default_factory=deque)
    """Statuses to answer verified notifications with, in order; 200 once empty."""
    server: ThreadingHTTPServer | None = None
    replay: InMemoryReplayCache = field(default_factory=InMemoryReplayCache)
    arrived: threading.Event = field(default_factory=threading.Event)
    """Set when a verified notification has been received."""
    """One cache for every proof this endpoint sees: a replayed proof is refused."""

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/notify"

    def check(self, headers: Any) -> tuple[dict[str, Any], str]:
        authorization = headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme != "DPoP" or not token:
            raise ValueError("no DPoP token")
        decoded = jwt.decode(token, KeySet.import_key_set(self.jwks), algorithms=["ES256"])
        if decoded.header.get("typ") != "at+jwt":
            raise ValueError("typ")
        claims = dict(decoded.claims)
        now = time.time()
        if claims.get("iss") != self.issuer or claims.get("aud") != self.endpoint or claims["exp"] <= now:
            raise ValueError("iss, aud or exp")
        jkt = claims["cnf"]["jkt"]
        proof = verify_proof(
            headers.get("DPoP", ""),
            method="POST",
            url=self.endpoint,
            replay=self.replay,
            now=now,
            access_token=token,
            expected_jkt=jkt,
        )
        return claims, proof.jkt


def stop(receiver: Receiver) -> None:
    assert receiver.server is not None
    receiver.server.shutdown()
    receiver.server.server_close()


def start(jwks: dict[str, Any], issuer: str) -> Receiver:
    receiver = Receiver(jwks, issuer)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                claims, jkt = receiver.check(self.headers)
            except Exception as exc:  # any failed check is a refusal, recorded for the test
                receiver.refused.append(f"{type(exc).__name__}: {exc}")
                self.send_response(401)
                self.end_headers()
                return
            receiver.received.append(Received(orjson.loads(body), claims, jkt))
            self.send_response(receiver.answers.popleft() if receiver.answers else 200)
            self.end_headers()
            receiver.arrived.set()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads what was received."""

    receiver.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    return receiver
