"""Cases (saker) of the auditor console: ``console_cases`` (one per rule hit opened as a case: state,
outcome, attached events) and ``console_case_notes`` (the case's notes and state changes in order).
sharing_api/console/cases.py.

Revision ID: 0006_console_r8
Revises: 0006_audit_parts (re-chained after main merged audit-parts; it was 0005_subs)
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_console_r8"
down_revision = "0006_audit_parts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_cases",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("flag", sa.String(128), nullable=False),
        sa.Column("seqs", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("opened_by", sa.String(64), nullable=False),
        sa.Column("opened", sa.BigInteger, nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
    )
    op.create_index("uq_console_cases_flag", "console_cases", ["tenant", "flag"], unique=True)
    op.create_table(
        "console_case_notes",
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("case_id", sa.BigInteger, nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("auditor", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_index("ix_console_case_notes_case", "console_case_notes", ["tenant", "case_id", "at"])


def downgrade() -> None:
    op.drop_table("console_case_notes")
    op.drop_table("console_cases")
