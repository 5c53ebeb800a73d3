"""Search tokens carry the patient and effective time; open periods are indexed as ongoing.

A search for one patient, one code and a period becomes one range scan of
``ix_observation_tokens_patient`` (tenant, patient, code, effective time) and a primary-key lookup
per hit, instead of a scan of every token of the tenant for the code (issue 12). The old
``ix_observation_tokens_code`` (tenant, code) is dropped so that plan is not on offer.

An ``effectivePeriod`` without ``end`` was indexed as an instant; it is ongoing (FHIR R4 Period), so
its end becomes the open-end sentinel (``sharing_api.fhir.dates.OPEN_END``, repeated here because a
migration must not change when the code does).

Revision ID: 0004_perf
Revises: 0004_audit_store
"""

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0004_perf"
down_revision = "0004_audit_store"  # chained after main's 0004 (merged before this branch)
branch_labels = None
depends_on = None

OPEN_END = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z in microseconds since the epoch
COPIED = ("patient_system", "patient_value", "effective_start", "effective_end")


def _open_periods(conn: sa.Connection) -> None:
    rows = conn.execute(
        sa.text("SELECT tenant, id, data FROM observations WHERE effective_end = effective_start + 1")
    ).all()
    for tenant, obs_id, data in rows:
        period = orjson.loads(data).get("effectivePeriod")
        if isinstance(period, dict) and "end" not in period:
            conn.execute(
                sa.text("UPDATE observations SET effective_end = :end WHERE tenant = :t AND id = :id"),
                {"end": OPEN_END, "t": tenant, "id": obs_id},
            )


def upgrade() -> None:
    conn = op.get_bind()
    _open_periods(conn)
    with op.batch_alter_table("observation_tokens") as batch:
        batch.add_column(sa.Column("patient_system", sa.String(64), nullable=True))
        batch.add_column(sa.Column("patient_value", sa.String(64), nullable=True))
        batch.add_column(sa.Column("effective_start", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("effective_end", sa.BigInteger, nullable=True))
    tokens = sa.table(
        "observation_tokens",
        sa.column("tenant"),
        sa.column("observation_id"),
        *(sa.column(c) for c in COPIED),
    )
    obs = sa.table("observations", sa.column("tenant"), sa.column("id"), *(sa.column(c) for c in COPIED))
    conn.execute(
        sa.update(tokens).values(
            {
                c: sa.select(obs.c[c])
                .where(obs.c.tenant == tokens.c.tenant, obs.c.id == tokens.c.observation_id)
                .scalar_subquery()
                for c in COPIED
            }
        )
    )
    with op.batch_alter_table("observation_tokens") as batch:
        for c in COPIED:
            batch.alter_column(c, nullable=False)
        batch.drop_index("ix_observation_tokens_code")
        batch.create_index(
            "ix_observation_tokens_patient",
            [
                "tenant",
                "patient_value",
                "param",
                "code",
                "system",
                "effective_start",
                "effective_end",
                "observation_id",
            ],
        )


def downgrade() -> None:
    with op.batch_alter_table("observation_tokens") as batch:
        batch.drop_index("ix_observation_tokens_patient")
        batch.create_index("ix_observation_tokens_code", ["tenant", "param", "code", "system"])
        for c in COPIED:
            batch.drop_column(c)
