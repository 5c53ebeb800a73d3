"""The client registry: client systems, the organisation each belongs to, its public keys and scopes."""

from __future__ import annotations

import json
import time
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


class ClientRegistry:
    """Client systems in SQL; lookups are what the token service's client authentication needs."""

    def __init__(self, engine: Engine):
        self.engine = engine

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

    def get(self, client_id: str) -> ClientRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(_BY_ID, {"client_id": client_id}).first()
        return self._record(row) if row else None

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
        return exists is None

    def set_enabled(self, client_id: str, enabled: bool) -> bool:
        """Enable or disable a client; ``False`` when there is no such client."""
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            result = conn.execute(
                update(clients).where(clients.c.client_id == client_id).values(enabled=enabled)
            )
        return bool(result.rowcount)
