"""Treatment and self-treatment plans (issue 11): CarePlan and Goal resources with their versions, and
the categories an agreement lets the consumer change (``agreements.write_categories``).

Revision ID: 0005_careplan
Revises: 0005_console2
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_careplan"
down_revision = "0005_console2"  # chained after main's 0005_console2 (merged before this branch)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agreements", sa.Column("write_categories", sa.Text, nullable=False, server_default=""))
    op.create_table(
        "plan_resources",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("resource_type", sa.String(16), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.BigInteger, nullable=False),
        sa.Column("patient_system", sa.String(64), nullable=False),
        sa.Column("patient_value", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("period_start", sa.BigInteger, nullable=True),
        sa.Column("period_end", sa.BigInteger, nullable=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "resource_type", "id"),
    )
    op.create_index(
        "ix_plan_resources_patient",
        "plan_resources",
        ["tenant", "patient_value", "patient_system", "resource_type"],
    )
    op.create_table(
        "plan_tokens",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("resource_type", sa.String(16), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(16), nullable=False),
        sa.Column("system", sa.String(256), nullable=False),
        sa.Column("code", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "resource_type", "resource_id", "param", "system", "code"),
    )
    op.create_table(
        "plan_history",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("resource_type", sa.String(16), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.BigInteger, nullable=False),
        sa.Column("author_organisation", sa.String(16), nullable=True),
        sa.Column("author_hpr", sa.String(16), nullable=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "resource_type", "id", "version_id"),
    )


def downgrade() -> None:
    op.drop_table("plan_history")
    op.drop_table("plan_tokens")
    op.drop_index("ix_plan_resources_patient", table_name="plan_resources")
    op.drop_table("plan_resources")
    with op.batch_alter_table("agreements") as batch:
        batch.drop_column("write_categories")
