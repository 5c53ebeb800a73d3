"""Tenants may allow measurement codes outside the vital-sign table (``tenants.allow_unknown_codes``).

Revision ID: 0004_fhir_write
Revises: 0004_perf (chained after main's migrations when merging)
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_fhir_write"
down_revision = "0004_perf"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("allow_unknown_codes", sa.Boolean, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("allow_unknown_codes")
