"""Tenants: the data controllers this deployment serves, each under ``/{orgnr}/fhir``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, update

from sharing_api.fhir.identifiers import is_valid_orgnr
from sharing_api.fhir.validation import Tenant
from sharing_api.store.schema import tenants


@dataclass(frozen=True, slots=True)
class TenantRecord:
    orgnr: str
    name: str
    resh_ids: frozenset[str]
    opt_in: bool
    processors: frozenset[str] = frozenset()
    """Org.nrs of processors (databehandlere) allowed to publish into this tenant."""
    emergency_override: bool = False
    """ETREAT/BTG may override a reservation (never a block): the controller's choice (domain.md)."""
    allow_unknown_codes: bool = False
    """Store codes outside the vital-sign table (units still UCUM): the controller's choice."""
    clock_skew_seconds: int = 300
    """How far ahead of now an effective time may lie (the deployment's ``DHO_CLOCK_SKEW``)."""

    @property
    def validation(self) -> Tenant:
        return Tenant(self.orgnr, self.resh_ids, self.allow_unknown_codes, self.clock_skew_seconds)


class TenantDirectory:
    """Tenant lookups, cached briefly so a request does not pay a query; ``add`` shows within seconds."""

    def __init__(self, engine: Engine, ttl_seconds: float = 5.0, clock_skew_seconds: int = 300):
        self.engine = engine
        self.clock_skew_seconds = clock_skew_seconds
        self.ttl = ttl_seconds
        self._cache: dict[str, TenantRecord] = {}
        self._loaded = 0.0
        self._lock = threading.Lock()

    def _load(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tenants)).all()
        self._cache = {
            r.orgnr: TenantRecord(
                r.orgnr,
                r.name,
                frozenset(filter(None, r.resh_ids.split(","))),
                bool(r.opt_in),
                frozenset(filter(None, r.processors.split(","))),
                bool(r.emergency_override),
                bool(r.allow_unknown_codes),
                self.clock_skew_seconds,
            )
            for r in rows
        }
        self._loaded = time.monotonic()

    def get(self, orgnr: str) -> TenantRecord | None:
        with self._lock:
            age = time.monotonic() - self._loaded
            # Reload when stale, or on a miss at most once a second (a new tenant shows up quickly,
            # and requests for unknown tenants cannot turn into a query each).
            if age > self.ttl or (orgnr not in self._cache and age > 1.0):
                self._load()
            return self._cache.get(orgnr)

    def all(self) -> list[TenantRecord]:
        with self._lock:
            self._load()
            return sorted(self._cache.values(), key=lambda t: t.orgnr)

    def add(
        self,
        orgnr: str,
        name: str,
        *,
        resh_ids: frozenset[str] = frozenset(),
        opt_in: bool = False,
        processors: frozenset[str] = frozenset(),
        emergency_override: bool = False,
        allow_unknown_codes: bool = False,
    ) -> bool:
        """Register or update a tenant; ``True`` when it was new."""
        for number in (orgnr, *processors):
            if not is_valid_orgnr(number):
                raise ValueError(
                    f"{number!r} is not a valid organisasjonsnummer (9 digits, mod-11 control digit)"
                )
        values = {
            "name": name,
            "resh_ids": ",".join(sorted(resh_ids)),
            "opt_in": opt_in,
            "processors": ",".join(sorted(processors)),
            "emergency_override": emergency_override,
            "allow_unknown_codes": allow_unknown_codes,
        }
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            exists = conn.execute(select(tenants.c.orgnr).where(tenants.c.orgnr == orgnr)).first()
            if exists:
                conn.execute(update(tenants).where(tenants.c.orgnr == orgnr).values(**values))
            else:
                conn.execute(insert(tenants).values(orgnr=orgnr, created=int(time.time() * 1e6), **values))
        with self._lock:
            self._loaded = 0.0
        return not exists
