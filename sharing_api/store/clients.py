"""The client registry: client systems, the organisation each belongs to, its public keys and scopes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, insert, select, update

from sharing_api.fhir.identifiers import is_valid_orgnr
from sharing_api.store.schema import clients

_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    orgnr: str
    point_of_care: str | None
    name: str
    jwks: dict[str, Any]
    scopes: frozenset[str]
    enabled: bool


def check_public_jwks(jwks: Any) -> dict[str, Any]:
    """A JWKS of public, asymmetric keys (EC, OKP or RSA >= 2048 bits); ``ValueError`` otherwise."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("a JWKS is an object with a non-empty 'keys' list")
    for i, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict):
            raise ValueError(f"keys[{i}] is not an object")
        if any(m in key for m in _PRIVATE_MEMBERS):
            raise ValueError(f"keys[{i}] holds private or symmetric key material; register public keys only")
        if key.get("kty") not in ("EC", "OKP", "RSA"):
            raise ValueError(f"keys[{i}] has kty {key.get('kty')!r}; use EC, OKP or RSA")
        if key.get("kty") == "RSA":
            from joserfc.util import urlsafe_b64decode

            if len(urlsafe_b64decode(str(key.get("n", "")).encode())) * 8 < 2048:
                raise ValueError(f"keys[{i}] is an RSA key below 2048 bits")
    return jwks


_BY_ID = select(clients).where(clients.c.client_id == bindparam("client_id"))
"""A client by id, built once: every token request looks its client up (issue 12)."""

CLIENT_RECORD_MAX_AGE = 1.0
"""Seconds the token endpoint may use a client record this process read earlier (issue 12).

A change made through this process's registry (``add``, ``set_enabled``) takes effect at once; one
made elsewhere (the ``dho-share clients`` command, another worker or node) within this many seconds:
for up to one second after ``clients disable`` or a key rotation, a worker that read the client just
before may still issue a token to it. Tokens already issued stay valid until they expire or are
revoked anyway, so a second changes nothing an operator can rely on; it saves a database round trip
on every token a busy client requests (a hospital asks for one per patient)."""


class ClientRegistry:
    """Client systems in SQL; lookups are what the token service's client authentication needs.

    :param clock: monotonic seconds, for the age of records read by ``get(..., max_age=...)``.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.clock = clock
        # client id -> (when it was read, the record): registered clients only, so bounded by the
        # registry; unknown ids are never remembered (anyone can send one).
        self._recent: dict[str, tuple[float, ClientRecord]] = {}
        self._changes = 0  # bumped by every local change, so a read that raced one is not kept
        self._lock = threading.Lock()

    def _record(self, row: Any) -> ClientRecord:
        return ClientRecord(
            client_id=row.client_id,
            orgnr=row.orgnr,
            point_of_care=row.point_of_care,
            name=row.name,
            jwks=json.loads(row.jwks),
            scopes=frozenset(row.scopes.split()),
            enabled=bool(row.enabled),
        )

    def get(self, client_id: str, *, max_age: float = 0.0) -> ClientRecord | None:
        """The client ``client_id``, or ``None``; read from the database unless ``max_age`` > 0 and this
        process read it less than ``max_age`` seconds ago with no local change since."""
        if max_age > 0:
            recent = self._recent.get(client_id)
            if recent is not None and self.clock() - recent[0] < max_age:
                return recent[1]
        changes, read_at = self._changes, self.clock()
        with self.engine.connect() as conn:
            row = conn.execute(_BY_ID, {"client_id": client_id}).first()
        if row is None:
            return None
        record = self._record(row)
        with self._lock:
            if changes == self._changes:  # else a local change may have landed after the read
                self._recent[client_id] = (read_at, record)
        return record

    def _changed(self, client_id: str) -> None:
        with self._lock:
            self._changes += 1
            self._recent.pop(client_id, None)

    def all(self) -> list[ClientRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(clients).order_by(clients.c.client_id)).all()
        return [self._record(r) for r in rows]

    def add(
        self,
        client_id: str,
        *,
        orgnr: str,
        jwks: dict[str, Any],
        scopes: frozenset[str],
        point_of_care: str | None = None,
        name: str = "",
    ) -> bool:
        """Register (or re-register) a client; ``True`` when it was new."""
        if not client_id or len(client_id) > 128 or not client_id.isprintable():
            raise ValueError("a client id is 1-128 printable characters")
        for number in filter(None, (orgnr, point_of_care)):
            if not is_valid_orgnr(number):
                raise ValueError(f"{number!r} is not a valid organisasjonsnummer")
        check_public_jwks(jwks)
        values = {
            "orgnr": orgnr,
            "point_of_care": point_of_care,
            "name": name,
            "jwks": json.dumps(jwks, sort_keys=True),
            "scopes": " ".join(sorted(scopes)),
            "enabled": True,
        }
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            exists = conn.execute(select(clients.c.client_id).where(clients.c.client_id == client_id)).first()
            if exists:
                conn.execute(update(clients).where(clients.c.client_id == client_id).values(**values))
            else:
                conn.execute(
                    insert(clients).values(client_id=client_id, created=int(time.time() * 1e6), **values)
                )
        self._changed(client_id)
        return exists is None

    def set_enabled(self, client_id: str, enabled: bool) -> bool:
        """Enable or disable a client; ``False`` when there is no such client."""
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            result = conn.execute(
                update(clients).where(clients.c.client_id == client_id).values(enabled=enabled)
            )
        self._changed(client_id)
        return bool(result.rowcount)
