"""Shared pieces of the security tests: a published measurement, a real token for it, and probes.

A :class:`Probe` is one protected request (a read of the published observation, or a write of a new
one) with everything a test needs to break exactly one thing: the real access token the token endpoint
issued, a way to re-sign its claims with the token service's own signing key (so a forged token differs
from a valid one in the one thing under test), fresh DPoP proofs, and the checks every refusal must pass
(status, challenge, no PHI, no state change) plus the OIDF-style sanity step afterwards.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from joserfc.jwk import ECKey, Key
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from auth.dpop import DPOP_ALGS
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store.schema import audit_entries, observations
from tests.api_client import ApiClient
from tests.auth import factories
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import free_port
from tests.prerequisites import missing

BASE = f"/{TENANT_A}/fhir"
#: Distinctive measurement values: a refusal or a log line that contains one of them leaks a measurement.
READ_VALUE = 58.417
WRITE_VALUE = 63.829


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (unverified) header and claims of a compact JWS."""
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def row_count(services: Services) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(observations)).scalar() or 0)


def audit_failures(services: Services) -> int:
    """How many AuditEvents with a failure outcome (``outcome`` != 0) the audit log holds."""
    with services.engine.connect() as conn:
        query = select(func.count()).select_from(audit_entries).where(audit_entries.c.outcome != "0")
        return int(conn.execute(query).scalar() or 0)


@dataclass(frozen=True)
class Snapshot:
    """The state a refused request must not change (stored observations), and the audit count it must
    raise by one."""

    rows: int
    audit_failures: int


def snapshot(services: Services) -> Snapshot:
    return Snapshot(row_count(services), audit_failures(services))


def server_env(settings: Settings) -> dict[str, str]:
    """The environment of a ``live_server`` sharing the test's database, Redis and keys."""
    return {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
        "DHO_AUDIT_KEY_PATH": str(settings.audit_key_path),
    }


def challenge(response: TestResponse) -> str:
    return response.headers.get("WWW-Authenticate", "")


def challenge_params(response: TestResponse) -> dict[str, str]:
    """``error``, ``algs`` ... of a ``WWW-Authenticate: DPoP k="v", ...`` challenge (values quoted)."""
    _, _, rest = challenge(response).partition(" ")
    params: dict[str, str] = {}
    for part in rest.split('", '):
        name, _, value = part.partition("=")
        params[name.strip()] = value.strip().strip('"')
    return params


@dataclass
class Probe:
    """One protected request and everything needed to break it one way at a time."""

    kind: str  # "read" or "write"
    client: ApiClient
    services: Services
    token: str = field(repr=False)
    path: str
    method: str
    patient: str
    secrets: tuple[str, ...]  # strings that must never appear in a refusal (fnr, measurement value)
    body: dict[str, Any] | None = None

    @property
    def key(self) -> ECKey:
        """The DPoP key the real token is bound to."""
        return self.client.dpop_key

    @property
    def jkt(self) -> str:
        return str(self.key.thumbprint())

    @property
    def url(self) -> str:
        return self.client.public + self.path.split("?", 1)[0]

    # -- building blocks -----------------------------------------------------------------------------

    def proof(self, token: str | None = None, *, key: Key | None = None, **changes: Any) -> str:
        """A fresh, valid proof for this request and ``token`` (default: the real one), with ``changes``
        passed to :func:`tests.auth.factories.make_proof`."""
        args: dict[str, Any] = {
            "method": self.method,
            "url": self.url,
            "iat": int(time.time()),
            "access_token": token if token is not None else self.token,
        }
        args.update(changes)
        return factories.make_proof(key or self.key, **args)

    def headers(self, token: str | None = None, proof: str | None = None) -> dict[str, str]:
        token = token if token is not None else self.token
        return {"Authorization": f"DPoP {token}", "DPoP": proof if proof is not None else self.proof(token)}

    def send(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        path: str | None = None,
        method: str | None = None,
        **kwargs: Any,
    ) -> TestResponse:
        """The request with exactly ``headers`` (nothing added)."""
        if self.body is not None and "json" not in kwargs and "data" not in kwargs:
            kwargs["json"] = self.fresh_body()
        # Straight to Flask's test client: ApiClient.open() folds headers into a dict, which would merge
        # repeated headers (AUTH-16, DPOP-02).
        return self.client.flask.open(
            path or self.path,
            method=method or self.method,
            headers=list(headers.items()) if isinstance(headers, Mapping) else list(headers),
            **kwargs,
        )

    def send_with(self, token: str) -> TestResponse:
        """``token`` with a valid proof for it (so only the token is under test)."""
        return self.send(self.headers(token))

    def fresh_body(self) -> dict[str, Any]:
        """A new observation (new identifier) of the probe's patient, for a write."""
        return heart_rate(self.patient, value=WRITE_VALUE, identifier=f"sec-{uuid.uuid4().hex}")

    # -- forged tokens -------------------------------------------------------------------------------

    def claims(self) -> dict[str, Any]:
        return jwt_parts(self.token)[1]

    def mint(
        self,
        *,
        header: Mapping[str, Any] | None = None,
        drop_header: Iterable[str] = (),
        drop: Iterable[str] = (),
        key: Key | None = None,
        alg: str | None = None,
        **claims: Any,
    ) -> str:
        """The real token's claims (fresh ``jti``) changed by ``claims``/``drop``, signed by the token
        service's own active key unless ``key`` is given. With no changes, a token the API accepts."""
        keyset = self.services.token_service.keyset
        h: dict[str, Any] = {"typ": "at+jwt", "alg": "ES256", "kid": keyset.kid}
        h.update(header or {})
        for name in drop_header:
            h.pop(name, None)
        c = {**self.claims(), "jti": uuid.uuid4().hex, **claims}
        for name in drop:
            c.pop(name, None)
        return factories.sign(h, c, key or keyset.active, alg=alg or str(h.get("alg", "ES256")))

    # -- checks --------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return snapshot(self.services)

    def assert_refused(
        self,
        response: TestResponse,
        *,
        status: int | tuple[int, ...] = 401,
        error: str | None = None,
        before: Snapshot | None = None,
    ) -> None:
        """The default pass criteria of a negative test (security-tests.md): status; a ``DPoP``
        challenge with ``error`` (and ``algs`` on 401); an OperationOutcome without PHI; and, given the
        ``before`` snapshot, no stored data changed and one failure AuditEvent recorded."""
        statuses = status if isinstance(status, tuple) else (status,)
        assert response.status_code in statuses, (response.status_code, response.get_data(as_text=True))
        if response.status_code in (401, 403):
            assert challenge(response).startswith("DPoP "), challenge(response)
            params = challenge_params(response)
            if error is not None:
                assert params.get("error") == error, challenge(response)
            if response.status_code == 401:
                assert params.get("algs", "").split() == list(DPOP_ALGS)
        body = response.get_data(as_text=True)
        assert response.get_json(silent=True) is None or response.get_json()["resourceType"] in (
            "OperationOutcome",
        ), body
        for secret in self.secrets:
            assert secret not in body, f"{secret!r} leaked in a refusal"
        assert "valueQuantity" not in body
        if before is not None:
            assert row_count(self.services) == before.rows, "a refused request changed the stored data"
            if response.status_code in (401, 403):
                recorded = audit_failures(self.services) - before.audit_failures
                assert recorded == 1, f"{recorded} failure AuditEvents recorded for one refusal"

    def assert_still_works(self) -> TestResponse:
        """The sanity step: the same valid token with a fresh proof is still accepted."""
        response = self.send(self.headers())
        expected = 201 if self.kind == "write" else 200
        assert response.status_code == expected, response.get_data(as_text=True)
        return response


@dataclass
class Scene:
    """A measurement published by tenant A's system, and a hospital allowed to read it."""

    client: ApiClient
    services: Services
    patient: str
    obs_id: str
    read: Probe
    write: Probe

    def probe(self, kind: str) -> Probe:
        return self.read if kind == "read" else self.write


def make_scene(client: ApiClient, services: Services) -> Scene:
    patient = fnr()
    created = client.post(
        f"{BASE}/Observation", json=heart_rate(patient, value=READ_VALUE, identifier="sec-read")
    )
    assert created.status_code == 201, created.get_json()
    obs_id = created.get_json()["id"]
    secrets = (patient, str(READ_VALUE), str(WRITE_VALUE))
    reader = client.token(client.parties["hospital"], (FNR, patient))
    writer = client.token(client.parties[f"publisher-{TENANT_A}"])
    read = Probe("read", client, services, reader, f"{BASE}/Observation/{obs_id}", "GET", patient, secrets)
    write = Probe("write", client, services, writer, f"{BASE}/Observation", "POST", patient, secrets, body={})
    return Scene(client, services, patient, obs_id, read, write)


class RedisServer:
    """A private ``redis-server`` on a free loopback port, which a test may stop and start again on the
    same port. No persistence; ``noeviction`` as production requires for replay state (REL-02)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if shutil.which("redis-server") is None:
            missing("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=0.2).ping():
                    return self
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
