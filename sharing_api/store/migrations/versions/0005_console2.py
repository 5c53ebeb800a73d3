"""Console at scale: the dashboard's rollup tables, and a period index covering the columns it counts.

``console_rollup_state``, ``console_rollup_hours`` and ``console_rollup_actors`` hold the dashboard's
counts of each tenant's sequenced entries (sharing_api/console/rollup.py: folded in by index,
rebuildable, checked against the entries). They start empty: the first dashboard view (or
``dho-share console-rollup``) folds the existing log in. ``console_watchlist``: the controller's watch
list for log-control rule R10.

``ix_audit_entries_recorded (tenant, recorded)`` becomes ``ix_audit_entries_period (tenant, recorded,
action, outcome, purpose, patient_value, agent_hpr, organisation)``: the console's dashboard counts
(``console.aggregates``) read only these columns of one tenant's period, so PostgreSQL answers them by
an index-only scan and SQLite from the covering index, without fetching the wide rows (the event
bytes). The columns stay what they were: derived from the signed event at append time and checked
against it (docs/audit-store.md); an index holds nothing the table does not.

Revision ID: 0005_console2
Revises: 0004_console
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_console2"
down_revision = "0004_console"
branch_labels = None
depends_on = None

COLUMNS = ["tenant", "recorded", "action", "outcome", "purpose", "patient_value", "agent_hpr", "organisation"]


def upgrade() -> None:
    op.create_table(
        "console_rollup_state",
        sa.Column("tenant", sa.String(32), primary_key=True),
        sa.Column("folded", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "console_rollup_hours",
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("hour", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("refused", sa.BigInteger, nullable=False),
        sa.Column("emergency", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "hour"),
    )
    op.create_table(
        "console_rollup_actors",
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(1), nullable=False),
        sa.Column("bucket", sa.Integer, nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("days", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "kind", "bucket", "value"),
    )
    op.create_table(
        "console_watchlist",
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("patient_value", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("added_by", sa.String(64), nullable=False),
        sa.Column("added", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "patient_value"),
    )
    op.create_index("ix_audit_entries_period", "audit_entries", COLUMNS)
    op.drop_index("ix_audit_entries_recorded", table_name="audit_entries")


def downgrade() -> None:
    for table in (
        "console_watchlist",
        "console_rollup_actors",
        "console_rollup_hours",
        "console_rollup_state",
    ):
        op.drop_table(table)
    op.create_index("ix_audit_entries_recorded", "audit_entries", ["tenant", "recorded"])
    op.drop_index("ix_audit_entries_period", table_name="audit_entries")
