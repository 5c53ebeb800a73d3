"""Durable revocations and replay epochs: state that survives Redis loss (auth/replaystate.py).

Revision ID: 0004_scaleout
Revises: 0004_fhir_write
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_scaleout"
down_revision = "0004_fhir_write"  # after the other 0004 migrations, merged first
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revoked_tokens",
        sa.Column("jti_sha256", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])
    op.create_table(
        "replay_epochs",
        sa.Column("deployment", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("began_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("replay_epochs")
    op.drop_index("ix_revoked_tokens_expires_at", table_name="revoked_tokens")
    op.drop_table("revoked_tokens")
