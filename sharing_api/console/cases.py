"""Cases (saker, console.md §5.1 page 4): a rule hit of the review queue that needs more than a note is
opened as a case ("Opprett sak"), with the hit's events attached, and followed through its states
until it is closed with an outcome. Every change carries a note and who made it; the console records
each one in the audit log as well (``AuditAction.AUDIT_TRIAGE``, views.py).

States (console.md): ``open`` (Åpen) -> ``waiting`` (Venter på forklaring fra konsument) -> ``review``
(Til vurdering hos leder/HR) -> ``closed`` (Lukket), in any order but closed only with an outcome:
``legitimate`` (legitimt), ``breach`` (brudd) or ``unresolved`` (uavklart); a closed case can be
reopened. One case per rule hit: opening it again returns the same case. No per-employee metrics are
kept (the HSØ rule): a case is about one hit, not a person's score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine, insert, select, update

from sharing_api.store.schema import console_case_notes, console_cases

__all__ = ["OUTCOMES", "STATES", "Case", "CaseError", "Note", "case", "cases", "change", "open_case"]

STATES = {
    "open": "Åpen",
    "waiting": "Venter på forklaring fra konsument",
    "review": "Til vurdering hos leder/HR",
    "closed": "Lukket",
}
OUTCOMES = {"legitimate": "Legitimt", "breach": "Brudd", "unresolved": "Uavklart"}
MAX_SEQS = 50
MAX_NOTE = 2000


class CaseError(ValueError):
    """A change a case cannot take; the message names the field."""


@dataclass(frozen=True, slots=True)
class Note:
    at: int  # microseconds since the epoch
    auditor: str
    state: str
    note: str


@dataclass(frozen=True, slots=True)
class Case:
    id: int
    flag: str
    seqs: tuple[int, ...]
    state: str
    outcome: str | None
    opened_by: str
    opened: int
    updated: int
    notes: tuple[Note, ...] = ()


def _now() -> int:
    return time.time_ns() // 1000


def _case(row: object, notes: tuple[Note, ...] = ()) -> Case:
    r = row._mapping  # type: ignore[attr-defined]
    return Case(
        int(r["id"]),
        r["flag"],
        tuple(orjson.loads(r["seqs"])),
        r["state"],
        r["outcome"],
        r["opened_by"],
        int(r["opened"]),
        int(r["updated"]),
        notes,
    )


def open_case(engine: Engine, tenant: str, flag: str, seqs: list[int], note: str, auditor: str) -> int:
    """The case of rule hit ``flag`` (opened now with ``seqs`` attached, or the one already open)."""
    if not flag or len(flag) > 128:
        raise CaseError("flag: a rule hit")
    if not seqs or len(seqs) > MAX_SEQS or any(s < 0 for s in seqs):
        raise CaseError(f"seqs: 1 to {MAX_SEQS} event indexes")
    t = console_cases
    with engine.begin() as conn:
        found = conn.execute(select(t.c.id).where(t.c.tenant == tenant, t.c.flag == flag)).scalar()
        if found is not None:
            return int(found)
        now = _now()
        created = conn.execute(
            insert(t).values(
                tenant=tenant,
                flag=flag,
                seqs=orjson.dumps(sorted(set(seqs))).decode(),
                state="open",
                outcome=None,
                opened_by=auditor,
                opened=now,
                updated=now,
            )
        )
        key = created.inserted_primary_key
        assert key is not None  # an INSERT of one row names it
        case_id = int(key[0])
        conn.execute(
            insert(console_case_notes).values(
                tenant=tenant, case_id=case_id, at=now, auditor=auditor, state="open", note=note[:MAX_NOTE]
            )
        )
    return case_id


def cases(engine: Engine, tenant: str) -> list[Case]:
    """``tenant``'s cases, open ones first, newest first within each."""
    t = console_cases
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.tenant == tenant).order_by(t.c.updated.desc())).all()
    found = [_case(r) for r in rows]
    return sorted(found, key=lambda c: c.state == "closed")


def case(engine: Engine, tenant: str, case_id: int) -> Case | None:
    """One of ``tenant``'s cases with its notes; ``None`` for another tenant's or no case."""
    t, n = console_cases, console_case_notes
    with engine.connect() as conn:
        row = conn.execute(select(t).where(t.c.tenant == tenant, t.c.id == case_id)).first()
        if row is None:
            return None
        notes = conn.execute(
            select(n).where(n.c.tenant == tenant, n.c.case_id == case_id).order_by(n.c.at)
        ).all()
    return _case(row, tuple(Note(int(x.at), x.auditor, x.state, x.note) for x in notes))


def change(
    engine: Engine, tenant: str, case_id: int, state: str, outcome: str | None, note: str, auditor: str
) -> Case:
    """Move ``tenant``'s case to ``state`` with a note (closing needs an outcome); the changed case."""
    if state not in STATES:
        raise CaseError(f"state: one of {', '.join(STATES)}")
    if state == "closed" and outcome not in OUTCOMES:
        raise CaseError(f"outcome: closing a case needs one of {', '.join(OUTCOMES)}")
    if state != "closed":
        outcome = None
    if not note.strip():
        raise CaseError("note: say what was done or found")
    t = console_cases
    now = _now()
    with engine.begin() as conn:
        done = conn.execute(
            update(t)
            .where(t.c.tenant == tenant, t.c.id == case_id)
            .values(state=state, outcome=outcome, updated=now)
        )
        if done.rowcount != 1:
            raise LookupError("no such case")
        conn.execute(
            insert(console_case_notes).values(
                tenant=tenant,
                case_id=case_id,
                at=now,
                auditor=auditor,
                state=state,
                note=note.strip()[:MAX_NOTE],
            )
        )
    found = case(engine, tenant, case_id)
    assert found is not None
    return found
