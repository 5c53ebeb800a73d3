"""The tamper-evident audit log: entries, per-tenant tree heads, signed checkpoints (sharing_api/audit).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=True),
        sa.Column("leaf", sa.LargeBinary, nullable=True),
        sa.Column("recorded", sa.BigInteger, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(2), nullable=False),
        sa.Column("purpose", sa.String(8), nullable=True),
        sa.Column("patient_system", sa.String(64), nullable=True),
        sa.Column("patient_value", sa.String(64), nullable=True),
        sa.Column("agent_hpr", sa.String(16), nullable=True),
        sa.Column("organisation", sa.String(16), nullable=True),
        sa.Column("client_id", sa.String(128), nullable=True),
        sa.Column("event", sa.LargeBinary, nullable=False),
    )
    op.create_index("uq_audit_entries_tenant_seq", "audit_entries", ["tenant", "seq"], unique=True)
    op.create_index("ix_audit_entries_pending", "audit_entries", ["seq", "tenant", "id"])
    op.create_index("ix_audit_entries_patient", "audit_entries", ["tenant", "patient_value", "seq"])
    op.create_index("ix_audit_entries_agent", "audit_entries", ["tenant", "agent_hpr", "seq"])
    op.create_index("ix_audit_entries_organisation", "audit_entries", ["tenant", "organisation", "seq"])
    op.create_index("ix_audit_entries_recorded", "audit_entries", ["tenant", "recorded"])
    op.create_table(
        "audit_heads",
        sa.Column("tenant", sa.String(32), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("peaks", sa.LargeBinary, nullable=False),
        sa.Column("checkpoint_size", sa.BigInteger, nullable=False),
        sa.Column("checkpoint_at", sa.BigInteger, nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "size"),
    )


def downgrade() -> None:
    for table in ("audit_checkpoints", "audit_heads", "audit_entries"):
        op.drop_table(table)
