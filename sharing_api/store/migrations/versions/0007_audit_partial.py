"""Audit log: each index of ``audit_entries`` holds only the entries its queries can ask for (issue 12).

An entry is written twice: appended pending (``seq`` NULL) on the request path, then given its index
and leaf by the sequencer, an UPDATE of ``seq`` that PostgreSQL cannot make HOT (``seq`` is indexed), so
it adds the row's new version to every index whose predicate it meets. Before, all seven indexes took
both versions (14 index entries per event). The queries that read ``ix_audit_entries_seq``, ``_patient``,
``_agent`` and ``_organisation`` all ask for sequenced entries (``seq IS NOT NULL``, or a comparison on
``seq``, which implies it); the queries that read ``ix_audit_entries_pending`` (the sequencer, its list
of tenants, the stored check's pending rows) all ask for ``seq IS NULL``. So:

* ``ix_audit_entries_seq``, ``_patient``, ``_agent``, ``_organisation``: ``WHERE seq IS NOT NULL``
  (an append no longer touches them);
* ``ix_audit_entries_pending``: ``(tenant, id) WHERE seq IS NULL`` (was ``(seq, tenant, id)`` over every
  entry; the sequencer's update no longer adds to it, and it stays as small as the backlog).

Per event: 3 index entries at append (primary key, pending, period) and 6 at sequencing, instead of 7
and 7. Same columns, same names; the queries are unchanged (``tests/audit/test_audit_indexes.py``
EXPLAINs them). PostgreSQL builds the partitioned indexes on every month's partition (the appends wait
for it: on a large log, run this migration in a quiet hour).

Revision ID: 0007_audit_partial
Revises: 0006_console_r8
"""

from alembic import op

revision = "0007_audit_partial"
down_revision = "0006_console_r8"
branch_labels = None
depends_on = None

SEQUENCED = {
    "ix_audit_entries_seq": "tenant, seq",
    "ix_audit_entries_patient": "tenant, patient_value, seq",
    "ix_audit_entries_agent": "tenant, agent_hpr, seq",
    "ix_audit_entries_organisation": "tenant, organisation, seq",
}
PENDING = ("ix_audit_entries_pending", "tenant, id", "seq, tenant, id")  # name, new columns, old columns


def upgrade() -> None:
    for name, columns in SEQUENCED.items():
        op.execute(f"DROP INDEX {name}")
        op.execute(f"CREATE INDEX {name} ON audit_entries ({columns}) WHERE seq IS NOT NULL")
    op.execute(f"DROP INDEX {PENDING[0]}")
    op.execute(f"CREATE INDEX {PENDING[0]} ON audit_entries ({PENDING[1]}) WHERE seq IS NULL")


def downgrade() -> None:
    for name, columns in SEQUENCED.items():
        op.execute(f"DROP INDEX {name}")
        op.execute(f"CREATE INDEX {name} ON audit_entries ({columns})")
    op.execute(f"DROP INDEX {PENDING[0]}")
    op.execute(f"CREATE INDEX {PENDING[0]} ON audit_entries ({PENDING[2]})")
