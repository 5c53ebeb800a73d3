"""Tenants and observations (current version, history, search tokens, business identifiers).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("orgnr", sa.String(9), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("resh_ids", sa.Text, nullable=False, server_default=""),
        sa.Column("opt_in", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("created", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "observations",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.BigInteger, nullable=False),
        sa.Column("patient_system", sa.String(64), nullable=False),
        sa.Column("patient_value", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(256), nullable=False),
        sa.Column("effective_start", sa.BigInteger, nullable=False),
        sa.Column("effective_end", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id"),
    )
    op.create_index(
        "ix_observations_patient_date",
        "observations",
        ["tenant", "patient_value", "patient_system", "effective_start"],
    )
    op.create_index("ix_observations_last_updated", "observations", ["tenant", "last_updated"])
    op.create_table(
        "observation_tokens",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("observation_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(16), nullable=False),
        sa.Column("system", sa.String(256), nullable=False),
        sa.Column("code", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "observation_id", "param", "system", "code"),
    )
    op.create_index("ix_observation_tokens_code", "observation_tokens", ["tenant", "param", "code", "system"])
    op.create_table(
        "observation_identifiers",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("system", sa.String(256), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("observation_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "system", "value"),
    )
    op.create_index(
        "ix_observation_identifiers_observation", "observation_identifiers", ["tenant", "observation_id"]
    )
    op.create_table(
        "observation_history",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", "version_id"),
    )


def downgrade() -> None:
    for table in (
        "observation_history",
        "observation_identifiers",
        "observation_tokens",
        "observations",
        "tenants",
    ):
        op.drop_table(table)
