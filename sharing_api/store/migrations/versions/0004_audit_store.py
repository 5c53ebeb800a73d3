"""Audit log: a stable log name kept in the database; append-only triggers on PostgreSQL.

* ``audit_heads.origin``: each tenant's log name as its checkpoints carry it (C2SP tlog-checkpoint
  origin line). Existing logs keep the name their latest checkpoint was signed under (read from that
  note's first line), so every stored checkpoint still verifies; logs without a checkpoint get the
  configured name when the sequencer next touches them.
* PostgreSQL: ``audit_entries`` and ``audit_checkpoints`` refuse UPDATE and DELETE, except the
  sequencer's one legitimate update (a pending entry getting its index and leaf hash, nothing else
  changed). TRUNCATE is not covered by row triggers: revoke it from the application's role (README).

Revision ID: 0004_audit_store
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_audit_store"
down_revision = "0003"
branch_labels = None
depends_on = None

_ENTRIES_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION dho_audit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    IF OLD.seq IS NULL AND NEW.seq IS NOT NULL AND NEW.leaf IS NOT NULL
       AND (NEW.id, NEW.tenant, NEW.recorded, NEW.action, NEW.outcome, NEW.purpose, NEW.patient_system,
            NEW.patient_value, NEW.agent_hpr, NEW.organisation, NEW.client_id, NEW.event)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.tenant, OLD.recorded, OLD.action, OLD.outcome, OLD.purpose, OLD.patient_system,
            OLD.patient_value, OLD.agent_hpr, OLD.organisation, OLD.client_id, OLD.event)
    THEN
      RETURN NEW;  -- the sequencer gives a pending entry its index and leaf hash, once
    END IF;
  END IF;
  RAISE EXCEPTION 'audit_entries is append-only: % refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
"""
_CHECKPOINTS_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION dho_audit_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_checkpoints is append-only: % refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
"""
_TABLES = {
    "audit_entries": "dho_audit_entries_append_only",
    "audit_checkpoints": "dho_audit_checkpoints_append_only",
}


def _is_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    with op.batch_alter_table("audit_heads") as batch:
        batch.add_column(sa.Column("origin", sa.String(255), nullable=True))
    conn = op.get_bind()
    notes = conn.execute(
        sa.text(
            "SELECT c.tenant, c.note FROM audit_checkpoints c"
            " JOIN (SELECT tenant, max(size) AS size FROM audit_checkpoints GROUP BY tenant) m"
            " ON m.tenant = c.tenant AND m.size = c.size"
        )
    ).all()
    for tenant, note in notes:
        conn.execute(
            sa.text("UPDATE audit_heads SET origin = :origin WHERE tenant = :tenant"),
            {"origin": note.split("\n", 1)[0], "tenant": tenant},
        )
    if _is_postgresql():
        op.execute(_ENTRIES_APPEND_ONLY)
        op.execute(_CHECKPOINTS_APPEND_ONLY)
        for table, function in _TABLES.items():
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
                f" FOR EACH ROW EXECUTE FUNCTION {function}()"
            )


def downgrade() -> None:
    if _is_postgresql():
        for table, function in _TABLES.items():
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    with op.batch_alter_table("audit_heads") as batch:
        batch.drop_column("origin")
