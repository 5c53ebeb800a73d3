"""Topic-based subscriptions and the durable notification outbox (sharing_api/subscriptions).

Revision ID: 0005_subs
Revises: 0005_careplan
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_subs"
down_revision = "0005_careplan"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("patient_system", sa.String(64), nullable=False),
        sa.Column("patient_value", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(256), nullable=False),
        sa.Column("consumer", sa.String(9), nullable=False),
        sa.Column("point_of_care", sa.String(9), nullable=True),
        sa.Column("practitioner_hpr", sa.String(16), nullable=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("payload", sa.String(16), nullable=False),
        sa.Column("end_at", sa.BigInteger, nullable=True),
        sa.Column("events", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id"),
    )
    op.create_index(
        "ix_subscriptions_patient", "subscriptions", ["tenant", "topic", "patient_value", "patient_system"]
    )
    op.create_index("ix_subscriptions_consumer", "subscriptions", ["tenant", "consumer"])
    op.create_table(
        "notification_outbox",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("tenant", sa.String(9), nullable=False),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("event_number", sa.BigInteger, nullable=False),
        sa.Column("focus", sa.String(256), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt", sa.BigInteger, nullable=False),
        sa.Column("lease_until", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_result", sa.Text, nullable=True),
    )
    op.create_index("ix_notification_outbox_due", "notification_outbox", ["state", "next_attempt"])


def downgrade() -> None:
    op.drop_index("ix_notification_outbox_due", "notification_outbox")
    op.drop_table("notification_outbox")
    op.drop_index("ix_subscriptions_consumer", "subscriptions")
    op.drop_index("ix_subscriptions_patient", "subscriptions")
    op.drop_table("subscriptions")
