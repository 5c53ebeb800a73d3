"""The console's integrity status: "verify now" runs the offline verifier (``audit.verify``) server-side
over the tenant's export, the same check ``dho-share audit verify`` does, and remembers the result so
the dashboard badge can show it with its time (console.md §5.5: "verifisert av server kl. HH:MM").

"Verify now" also checks the dashboard's rollup (``rollup.check``) over the last 30 days against the
entries: a difference fails the verification (problem ``rollup``, the hour or tile in the detail).

Badge states: ``verified`` (the last run found no problem and no entries have been added since),
``stale`` (entries were added after the last run), ``failed`` (the last run found a problem: its kind
and the first bad index), ``unverified`` (never run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

from sqlalchemy import delete, insert, select

from sharing_api.audit.checkpoints import NoteVerifier
from sharing_api.audit.log import AuditLog
from sharing_api.audit.verify import verify
from sharing_api.console import aggregates, rollup
from sharing_api.store.schema import console_verifications

__all__ = ["Badge", "Verification", "badge", "last_verification", "verify_now"]

v = console_verifications
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Verification:
    tenant: str
    verified_at: datetime
    ok: bool
    problem: str | None
    bad_index: int | None
    entries: int
    signed_size: int
    seconds: float
    detail: str

    @property
    def per_second(self) -> int:
        return int(self.entries / self.seconds) if self.seconds > 0 else 0


@dataclass(frozen=True, slots=True)
class Badge:
    state: str  # verified | stale | failed | unverified
    text: str
    verification: Verification | None


def verify_now(log: AuditLog, tenant: str) -> Verification:
    """Sequence pending entries, sign a checkpoint over the whole tree, verify the export against the
    log's own public key, store and return the result. Needs a signer (the API always has one)."""
    if log.signer is None:
        raise ValueError("verification needs the log's signing key")
    log.drain(tenant)
    log.checkpoint(tenant)
    verifier = NoteVerifier(log.signer.public_key, name=log.signer.name)
    started = time.perf_counter()
    report = verify(log.export(tenant), verifier)
    mismatch = None if not report.ok else _check_rollup(log, tenant)
    seconds = time.perf_counter() - started
    now = time.time_ns() // 1000
    row = {
        "tenant": tenant,
        "verified_at": now,
        "ok": report.ok and mismatch is None,
        "problem": report.problem.value if report.problem else ("rollup" if mismatch else None),
        "bad_index": report.index,
        "entries": report.entries,
        "signed_size": report.signed_size,
        "seconds": f"{seconds:.6f}",
        "detail": report.detail[:500]
        if mismatch is None
        else f"the dashboard's rollup says {mismatch.rollup} for {mismatch.what}, the entries"
        f" {mismatch.entries}: rebuild it (dho-share console-rollup --rebuild)",
    }
    with log.engine.begin() as conn:
        conn.execute(delete(v).where(v.c.tenant == tenant))
        conn.execute(insert(v).values(**row))
    return _verification(row)


def _check_rollup(log: AuditLog, tenant: str) -> rollup.RollupMismatch | None:
    """The dashboard's rollup over the last 30 Oslo days against the entries (``rollup.check``)."""
    zone = aggregates.OSLO
    rollup.fold(log.engine, tenant, zone)
    end = datetime.combine(datetime.now(zone).date() + timedelta(days=1), dtime(), zone)
    start = end - timedelta(days=31)
    start = datetime.combine(start.astimezone(zone).date(), dtime(), zone)
    below = rollup.folded(log.engine, tenant)
    hours, actors = aggregates.scan(log.engine, tenant, start, end, below)
    return rollup.check(log.engine, tenant, start, end, hours, actors, zone)


def _verification(row: dict[str, object]) -> Verification:
    return Verification(
        tenant=str(row["tenant"]),
        verified_at=_EPOCH + timedelta(microseconds=int(str(row["verified_at"]))),
        ok=bool(row["ok"]),
        problem=None if row["problem"] is None else str(row["problem"]),
        bad_index=None if row["bad_index"] is None else int(str(row["bad_index"])),
        entries=int(str(row["entries"])),
        signed_size=int(str(row["signed_size"])),
        seconds=float(str(row["seconds"])),
        detail=str(row["detail"]),
    )


def last_verification(log: AuditLog, tenant: str) -> Verification | None:
    with log.engine.connect() as conn:
        row = conn.execute(select(v).where(v.c.tenant == tenant)).first()
    return None if row is None else _verification(dict(row._mapping))


def badge(log: AuditLog, tenant: str) -> Badge:
    """The dashboard badge (module docstring)."""
    last = last_verification(log, tenant)
    if last is None:
        return Badge("unverified", "Ikke verifisert ennå", None)
    if not last.ok:
        where = "" if last.bad_index is None else f" ved indeks {last.bad_index}"
        return Badge("failed", f"Feil{where} ({last.problem})", last)
    head = log.head(tenant)
    size = head.size if head is not None else 0
    if size > last.entries:
        return Badge("stale", f"Utdatert: {size - last.entries} nye hendelser siden verifisering", last)
    return Badge("verified", "Verifisert av server", last)
