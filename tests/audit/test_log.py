"""The audit log on SQLite and PostgreSQL: append, sequence, checkpoints, proofs, search, export.

security-tests.md AUD-03 (query bytes through the database), AUD-05 (fail closed), AUD-08 (checkpoints
verify with the pinned key; consistency between every pair of retained checkpoints).
"""

from __future__ import annotations

import base64
import itertools
import threading
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from sharing_api.audit import log as audit_log
from sharing_api.audit import sequencer
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.checkpoints import AuditSigner, load_public_key
from sharing_api.audit.events import SharingDecision, build_audit_event
from sharing_api.audit.export_format import entry_leaf
from sharing_api.audit.log import AuditLog, LogCorrupted
from sharing_api.audit.merkle import (
    EMPTY_ROOT,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from sharing_api.audit.verify import verify
from sharing_api.store.compiled import CompiledStatement
from sharing_api.store.schema import audit_entries, audit_heads
from tests.audit.factories import HOSPITAL, OTHER_TENANT, T0, TENANT, facts, fill, tampering
from tests.audit.test_events import MALICIOUS

e = audit_entries


def stored(engine: Engine, tenant: str = TENANT) -> list[tuple[int | None, bytes, bytes | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(e.c.seq, e.c.event, e.c.leaf).where(e.c.tenant == tenant).order_by(e.c.id)
        ).all()
    return [(r.seq, bytes(r.event), bytes(r.leaf) if r.leaf is not None else None) for r in rows]


def assert_dense_and_hashed(log: AuditLog, tenant: str, count: int) -> None:
    rows = sorted(stored(log.engine, tenant), key=lambda r: r[0] if r[0] is not None else -1)
    assert [seq for seq, _, _ in rows] == list(range(count))
    for seq, event, leaf in rows:
        assert seq is not None
        assert leaf == entry_leaf(event, seq) == leaf_hash(b'{"event":%s,"seq":%d}' % (event, seq))
    head = log.head(tenant)
    assert head is not None
    assert head.size == count
    assert head.root == root_from_leaf_hashes([leaf for _, _, leaf in rows])  # type: ignore[misc]


def test_append_then_sequence_round_trip(log: AuditLog) -> None:
    ids = fill(log, 25)
    assert len(set(ids)) == 25
    assert [seq for seq, _, _ in stored(log.engine)] == [None] * 25  # pending until sequenced
    assert log.head(TENANT) is None
    assert log.sequence(TENANT, max_batch=10) == 10
    assert log.sequence(max_batch=100) == 15
    assert log.sequence() == 0
    assert_dense_and_hashed(log, TENANT, 25)
    # entries keep the exact canonical event
    (entry,) = log.search(TENANT, count=1, after_seq=6)
    assert entry.seq == 7
    assert entry.resource() == build_audit_event(facts(7))
    assert entry.action == "observation.search"
    assert entry.recorded_at == T0 + timedelta(seconds=7)


def test_every_tenant_has_its_own_log(log: AuditLog) -> None:
    fill(log, 5, TENANT)
    fill(log, 3, OTHER_TENANT)
    assert log.drain() == 8
    assert_dense_and_hashed(log, TENANT, 5)
    assert_dense_and_hashed(log, OTHER_TENANT, 3)
    assert log.search(OTHER_TENANT, count=10)[0].tenant == OTHER_TENANT
    assert len(log.search(TENANT, count=10)) == 5


def test_event_commits_with_the_callers_transaction_or_not_at_all(log: AuditLog) -> None:
    event = build_audit_event(facts())

    def request_that_fails_after_the_audit() -> None:
        with log.engine.connect().execution_options(write=True) as conn, conn.begin():
            log.append(conn, TENANT, event)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        request_that_fails_after_the_audit()
    assert stored(log.engine) == []
    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        log.append(conn, TENANT, event)
    assert len(stored(log.engine)) == 1


def test_append_fails_closed(log: AuditLog) -> None:
    event = build_audit_event(facts())
    with log.engine.connect() as conn, pytest.raises(ValueError, match="transaction"):
        log.append(conn, TENANT, event)
    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        with pytest.raises(ValueError, match="AuditEvent"):
            log.append(conn, TENANT, {"resourceType": "Observation"})
        with pytest.raises(ValueError, match="AuditAction"):
            log.append(conn, TENANT, {**event, "subtype": []})
        with pytest.raises(ValueError, match="not representable"):
            log.append(conn, TENANT, {**event, "outcomeDesc": float("nan")})


def test_a_database_error_in_append_reaches_the_caller(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUD-05: nothing swallows an audit write failure; the caller's transaction fails (and answers 503)."""
    from sqlalchemy import Column, Integer, MetaData, Table, insert

    missing = Table("audit_store_that_is_down", MetaData(), Column("x", Integer))
    monkeypatch.setattr("sharing_api.audit.log._INSERT", insert(missing))

    def request() -> None:
        with log.engine.connect().execution_options(write=True) as conn, conn.begin():
            log.append(conn, TENANT, build_audit_event(facts()))

    with pytest.raises(DBAPIError):
        request()
    assert stored(log.engine) == []


def test_an_append_without_a_connection_is_committed_when_it_returns(log: AuditLog) -> None:
    """``append(None, ...)`` (a read's event, ``Auditor.record``) is its own transaction: another
    connection sees the entry as soon as append returns, before any data it records is sent."""
    event = build_audit_event(facts(3))
    row_id = log.append(None, TENANT, event)
    with log.engine.connect() as conn:  # a connection of the engine's own pool, a new transaction
        row = conn.execute(select(e.c.id, e.c.seq, e.c.event).where(e.c.tenant == TENANT)).one()
    assert (row.id, row.seq) == (row_id, None)
    assert orjson.loads(row.event) == event
    assert log.drain(TENANT) == 1
    assert_dense_and_hashed(log, TENANT, 1)


def test_an_append_without_a_connection_fails_closed(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """AUD-05 on the autocommit path: a database error reaches the caller, and nothing is stored."""
    from sqlalchemy import Column, Integer, MetaData, Table, insert

    missing = Table("audit_store_that_is_down", MetaData(), Column("x", Integer))
    monkeypatch.setattr("sharing_api.audit.log._INSERT", insert(missing))  # SQLite: a write transaction
    down = insert(missing).values(x=1).returning(missing.c.x)
    dialect = log.engine.dialect
    monkeypatch.setitem(
        audit_log._insert_returning.by_name, dialect.name, CompiledStatement.of(down, dialect)
    )
    with pytest.raises(DBAPIError):
        log.append(None, TENANT, build_audit_event(facts()))
    with pytest.raises(ValueError, match="AuditEvent"):
        log.append(None, TENANT, {"resourceType": "Observation"})
    assert stored(log.engine) == []


def test_append_on_sqlite_needs_a_write_transaction(tmp_path: Path) -> None:
    # SQLite only (BEGIN IMMEDIATE), so this test makes its own SQLite database.
    from sharing_api.store.engine import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn, conn.begin(), pytest.raises(ValueError, match="write"):
            AuditLog(engine).append(conn, TENANT, build_audit_event(facts()))
    finally:
        engine.dispose()


def test_concurrent_appends_and_sequencers_give_a_dense_sequence(log: AuditLog) -> None:
    threads, per_thread = 8, 40
    errors: list[BaseException] = []
    stop = threading.Event()

    def appender(t: int) -> None:
        try:
            for i in range(per_thread):
                with log.engine.connect().execution_options(write=True) as conn, conn.begin():
                    log.append(conn, TENANT, build_audit_event(facts(t * 1000 + i)))
        except BaseException as exc:
            errors.append(exc)

    def sequencer() -> None:
        try:
            while not stop.is_set():
                log.sequence(TENANT, max_batch=7)
        except BaseException as exc:
            errors.append(exc)

    seqs = [threading.Thread(target=sequencer) for _ in range(3)]
    apps = [threading.Thread(target=appender, args=(t,)) for t in range(threads)]
    for t in seqs + apps:
        t.start()
    for t in apps:
        t.join()
    stop.set()
    for t in seqs:
        t.join()
    assert errors == []
    log.drain(TENANT)
    assert_dense_and_hashed(log, TENANT, threads * per_thread)
    assert verify(log.export(TENANT), log.signer.verifier).ok  # type: ignore[union-attr]


def test_sequence_is_arrival_order(log: AuditLog) -> None:
    ids = fill(log, 12)
    log.drain()
    with log.engine.connect() as conn:
        order = conn.execute(select(e.c.id).where(e.c.tenant == TENANT).order_by(e.c.seq)).scalars().all()
    assert order == ids


def test_checkpoints_every_n_entries_and_after_an_interval(engine: Engine, signer: AuditSigner) -> None:
    now = [1000.0]
    log = AuditLog(engine, signer=signer, checkpoint_every=10, checkpoint_interval=60, clock=lambda: now[0])
    fill(log, 25)
    log.drain(max_batch=100)
    assert [cp.size for cp in log.checkpoints(TENANT)] == [10, 20]  # 25 is not due yet
    assert log.sequence() == 0
    now[0] += 61
    assert log.pending_tenants() == [TENANT]
    log.sequence()
    assert [cp.size for cp in log.checkpoints(TENANT)] == [10, 20, 25]
    latest = log.latest_checkpoint(TENANT)
    assert latest is not None
    assert latest.size == 25
    assert latest.root == log.root_at(TENANT, 25)
    assert log.pending_tenants() == []
    assert log.checkpoint(TENANT) == latest  # nothing new to sign


def test_no_signer_no_checkpoints(engine: Engine) -> None:
    log = AuditLog(engine)
    fill(log, 15)
    assert log.drain() == 15
    assert log.checkpoints(TENANT) == []
    with pytest.raises(ValueError, match="signer"):
        log.checkpoint(TENANT)


def test_checkpoints_verify_with_the_pinned_key_and_are_consistent_pairwise(
    log: AuditLog, signer: AuditSigner
) -> None:
    """AUD-08: every retained checkpoint verifies with the pinned key, and a consistency proof links
    every pair of them; an inclusion proof ties every entry to the latest checkpoint."""
    for batch in (7, 13, 1, 30, 9):
        fill(log, batch, start=len(stored(log.engine)))
        log.drain(max_batch=6)
        log.checkpoint(TENANT)
    verifier = load_public_key(signer.public_key_pem())  # the auditor pins the public key only
    checkpoints = log.checkpoints(TENANT)
    # every 10 entries after the previous checkpoint, plus the ones signed on demand
    assert [cp.size for cp in checkpoints] == [7, 17, 20, 21, 31, 41, 51, 60]
    bodies = [verifier.open(cp.note, origin=log.origin_of(TENANT)) for cp in checkpoints]
    assert [(b.size, b.root) for b in bodies] == [(cp.size, cp.root) for cp in checkpoints]
    for old, new in itertools.combinations(bodies, 2):
        proof = log.consistency_proof(TENANT, old.size, new.size)
        verify_consistency(old.size, new.size, old.root, new.root, proof)
    latest = bodies[-1]
    leaves = log.leaf_hashes(TENANT, latest.size)
    for index in range(latest.size):
        verify_inclusion(
            index, latest.size, leaves[index], log.inclusion_proof(TENANT, index, latest.size), latest.root
        )
    assert log.root_at(TENANT, 0) == EMPTY_ROOT


def test_query_bytes_round_trip_through_the_database(log: AuditLog) -> None:
    """AUD-03 end to end: what the client sent comes back from the stored event byte for byte."""
    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        for n, query in enumerate(MALICIOUS):
            log.record(conn, facts(n, query=query, decision=None))
    entries = log.search(TENANT, count=100)
    assert len(entries) == len(MALICIOUS)
    for entry, query in zip(entries, MALICIOUS, strict=True):
        (q,) = [x for x in entry.resource()["entity"] if x.get("role", {}).get("code") == "24"]
        assert base64.b64decode(q["query"]) == query


def test_search_filters_and_pages(log: AuditLog) -> None:
    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        for n in range(30):
            log.record(
                conn,
                facts(
                    n,
                    patient=(
                        "urn:oid:2.16.578.1.12.4.1.4.1",
                        "13116900216" if n % 3 == 0 else f"0101{n:07d}",
                    ),
                    practitioner_hpr="1234567" if n % 5 == 0 else "9144897",
                    purpose_of_use="ETREAT" if n == 4 else "TREAT",
                    outcome=Outcome.MINOR_FAILURE if n in (7, 8) else Outcome.SUCCESS,
                    organisation="974589095" if n >= 25 else HOSPITAL,
                    action=AuditAction.OBSERVATION_READ if n % 2 else AuditAction.OBSERVATION_SEARCH,
                    decision=None,
                ),
            )
    assert len(stored(log.engine)) == 30  # pending; search sequences first
    by_patient = log.search(TENANT, patient="13116900216")
    assert [x.seq for x in by_patient] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert log.search(TENANT, patient=("urn:oid:2.16.578.1.12.4.1.4.3", "13116900216")) == []
    assert [x.seq for x in log.search(TENANT, agent_hpr="1234567")] == [0, 5, 10, 15, 20, 25]
    assert [x.seq for x in log.search(TENANT, purpose="ETREAT")] == [4]
    assert [x.seq for x in log.search(TENANT, purpose=["ETREAT", "BTG"])] == [4]
    assert [x.seq for x in log.search(TENANT, outcome=Outcome.MINOR_FAILURE)] == [7, 8]
    assert [x.seq for x in log.search(TENANT, organisation="974589095")] == [25, 26, 27, 28, 29]
    assert len(log.search(TENANT, action=AuditAction.OBSERVATION_READ)) == 15
    window = log.search(TENANT, date_from=T0 + timedelta(seconds=10), date_to=T0 + timedelta(seconds=13))
    assert [x.seq for x in window] == [10, 11, 12]
    page1 = log.search(TENANT, count=4, newest_first=True)
    page2 = log.search(TENANT, count=4, newest_first=True, after_seq=page1[-1].seq)
    assert [x.seq for x in page1 + page2] == [29, 28, 27, 26, 25, 24, 23, 22]
    pages, after = [], None
    while chunk := log.search(TENANT, patient="13116900216", count=3, after_seq=after):
        pages.append([x.seq for x in chunk])
        after = chunk[-1].seq
    assert pages == [[0, 3, 6], [9, 12, 15], [18, 21, 24], [27]]
    assert log.search(OTHER_TENANT) == []
    with pytest.raises(ValueError, match="aware"):
        log.search(TENANT, date_from=T0.replace(tzinfo=None))


def test_search_without_sequencing_sees_only_sequenced_entries(log: AuditLog) -> None:
    fill(log, 3)
    assert log.search(TENANT, sequence_first=False) == []
    log.drain()
    assert len(log.search(TENANT, sequence_first=False)) == 3


def test_the_sequencer_refuses_an_inconsistent_head(log: AuditLog) -> None:
    fill(log, 5)
    log.drain()
    with tampering(log.engine) as conn:
        conn.execute(update(audit_heads).values(size=3))
    fill(log, 1, start=5)
    with pytest.raises(LogCorrupted, match="head says 3"):
        log.sequence(TENANT)
    with tampering(log.engine) as conn:
        conn.execute(update(audit_heads).values(size=5))
        conn.execute(e.delete().where(e.c.seq == 2))
    with pytest.raises(LogCorrupted):
        log.leaf_hashes(TENANT, 5)


def test_a_polling_sequencer_waits_after_a_partial_batch(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A polling sequencer takes a backlog in full batches back to back, but after a partial batch (it
    took everything pending) it waits its interval instead of polling again at once: under steady
    traffic, polling at once made one batch (and its fixed database cost) per request. Entries that
    come meanwhile get their index in the next batch, dense and in order."""
    fill(log, 25)
    steps: list[str] = []

    def observe(what: str, n: int) -> None:
        if what == "done":
            steps.append(f"done {n}")
            if n == 5:  # a request's entry arrives while the partial batch runs
                fill(log, 1, start=25)

    monkeypatch.setattr("sharing_api.audit.sequencer.time.sleep", lambda _: steps.append("sleep"))
    stops = iter([False] * 4 + [True])
    total = sequencer.run(
        log,
        tenant=TENANT,
        max_batch=10,
        loop=True,
        interval=1.0,
        observe=observe,
        should_stop=lambda: next(stops),
    )
    assert steps == ["done 10", "done 10", "done 5", "sleep", "done 1", "sleep"]
    assert total == 26
    assert [entry.seq for entry in log.entries(TENANT)] == list(range(26))
    # without polling, ``run`` still sequences until nothing is pending, whatever the batch size
    fill(log, 7, start=26)
    assert sequencer.run(log, tenant=TENANT, max_batch=3) == 7
    assert log.head(TENANT).size == 33  # type: ignore[union-attr]


@pytest.mark.parametrize("days", [0, 40], ids=["same month", "another month"])
def test_a_duplicate_index_is_refused_by_the_database(log: AuditLog, days: int) -> None:
    """AUD-09: whatever a sequencer does, the database refuses to give an index that an entry of the
    tenant already has, also to an entry of another month (another partition on PostgreSQL): the
    trigger that lets a pending entry get its index claims it in ``audit_seq_claims`` (0006)."""
    fill(log, 3)
    log.drain()
    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        late = build_audit_event(facts(3, recorded=T0 + timedelta(days=days)))
        log.append(conn, TENANT, late)
    with pytest.raises(IntegrityError, match="audit_seq_claims"), log.engine.begin() as conn:
        conn.execute(update(e).where(e.c.seq.is_(None)).values(seq=1, leaf=b"\0" * 32))
    assert log.drain() == 1  # the sequencer's own update still works
    assert [x.seq for x in log.search(TENANT)] == [0, 1, 2, 3]


def test_an_index_given_twice_past_the_triggers_is_found_by_the_stored_check(
    log: AuditLog, signer: AuditSigner
) -> None:
    """A database superuser can switch triggers off (or edit SQLite's file): ``audit verify --database``
    still finds an index given twice."""
    from sharing_api.audit.stored_check import check_stored_log

    fill(log, 3)
    log.drain()
    log.checkpoint(TENANT)
    fill(log, 1, start=3)
    with tampering(log.engine) as conn:
        conn.execute(update(e).where(e.c.seq.is_(None)).values(seq=1, leaf=b"\0" * 32))
    report = check_stored_log(log, TENANT, signer.verifier)
    assert not report.ok
    assert report.index == 1, report.detail


def test_export_from_the_middle_verifies(log: AuditLog) -> None:
    fill(log, 37)
    log.drain()
    log.checkpoint(TENANT)
    whole = list(log.export(TENANT))
    assert verify(whole, log.signer.verifier).ok  # type: ignore[union-attr]
    part = list(log.export(TENANT, from_seq=20))
    report = verify(part, log.signer.verifier)  # type: ignore[union-attr]
    assert report.ok, report
    assert (report.start, report.entries, report.signed_size, report.checkpoints) == (20, 17, 37, 3)
    middle = verify(log.export(TENANT, 10, 30), log.signer.verifier)  # type: ignore[union-attr]
    assert (middle.ok, middle.entries, middle.signed_size) == (True, 20, 30)
    with pytest.raises(ValueError, match="from_seq"):
        list(log.export(TENANT, 5, 4))


def test_record_writes_one_entry_per_request_carrying_its_decision(log: AuditLog) -> None:
    """Issue 12: one event per request, the decision inside it (was: a second AuthZconsent entry)."""
    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        ids = log.record(conn, facts(decision=SharingDecision(permit=False, reasons=("DENY",), used=())))
    assert len(ids) == 1
    (entry,) = log.search(TENANT)
    assert entry.action == "observation.search"
    event = orjson.loads(entry.event)
    (decision,) = [x for x in event["entity"] if x.get("name") == "sharing-decision"]
    assert decision["description"] == "deny"
    with log.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(e)).scalar() == 1


def test_the_sequencer_hashes_the_stored_event_bytes_read_in_binary(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: on PostgreSQL the sequencer reads the pending events in binary (no hex text for the
    server to encode and the driver to decode); each leaf is still the hash of exactly the stored
    bytes, non-ASCII text included, and a failed read reaches the sequencer as a database error."""
    fill(log, 3)
    with log.engine.begin() as conn:
        stored_events = [
            bytes(b)
            for b in conn.execute(select(audit_entries.c.event).order_by(audit_entries.c.id)).scalars()
        ]
    assert any(max(b) > 127 for b in stored_events)  # the facts' names are Norwegian: UTF-8 bytes
    formats: list[int] = []
    if log.engine.dialect.name == "postgresql":
        import psycopg

        execute = psycopg.Cursor.execute

        def spy(cursor: psycopg.Cursor, query: object, params: object = None, **kwargs: object) -> object:
            result = execute(cursor, query, params, **kwargs)  # type: ignore[arg-type]
            if "audit_entries.event" in str(query) and cursor.pgresult is not None:
                formats.append(cursor.pgresult.fformat(2))
            return result

        monkeypatch.setattr(psycopg.Cursor, "execute", spy)
    assert log.sequence(TENANT) == 3
    if log.engine.dialect.name == "postgresql":
        assert formats == [1]  # 1: binary
    assert [entry.leaf for entry in log.entries(TENANT)] == [
        entry_leaf(event, seq) for seq, event in enumerate(stored_events)
    ]
    assert_dense_and_hashed(log, TENANT, 3)

    fill(log, 1, start=3)

    def broken(dialect: object) -> CompiledStatement:
        return CompiledStatement.of(select(func.no_such_function()), log.engine.dialect)

    monkeypatch.setattr("sharing_api.audit.log._pending", broken)
    with pytest.raises(DBAPIError):
        log.sequence(TENANT)
    head = log.head(TENANT)
    assert head is not None
    assert head.size == 3  # the batch rolled back
