"""Client systems, sharing agreements, patients' directives, and tenant policy settings.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("orgnr", sa.String(9), nullable=False),
        sa.Column("point_of_care", sa.String(9), nullable=True),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("jwks", sa.Text, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default="1"),
        sa.Column("created", sa.BigInteger, nullable=False),
    )

    op.create_table(
        "agreements",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("controller", sa.String(9), nullable=False),
        sa.Column("consumer", sa.String(9), nullable=False),
        sa.Column("categories", sa.Text, nullable=False),
        sa.Column("purposes", sa.Text, nullable=False),
        sa.Column("valid_from", sa.BigInteger, nullable=False),
        sa.Column("valid_to", sa.BigInteger, nullable=True),
        sa.Column("data_from", sa.BigInteger, nullable=True),
        sa.Column("data_to", sa.BigInteger, nullable=True),
        sa.Column("created", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_agreements_parties", "agreements", ["controller", "consumer"])
    op.create_table(
        "directives",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.BigInteger, nullable=False),
        sa.Column("patient_system", sa.String(64), nullable=False),
        sa.Column("patient_value", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id"),
    )
    op.create_index("ix_directives_patient", "directives", ["tenant", "patient_value", "patient_system"])
    op.create_table(
        "directive_history",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", "version_id"),
    )
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("processors", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("emergency_override", sa.Boolean, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("emergency_override")
        batch.drop_column("processors")
    for table in ("directive_history", "directives", "agreements", "clients"):
        op.drop_table(table)
