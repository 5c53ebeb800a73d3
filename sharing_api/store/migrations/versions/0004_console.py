"""The auditor console: auditor accounts, rule settings, triage, last verification (sharing_api/console).

Revision ID: 0004_console
Revises: 0004_scaleout
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_console"
down_revision = "0004_scaleout"  # chained after main's 0004 migrations (merged before this branch)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_auditors",
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default="1"),
        sa.Column("created", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "console_rule_settings",
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("rule", sa.String(8), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("threshold", sa.Integer, nullable=True),
        sa.Column("updated", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "rule"),
    )
    op.create_table(
        "console_triage",
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("flag", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("auditor", sa.String(64), nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "flag"),
    )
    op.create_table(
        "console_verifications",
        sa.Column("tenant", sa.String(32), primary_key=True),
        sa.Column("verified_at", sa.BigInteger, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("problem", sa.String(32), nullable=True),
        sa.Column("bad_index", sa.BigInteger, nullable=True),
        sa.Column("entries", sa.BigInteger, nullable=False),
        sa.Column("signed_size", sa.BigInteger, nullable=False),
        sa.Column("seconds", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
    )


def downgrade() -> None:
    for table in ("console_verifications", "console_triage", "console_rule_settings", "console_auditors"):
        op.drop_table(table)
