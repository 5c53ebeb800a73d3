"""Checking the stored log in place: the Merkle tree *and* every column a query filters on.

The auditor's search, the log-control report and the patient's access log filter on columns stored
beside each event (``patient_value``, ``agent_hpr``, ``organisation``, ``outcome``, ``purpose``,
``action``, ``recorded``, ...; ``AuditLog.append`` derives them from the event with
``terms.search_terms``). The signed Merkle tree covers only the event bytes, so an edited column would
hide an event from those queries while the export still verifies (issue 13). ``check_stored_log``
closes that gap (security-tests AUD-06/AUD-08 applied to the database itself):

1. the log as the database holds it is exported and verified against the pinned key
   (``verify.verify``: every leaf recomputed, the tree rebuilt, each signed checkpoint matched, no
   index missing, inserted or moved; the checkpoints must name the log's stored name);
2. every entry, sequenced or pending, has each column recomputed from its event bytes
   (``log.entry_row``); the first difference is named by index (or row id while pending) and column.

A report with ``ok`` true means: every row a query can return says exactly what its signed event says.
``dho-share audit verify --database TENANT`` runs it; the console's integrity page calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sharing_api.audit.checkpoints import NoteVerifier
from sharing_api.audit.log import DERIVED_COLUMNS, AuditLog, column_mismatch
from sharing_api.audit.verify import Problem, VerificationReport, verify

__all__ = ["CHECKED_COLUMNS", "StoredLogReport", "check_stored_log", "column_mismatch"]

CHECKED_COLUMNS = (*DERIVED_COLUMNS, "event")
"""Every column of ``audit_entries`` derived from the event (all but ``id``, ``tenant``, ``seq``, ``leaf``,
which the Merkle check covers: the leaf binds the event bytes and the index)."""


@dataclass(frozen=True, slots=True)
class StoredLogReport:
    """The outcome of ``check_stored_log``.

    ``tree`` is the Merkle verification of the stored log (``verify.VerificationReport``). ``rows``
    counts the entries whose columns were checked. On a column problem, ``index`` is the first bad
    entry's index (``None`` while pending; then ``entry_id`` names its row), ``column`` the first
    column that differs from the signed event, and ``detail`` says so. ``problem``/``index`` of a
    failed tree check are in ``tree`` and repeated here.
    """

    ok: bool
    tenant: str
    origin: str
    tree: VerificationReport
    rows: int
    problem: Problem | str | None = None
    index: int | None = None
    entry_id: int | None = None
    column: str | None = None
    detail: str = ""


def check_stored_log(
    log: AuditLog, tenant: str, public_key: NoteVerifier, *, trusted: str | None = None
) -> StoredLogReport:
    """Check ``tenant``'s log as stored in ``log``'s database (module docstring). Never raises for a
    bad log: every problem is in the report. Reads the whole log twice (O(n) time, O(log n) memory)."""
    origin = log.log_name(tenant)
    tree = verify(log.export(tenant), public_key, trusted=trusted)
    if not tree.ok:
        return StoredLogReport(
            False, tenant, origin, tree, 0, problem=tree.problem, index=tree.index, detail=tree.detail
        )
    if tree.origin != origin:
        detail = f"the export names log {tree.origin!r}, the database {origin!r}"
        return StoredLogReport(
            False, tenant, origin, tree, 0, problem=Problem.FORGED_CHECKPOINT, detail=detail
        )
    rows = 0
    for entry in log.stored_entries(tenant):
        rows += 1
        # a sequenced entry's bytes are bound by its leaf (checked above); a pending one's must be canonical
        column = column_mismatch(entry, DERIVED_COLUMNS if entry.seq is not None else CHECKED_COLUMNS)
        if column is not None:
            where = f"index {entry.seq}" if entry.seq is not None else f"pending row {entry.id}"
            return StoredLogReport(
                False,
                tenant,
                origin,
                tree,
                rows,
                problem="column",
                index=entry.seq,
                entry_id=entry.id,
                column=column,
                detail=f"{where}: column {column} differs from the signed event",
            )
    return StoredLogReport(True, tenant, origin, tree, rows)
