"""The tamper-evident audit log: one append-only Merkle-tree log per tenant, in SQL (domain.md "Audit").

It works as Trillian does, in two steps:

1. **append** (request path): ``AuditLog.append(conn, tenant, event)`` inserts the event's RFC 8785
   canonical bytes, with its search columns, as a *pending* entry inside the caller's open transaction.
   So the event commits with the data change it records, or before the data it records leaves
   (product.md §4 step 5); if the transaction does not commit, neither does the event. One INSERT, no
   lock on anything shared: appends of many requests and many processes do not wait for each other.
2. **sequence** (background, ``dho-share audit sequence``): ``AuditLog.sequence`` gives pending entries
   their index, per tenant, dense and without gaps, in arrival order: committed pending entries by row
   id (an entry whose transaction commits late, after a later row id was sequenced, gets the next index
   in a later batch; it is never skipped). It stores each leaf hash (RFC 9162 §2.1.1 over the entry,
   see ``export_format``) and moves the tenant's tree head (size, root, compact range) forward. All of
   one batch happens in one transaction holding the tenant's head row lock (``SELECT ... FOR UPDATE``
   on PostgreSQL; on SQLite ``BEGIN IMMEDIATE`` holds the database's write lock). Several sequencers
   in several processes may run at once; a sequencer killed at any moment leaves the previous batch's
   state, and the next run goes on from there (AUD-09). The database refuses an index given twice
   whatever the sequencers do: a trigger claims each index given in ``audit_seq_claims``, whose primary
   key is (tenant, seq), across the monthly partitions of PostgreSQL (migration 0006_audit_parts;
   ``store.audit_partitions``). Every ``checkpoint_every`` entries, and ``checkpoint_interval``
   seconds after the last checkpoint if the tree has grown, the sequencer signs a checkpoint
   (``checkpoints``).

**Pending entries and search.** ``search`` first sequences the tenant's pending entries
(``sequence_first=True``; a short write transaction, nothing to do most of the time), so every entry it
returns has its index and paging by ``after_seq`` is exact and stable. Pass ``sequence_first=False`` on a
read-only replica; pending entries are then not returned. ``report`` reads the indexed columns of
pending and sequenced entries alike.

**Cost.** ``append``: one INSERT, which adds the row and 3 index entries (primary key, pending, period:
the other indexes hold only sequenced entries, migration 0007_audit_partial). On the request path
(``record``) the row is made from the facts (``facts_row``: the search columns from the facts, the bytes
from ``events.event_bytes``, whose caller's parts are serialized once per caller); a read's event
(``conn=None``) is that one statement in autocommit. The sequencer's update adds the row's new version
and 6 index entries. Proofs read the stored leaf hashes of the range (32 bytes per entry); there is no
tile cache yet.

**Integrity of the search columns.** The columns queries filter on are derived from the event at
append time (``entry_row``); ``search`` checks every entry it returns against its event bytes
(``LogCorrupted`` naming the index and column) and ``stored_check.check_stored_log`` checks every row,
so an edited column can neither show a reader something the signed event does not say nor hide an
event unnoticed by ``dho-share audit verify --database``.

**Failure.** Every error propagates (fail closed): a failed append raises inside the caller's
transaction, which must then roll back and answer 503 (product.md §4 step 5, AUD-05). An append whose
month has no partition (PostgreSQL) raises ``MissingPartition``, an ``OperationalError``, so it is
answered as a database outage is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Integer, and_, bindparam, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.sql.elements import ColumnElement

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.checkpoints import AuditSigner, Checkpoint, CheckpointBody
from sharing_api.audit.control import AgreementCheck, AgreementPeriod, LogControlReport, log_control
from sharing_api.audit.encoding import canonical_event
from sharing_api.audit.events import AuditFacts, event_bytes
from sharing_api.audit.export_format import checkpoint_line, entry_leaf, entry_line, header_line
from sharing_api.audit.merkle import EMPTY_ROOT, consistency_proof, inclusion_proof, root_from_leaf_hashes
from sharing_api.audit.terms import SearchTerms, facts_terms, micros, search_terms
from sharing_api.audit.tree import TreeState
from sharing_api.store import audit_partitions, binary_rows, one_statement
from sharing_api.store.compiled import PerDialect
from sharing_api.store.schema import audit_checkpoints, audit_entries, audit_heads

__all__ = [
    "DEFAULT_ORIGIN",
    "DERIVED_COLUMNS",
    "AuditLog",
    "Entry",
    "LogCorrupted",
    "MissingPartition",
    "TreeHead",
    "column_mismatch",
    "entry_row",
    "facts_row",
]

DEFAULT_ORIGIN = "dho-share/audit"
MAX_COUNT = 1000
_EXPORT_BATCH = 5000

e = audit_entries
h = audit_heads
c = audit_checkpoints
_INSERT = insert(e)  # built once: ``.values()`` per call costs more than the INSERT itself
_INSERT_COLUMNS: tuple[str, ...] = ("tenant", "recorded", "action", "outcome", "purpose", "patient_system")
_INSERT_COLUMNS += ("patient_value", "agent_hpr", "organisation", "client_id", "event")
# One pending entry's INSERT returning its row id (``entry_row``'s keys are its parameters). An INSERT
# of values has nothing to choose: its plan is the same for every value.
_insert_returning = PerDialect(
    lambda: insert(e).values({name: bindparam(name) for name in _INSERT_COLUMNS}).returning(e.c.id),
    "audit INSERT",
    generic_plan=True,
)
# A tenant's oldest pending entries, with their events (for the sequencer to hash); run through
# ``binary_rows`` so the events arrive as stored bytes, not hex text.
_pending = PerDialect(
    lambda: (
        select(e.c.id, e.c.recorded, e.c.event)
        .where(e.c.seq.is_(None), e.c.tenant == bindparam("tenant"))
        .order_by(e.c.id)
        .limit(bindparam("limit", type_=Integer))
    ),
    "pending entries",
)


_SET_LEAF = (
    update(e)
    .where(e.c.id == bindparam("b_id"), e.c.seq.is_(None))
    .values(seq=bindparam("b_seq"), leaf=bindparam("b_leaf"))
)
_SET_LEAVES_PG = text(
    "UPDATE audit_entries AS e SET seq = u.seq, leaf = u.leaf"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:recorded AS bigint[]), CAST(:seqs AS bigint[]),"
    " CAST(:leaves AS bytea[])) AS u(id, recorded, seq, leaf)"
    " WHERE e.id = u.id AND e.recorded = u.recorded AND e.seq IS NULL"  # the primary key: (id, recorded)
)


class LogCorrupted(RuntimeError):
    """The stored log contradicts itself (a gap or an index beyond the head): stop, never paper over."""


class MissingPartition(OperationalError):
    """The event's month has no partition of ``audit_entries`` (PostgreSQL; ``store.audit_partitions``):
    the maintenance that creates months ahead has not run. An operational fault of the database like an
    outage, so the API answers 503 with ``Retry-After`` and no data (fail closed), never 500."""


def _missing_partition(exc: IntegrityError) -> bool:
    # PostgreSQL: ERROR 23514 no partition of relation "audit_entries" found for row
    return getattr(exc.orig, "sqlstate", None) == "23514" and "no partition of relation" in str(exc.orig)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored log entry. ``seq`` and ``leaf`` are ``None`` while the entry is pending."""

    id: int
    tenant: str
    seq: int | None
    recorded: int
    action: str
    outcome: str
    purpose: str | None
    patient_system: str | None
    patient_value: str | None
    agent_hpr: str | None
    organisation: str | None
    client_id: str | None
    event: bytes
    leaf: bytes | None

    @property
    def recorded_at(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.recorded)

    def resource(self) -> dict[str, Any]:
        """The AuditEvent as JSON data, as logged (without the ``id`` that ``fhir_bytes`` adds)."""
        value: dict[str, Any] = orjson.loads(self.event)
        return value

    @property
    def fhir_id(self) -> str | None:
        """The AuditEvent's FHIR id: its index in the tenant's log (``None`` while pending). Stable:
        an index never changes once given, and ``AuditLog.entry`` reads the event back by it."""
        return str(self.seq) if self.seq is not None else None

    def fhir_bytes(self) -> bytes:
        """The AuditEvent as served: the logged bytes with ``"id"`` added first once sequenced (the
        logged event itself has no id: its index is given after it was signed into the request's
        transaction). The logged bytes stay what the export and the Merkle tree carry."""
        if self.seq is None or not self.event.startswith(b"{"):
            return self.event
        return b'{"id":"%d",' % self.seq + self.event[1:]


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A tenant's tree as the sequencer last left it."""

    tenant: str
    size: int
    root: bytes
    checkpoint_size: int
    checkpoint_at: int


def _entry(row: Any) -> Entry:
    return Entry(
        id=row.id,
        tenant=row.tenant,
        seq=row.seq,
        recorded=row.recorded,
        action=row.action,
        outcome=row.outcome,
        purpose=row.purpose,
        patient_system=row.patient_system,
        patient_value=row.patient_value,
        agent_hpr=row.agent_hpr,
        organisation=row.organisation,
        client_id=row.client_id,
        event=bytes(row.event),
        leaf=bytes(row.leaf) if row.leaf is not None else None,
    )


def _derived(tenant: str, event: Mapping[str, Any]) -> dict[str, Any]:
    return _columns(tenant, search_terms(event))


def _columns(tenant: str, terms: SearchTerms) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "recorded": terms.recorded,
        "action": terms.action.value,
        "outcome": terms.outcome.value,
        "purpose": terms.purpose,
        "patient_system": terms.patient_system,
        "patient_value": terms.patient_value,
        "agent_hpr": terms.agent_hpr,
        "organisation": terms.organisation,
        "client_id": terms.client_id,
    }


def entry_row(tenant: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """The pending ``audit_entries`` row of ``event``: its canonical bytes and the columns searched by."""
    return {**_derived(tenant, event), "event": canonical_event(event)}


def facts_row(facts: AuditFacts) -> dict[str, Any]:
    """``entry_row(facts.tenant, events.build_audit_event(facts))``, made without building the event's
    ``dict`` or reading it back (the request path): the columns from the facts (``terms.facts_terms``),
    the bytes from ``events.event_bytes``."""
    row = _columns(facts.tenant, facts_terms(facts))
    row["event"] = event_bytes(facts)
    return row


DERIVED_COLUMNS = (
    "recorded",
    "action",
    "outcome",
    "purpose",
    "patient_system",
    "patient_value",
    "agent_hpr",
    "organisation",
    "client_id",
)
"""The columns of ``audit_entries`` that ``entry_row`` derives from the event for queries to filter on."""


def column_mismatch(entry: Entry, columns: Iterable[str] = (*DERIVED_COLUMNS, "event")) -> str | None:
    """The first of ``columns`` in which ``entry`` is not what its event bytes say, or ``None``.
    An event that cannot be read at all is reported as column ``event``."""
    try:
        parsed = orjson.loads(entry.event)
        expected = _derived(entry.tenant, parsed)
        if "event" in columns:
            expected["event"] = canonical_event(parsed)
    except (ValueError, TypeError, AttributeError):
        return "event"
    for column in columns:
        if getattr(entry, column) != expected[column]:
            return column
    return None


class AuditLog:
    """The audit logs of all tenants in one database.

    ``signer`` signs checkpoints (without one, the sequencer makes none). ``origin`` prefixes the name
    of each tenant's log created from now on (``<origin>/<tenant>``, C2SP style without a scheme, e.g.
    ``dho-share.api.example.no/audit``); the name is stored with the log's head when the log is created
    and every checkpoint of that log is signed under the stored name (``log_name``), so serving the
    database under another URL or prefix never renames an existing log.
    ``checkpoint_every`` and ``checkpoint_interval`` (seconds) set when the sequencer signs.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        signer: AuditSigner | None = None,
        origin: str = DEFAULT_ORIGIN,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ):
        if checkpoint_every < 1 or checkpoint_interval < 0:
            raise ValueError("checkpoint_every must be >= 1 and checkpoint_interval >= 0")
        self.engine = engine
        self.signer = signer
        self.origin = origin.rstrip("/")
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.clock = clock

    def origin_of(self, tenant: str) -> str:
        """The log name in ``tenant``'s checkpoints (``log_name``)."""
        return self.log_name(tenant)

    def default_name(self, tenant: str) -> str:
        """The name a new log of ``tenant`` gets: ``<origin>/<tenant>``."""
        return f"{self.origin}/{tenant}"

    def log_name(self, tenant: str) -> str:
        """``tenant``'s log name as stored when the log was created (``default_name`` for a log not
        created yet)."""
        with self._reading() as conn:
            stored = conn.execute(select(h.c.origin).where(h.c.tenant == tenant)).scalar()
        return stored if isinstance(stored, str) and stored else self.default_name(tenant)

    def _now(self) -> int:
        return int(self.clock() * 1_000_000)

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- the request path ---------------------------------------------------------------------------

    def append(self, conn: Connection | None, tenant: str, event: Mapping[str, Any]) -> int:
        """Add ``event`` (AuditEvent JSON built by ``events``) to ``tenant``'s log as a pending entry.

        Runs in ``conn``'s open transaction, which must be a write transaction on SQLite
        (``execution_options(write=True)``, so ``BEGIN IMMEDIATE``) and which the caller commits
        before sending any data the event records. With ``conn=None`` the INSERT is its own
        transaction, committed when ``append`` returns: on PostgreSQL one statement in autocommit
        straight through the driver (``store.one_statement``; PostgreSQL commits it, durably with
        ``synchronous_commit`` on, before it answers), on SQLite a write transaction of its own.
        Returns the entry's row id. Raises ``ValueError`` for an event that is not one this package
        builds or has no canonical form, and lets every database error through (the caller answers 503).
        """
        return self._append(conn, tenant, lambda: entry_row(tenant, event))

    def record(self, conn: Connection | None, facts: AuditFacts) -> list[int]:
        """``append`` the events of ``facts`` (``events.build_audit_events``: one per request) to
        ``facts.tenant``'s log, in ``conn``'s transaction or (``None``) one of its own, as ``append``
        does; its row is made from the facts (``facts_row``), without building the event's ``dict``."""
        return [self._append(conn, facts.tenant, lambda: facts_row(facts))]

    def _append(self, conn: Connection | None, tenant: str, row: Callable[[], dict[str, Any]]) -> int:
        if conn is None and self.engine.dialect.name != "postgresql":
            with self._writing() as own:
                return self._append(own, tenant, row)
        if conn is not None and not conn.in_transaction():
            raise ValueError("append runs inside the caller's open transaction")
        if (
            conn is not None
            and conn.dialect.name == "sqlite"
            and not conn.get_execution_options().get("write")
        ):
            raise ValueError("on SQLite, append needs a write transaction (execution_options(write=True))")
        if not tenant or len(tenant) > 32:
            raise ValueError("tenant must be a non-empty string of at most 32 characters")
        try:
            if conn is None:
                rows = one_statement.run(
                    self.engine,
                    _insert_returning(self.engine.dialect),
                    row(),
                    write=True,
                )
                row_id = rows[0].id if rows else None
            else:
                result = conn.execute(_INSERT, row())
                row_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        except IntegrityError as exc:
            if _missing_partition(exc):  # the parameters stay out of the error: they name a patient
                cause = exc.orig if exc.orig is not None else exc
                raise MissingPartition(str(_INSERT), None, cause, hide_parameters=True) from None
            raise
        if not isinstance(row_id, int):
            raise RuntimeError("the database returned no row id for the audit entry")
        return row_id

    # -- the sequencer ------------------------------------------------------------------------------

    def pending_tenants(self) -> list[str]:
        """Tenants with pending entries, and (with a signer) tenants whose tree has grown since the last
        checkpoint."""
        with self._reading() as conn:
            found = set(conn.execute(select(e.c.tenant).where(e.c.seq.is_(None)).distinct()).scalars().all())
            if self.signer is not None:
                found.update(
                    conn.execute(select(h.c.tenant).where(h.c.size > h.c.checkpoint_size)).scalars().all()
                )
        return sorted(found)

    def sequence(self, tenant: str | None = None, max_batch: int = 1000, *, wait: bool = True) -> int:
        """Sequence one batch of at most ``max_batch`` pending entries of ``tenant`` (or of each tenant
        with pending entries); returns how many entries got an index. See the module docstring.

        ``wait=False`` (the background sequencers) skips a tenant whose head another sequencer holds
        instead of queueing behind it; ``wait=True`` (``drain`` before a search) waits for it.
        """
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        tenants = [tenant] if tenant is not None else self.pending_tenants()
        return sum(self._sequence_batch(t, max_batch, wait) for t in tenants)

    def drain(self, tenant: str | None = None, max_batch: int = 1000) -> int:
        """``sequence`` until nothing is pending; returns the number of entries sequenced."""
        total = 0
        while n := self.sequence(tenant, max_batch):
            total += n
        return total

    def _lock_head(self, conn: Connection, tenant: str, *, wait: bool = True) -> Any:
        """The tenant's head row, locked for this transaction (created when the log is new).

        With ``wait=False`` a head that another sequencer holds is skipped (``None``) instead of
        waited for (``FOR UPDATE SKIP LOCKED`` on PostgreSQL): that sequencer is doing the work. On
        SQLite the write transaction already holds the database's write lock.
        """
        skip = not wait and conn.dialect.name == "postgresql"
        stmt = select(h).where(h.c.tenant == tenant).with_for_update(skip_locked=skip)
        row = conn.execute(stmt).first()
        if row is None:
            now = self._now()
            values = {
                "tenant": tenant,
                "size": 0,
                "root": EMPTY_ROOT,
                "peaks": b"",
                "checkpoint_size": 0,
                "checkpoint_at": now,
                "updated": now,
                "origin": self.default_name(tenant),
            }
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(dialect.insert(h).values(**values).on_conflict_do_nothing(index_elements=["tenant"]))
            row = conn.execute(stmt).first()
            if row is None:
                if skip:
                    return None
                raise LogCorrupted(f"audit log of {tenant}: its head row cannot be read")
        if not row.origin:  # a log from before migration 0004 without a checkpoint: name it now
            conn.execute(update(h).where(h.c.tenant == tenant).values(origin=self.default_name(tenant)))
            row = conn.execute(stmt).one()
        # max() ignores NULLs; saying so lets SQLite use the partial ix_audit_entries_seq (0007)
        top = conn.execute(
            select(func.max(e.c.seq)).where(e.c.tenant == tenant, e.c.seq.is_not(None))
        ).scalar()
        if (top if top is not None else -1) != row.size - 1:
            raise LogCorrupted(f"audit log of {tenant}: head says {row.size} entries, highest index is {top}")
        return row

    def _store_leaves(
        self,
        conn: Connection,
        tenant: str,
        ids: list[int],
        recorded: list[int],
        leaves: list[bytes],
        first: int,
    ) -> None:
        """Give the pending entries ``ids`` (recorded at ``recorded``: the partition key, with ``id`` the
        primary key) the indexes ``first, first + 1, ...`` and their leaf hashes, in one set-based
        statement on PostgreSQL (``UPDATE ... FROM unnest(...)``). Only a pending entry may be updated
        (the append-only trigger refuses anything else, and claims each index in ``audit_seq_claims``:
        an index given twice is a unique violation, AUD-09); a count that does not match means the log
        changed under the lock: ``LogCorrupted``, the batch rolls back."""
        if not ids:
            return
        seqs = list(range(first, first + len(ids)))
        if conn.dialect.name == "postgresql":
            params = {"ids": ids, "recorded": recorded, "seqs": seqs, "leaves": leaves}
            result = conn.execute(_SET_LEAVES_PG, params)
            done = result.rowcount
        else:
            rows = [
                {"b_id": i, "b_seq": s, "b_leaf": leaf} for i, s, leaf in zip(ids, seqs, leaves, strict=True)
            ]
            done = conn.execute(_SET_LEAF, rows).rowcount
        if done != len(ids):
            raise LogCorrupted(
                f"audit log of {tenant}: {done} of {len(ids)} pending entries could be sequenced"
            )

    def _sign(self, conn: Connection, head: Any, state: TreeState, now: int) -> None:
        assert self.signer is not None
        root = state.root()
        tenant = head.tenant
        note = self.signer.sign(CheckpointBody(head.origin, state.size, root))
        conn.execute(insert(c).values(tenant=tenant, size=state.size, root=root, created=now, note=note))

    def _sequence_batch(self, tenant: str, max_batch: int, wait: bool = True) -> int:
        with self._writing() as conn:
            head = self._lock_head(conn, tenant, wait=wait)
            if head is None:
                return 0  # another sequencer holds this tenant's head
            rows = binary_rows.rows(conn, _pending(conn.dialect), {"tenant": tenant, "limit": max_batch})
            state = TreeState.unpack(head.size, head.peaks)
            now = self._now()
            signed_size, signed_at = head.checkpoint_size, head.checkpoint_at
            ids: list[int] = []
            recorded: list[int] = []
            leaves: list[bytes] = []
            first = state.size
            for row in rows:
                leaf = entry_leaf(bytes(row.event), state.size)
                state.append(leaf)
                ids.append(row.id)
                recorded.append(row.recorded)
                leaves.append(leaf)
                if self.signer is not None and state.size - signed_size >= self.checkpoint_every:
                    self._sign(conn, head, state, now)
                    signed_size, signed_at = state.size, now
            self._store_leaves(conn, tenant, ids, recorded, leaves, first)
            due = now - signed_at >= self.checkpoint_interval * 1_000_000
            if self.signer is not None and state.size > signed_size and due:
                self._sign(conn, head, state, now)
                signed_size, signed_at = state.size, now
            if ids or signed_size != head.checkpoint_size:
                conn.execute(
                    update(h)
                    .where(h.c.tenant == tenant)
                    .values(
                        size=state.size,
                        root=state.root(),
                        peaks=state.pack(),
                        checkpoint_size=signed_size,
                        checkpoint_at=signed_at,
                        updated=now,
                    )
                )
        return len(rows)

    def checkpoint(self, tenant: str) -> Checkpoint | None:
        """Sign ``tenant``'s tree as it is now, unless its latest checkpoint already covers it; return the
        latest checkpoint (``None`` for an empty log). Needs a signer."""
        if self.signer is None:
            raise ValueError("checkpoints need a signer")
        with self._writing() as conn:
            head = self._lock_head(conn, tenant)
            if head.size > head.checkpoint_size:
                now = self._now()
                self._sign(conn, head, TreeState.unpack(head.size, head.peaks), now)
                conn.execute(
                    update(h)
                    .where(h.c.tenant == tenant)
                    .values(checkpoint_size=head.size, checkpoint_at=now, updated=now)
                )
        return self.latest_checkpoint(tenant)

    # -- monthly partitions (PostgreSQL) ------------------------------------------------------------

    def ensure_partitions(self, ahead: int = audit_partitions.AHEAD) -> list[audit_partitions.Month]:
        """Create ``audit_entries``' partitions from this month to ``ahead`` months on
        (``store.audit_partitions.ensure``); returns the months created (none on SQLite)."""
        return audit_partitions.ensure(self.engine, now=self._clock_time(), ahead=ahead)

    def partition_status(
        self, ahead: int = audit_partitions.AHEAD
    ) -> audit_partitions.PartitionStatus | None:
        """Which months from this one to ``ahead`` on lack a partition (``None`` on SQLite)."""
        return audit_partitions.status(self.engine, now=self._clock_time(), ahead=ahead)

    def _clock_time(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # -- proofs and checkpoints ---------------------------------------------------------------------

    def head(self, tenant: str) -> TreeHead | None:
        with self._reading() as conn:
            row = conn.execute(select(h).where(h.c.tenant == tenant)).first()
        if row is None:
            return None
        return TreeHead(tenant, row.size, bytes(row.root), row.checkpoint_size, row.checkpoint_at)

    def leaf_hashes(self, tenant: str, size: int) -> list[bytes]:
        """The stored leaf hashes of indexes ``0 .. size-1``; ``LogCorrupted`` if one is missing.
        Reads ``32 * size`` bytes: proofs over large logs cost O(n) here (no tile cache yet)."""
        with self._reading() as conn:
            rows = conn.execute(
                select(e.c.seq, e.c.leaf).where(e.c.tenant == tenant, e.c.seq < size).order_by(e.c.seq)
            ).all()
        if len(rows) != size or (rows and rows[-1].seq != size - 1):
            raise LogCorrupted(f"audit log of {tenant} has {len(rows)} of the first {size} entries")
        return [bytes(r.leaf) for r in rows]

    def root_at(self, tenant: str, size: int) -> bytes:
        """The Merkle root of ``tenant``'s first ``size`` entries, from the stored leaf hashes."""
        return root_from_leaf_hashes(self.leaf_hashes(tenant, size))

    def inclusion_proof(self, tenant: str, index: int, size: int) -> list[bytes]:
        """RFC 9162 §2.1.3 proof that entry ``index`` is in the tree of the first ``size`` entries."""
        return inclusion_proof(self.leaf_hashes(tenant, size), index)

    def consistency_proof(self, tenant: str, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 §2.1.4 proof that the first ``old_size`` entries begin the first ``new_size``."""
        return consistency_proof(self.leaf_hashes(tenant, new_size), old_size)

    def checkpoints(self, tenant: str, from_size: int = 0, to_size: int | None = None) -> list[Checkpoint]:
        """``tenant``'s stored checkpoints with ``from_size <= size <= to_size``, by size."""
        where = [c.c.tenant == tenant, c.c.size >= from_size]
        if to_size is not None:
            where.append(c.c.size <= to_size)
        with self._reading() as conn:
            rows = conn.execute(select(c).where(*where).order_by(c.c.size)).all()
        return [Checkpoint(r.tenant, r.size, bytes(r.root), r.created, r.note) for r in rows]

    def latest_checkpoint(self, tenant: str) -> Checkpoint | None:
        with self._reading() as conn:
            r = conn.execute(select(c).where(c.c.tenant == tenant).order_by(c.c.size.desc()).limit(1)).first()
        return Checkpoint(r.tenant, r.size, bytes(r.root), r.created, r.note) if r else None

    # -- reading the log ----------------------------------------------------------------------------

    def search(
        self,
        tenant: str,
        *,
        patient: str | tuple[str, str] | None = None,
        agent_hpr: str | None = None,
        organisation: str | None = None,
        purpose: str | Iterable[str] | None = None,
        outcome: Outcome | Iterable[Outcome] | None = None,
        action: AuditAction | Iterable[AuditAction] | None = None,
        date_from: datetime | None = None,
        date_to: datetime | None = None,
        count: int = 50,
        after_seq: int | None = None,
        newest_first: bool = False,
        sequence_first: bool = True,
    ) -> list[Entry]:
        """Entries of ``tenant`` matching every filter given, by sequence number.

        ``patient`` is the identifier value, or ``(system, value)``; ``date_from`` is inclusive and
        ``date_to`` exclusive (aware datetimes, compared with ``AuditEvent.recorded``); ``purpose``,
        ``outcome`` and ``action`` take one value or several. At most ``count`` entries (capped at
        1,000), after ``after_seq`` in the chosen order (oldest first unless ``newest_first``): pass
        the last entry's ``seq`` to get the next page. Pending entries are sequenced first (module
        docstring).
        """
        if sequence_first:
            self.drain(tenant)
        where = self._filters(
            tenant, patient, agent_hpr, organisation, purpose, outcome, action, date_from, date_to
        )
        where.append(e.c.seq.is_not(None))
        if after_seq is not None:
            where.append(e.c.seq < after_seq if newest_first else e.c.seq > after_seq)
        order = e.c.seq.desc() if newest_first else e.c.seq.asc()
        limit = max(1, min(count, MAX_COUNT))
        with self._reading() as conn:
            rows = conn.execute(select(e).where(*where).order_by(order).limit(limit)).all()
        found = [_entry(r) for r in rows]
        for entry in found:  # what a reader is shown must be what the signed event says
            if (column := column_mismatch(entry, DERIVED_COLUMNS)) is not None:
                raise LogCorrupted(
                    f"audit log of {tenant}: index {entry.seq} column {column} is not its event's"
                )
        return found

    @staticmethod
    def _filters(
        tenant: str,
        patient: str | tuple[str, str] | None,
        agent_hpr: str | None,
        organisation: str | None,
        purpose: str | Iterable[str] | None,
        outcome: Outcome | Iterable[Outcome] | None,
        action: AuditAction | Iterable[AuditAction] | None,
        date_from: datetime | None,
        date_to: datetime | None,
    ) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [e.c.tenant == tenant]
        if isinstance(patient, tuple):
            where.append(and_(e.c.patient_system == patient[0], e.c.patient_value == patient[1]))
        elif patient is not None:
            where.append(e.c.patient_value == patient)
        if agent_hpr is not None:
            where.append(e.c.agent_hpr == agent_hpr)
        if organisation is not None:
            where.append(e.c.organisation == organisation)
        for column, value in ((e.c.purpose, purpose), (e.c.outcome, outcome), (e.c.action, action)):
            if isinstance(value, str):
                where.append(column == str(value))
            elif value is not None:
                where.append(column.in_([str(v) for v in value]))
        for bound, inclusive in ((date_from, True), (date_to, False)):
            if bound is not None:
                if bound.utcoffset() is None:
                    raise ValueError("search dates must be timezone-aware")
                where.append(e.c.recorded >= micros(bound) if inclusive else e.c.recorded < micros(bound))
        return where

    def entry(self, tenant: str, seq: int) -> Entry | None:
        """``tenant``'s sequenced entry with index ``seq`` (its FHIR id), checked against its event like
        ``search``'s results; ``None`` if the log has no such index."""
        with self._reading() as conn:
            row = conn.execute(select(e).where(e.c.tenant == tenant, e.c.seq == seq)).first()
        if row is None:
            return None
        found = _entry(row)
        if (column := column_mismatch(found, DERIVED_COLUMNS)) is not None:
            raise LogCorrupted(f"audit log of {tenant}: index {seq} column {column} is not its event's")
        return found

    def entries_at(self, tenant: str, seqs: Iterable[int]) -> list[Entry]:
        """``tenant``'s sequenced entries with the indexes ``seqs`` (those the log has), by index, each
        checked against its event like ``entry``'s; read in batches of ``MAX_COUNT``."""
        wanted = sorted(set(seqs))
        found: list[Entry] = []
        for i in range(0, len(wanted), MAX_COUNT):
            with self._reading() as conn:
                rows = conn.execute(
                    select(e)
                    .where(e.c.tenant == tenant, e.c.seq.in_(wanted[i : i + MAX_COUNT]))
                    .order_by(e.c.seq)
                ).all()
            for row in rows:
                entry = _entry(row)
                if (column := column_mismatch(entry, DERIVED_COLUMNS)) is not None:
                    raise LogCorrupted(
                        f"audit log of {tenant}: index {entry.seq} column {column} is not its event's"
                    )
                found.append(entry)
        return found

    def entries(self, tenant: str, from_seq: int = 0, to_seq: int | None = None) -> Iterator[Entry]:
        """Sequenced entries with ``from_seq <= seq < to_seq`` (all from ``from_seq`` if ``to_seq`` is None),
        by sequence number, read in batches (each batch its own short read transaction)."""
        last = from_seq - 1
        while True:
            where = [e.c.tenant == tenant, e.c.seq > last]
            if to_seq is not None:
                where.append(e.c.seq < to_seq)
            with self._reading() as conn:
                rows = conn.execute(select(e).where(*where).order_by(e.c.seq).limit(_EXPORT_BATCH)).all()
            if not rows:
                return
            for row in rows:
                yield _entry(row)
            last = rows[-1].seq

    def stored_entries(self, tenant: str) -> Iterator[Entry]:
        """Every entry of ``tenant`` as stored: the sequenced ones by index, then the pending ones by row
        id, read in batches (for ``stored_check``)."""
        yield from self.entries(tenant)
        last = 0
        while True:
            with self._reading() as conn:
                rows = conn.execute(
                    select(e)
                    .where(e.c.tenant == tenant, e.c.seq.is_(None), e.c.id > last)
                    .order_by(e.c.id)
                    .limit(_EXPORT_BATCH)
                ).all()
            if not rows:
                return
            yield from (_entry(r) for r in rows)
            last = rows[-1].id

    def export(self, tenant: str, from_seq: int = 0, to_seq: int | None = None) -> Iterator[bytes]:
        """The NDJSON export (``export_format``) of entries ``from_seq <= seq < to_seq``.

        ``to_seq`` defaults to everything sequenced. The header carries the compact range of the first
        ``from_seq`` leaves (read from the stored leaf hashes); then come every stored checkpoint with
        ``from_seq <= size <= to_seq`` (all from ``from_seq`` when ``to_seq`` is None, so a checkpoint
        that covers entries no longer stored shows up as truncation); then the entries.
        """
        if from_seq < 0 or (to_seq is not None and to_seq < from_seq):
            raise ValueError("need 0 <= from_seq <= to_seq")
        state = TreeState()
        if from_seq:
            state.extend(self.leaf_hashes(tenant, from_seq))
        yield header_line(self.origin_of(tenant), from_seq, state.peaks)
        for checkpoint in self.checkpoints(tenant, from_seq, to_seq):
            yield checkpoint_line(checkpoint.note)
        for entry in self.entries(tenant, from_seq, to_seq):
            assert entry.seq is not None
            assert entry.leaf is not None
            yield entry_line(entry.event, entry.seq, entry.leaf)

    def report(
        self,
        tenant: str,
        date_from: datetime,
        date_to: datetime,
        *,
        volume_threshold: int = 50,
        request_threshold: int = 500,
        agreements: Iterable[AgreementPeriod] | AgreementCheck | None = None,
        max_findings: int = 1000,
        sequence_first: bool = True,
    ) -> LogControlReport:
        """Log control of ``tenant`` over ``[date_from, date_to)``: emergency accesses, denied attempts,
        health workers reading more than ``volume_threshold`` distinct patients, and (given
        ``agreements``) reads outside a valid sharing agreement. See ``control.log_control``."""
        if sequence_first:
            self.drain(tenant)
        return log_control(
            self.engine,
            tenant,
            date_from,
            date_to,
            volume_threshold=volume_threshold,
            request_threshold=request_threshold,
            agreements=agreements,
            max_findings=max_findings,
        )
