"""Audit log: monthly partitions on PostgreSQL; one index per log enforced by ``audit_seq_claims``.

PostgreSQL cannot index uniquely across partitions without the partition key, so ``UNIQUE (tenant,
seq)`` (security-tests AUD-09) moves to a narrow unpartitioned table, ``audit_seq_claims`` (primary key
``(tenant, seq)``), which a trigger fills whenever an entry gets an index: the sequencer's update of a
pending entry, or an insert of an entry that already has one. Two sequencers giving one index twice
fail with a unique violation whatever the application does (docs/audit-store.md).

* PostgreSQL: ``audit_entries`` becomes ``PARTITION BY RANGE (recorded)``, one partition per month
  (``store/audit_partitions.py``), primary key ``(id, recorded)``, no DEFAULT partition. The existing table is
  copied into it in this migration's transaction (appends wait for it): partitions for every month
  that has entries and for ``AHEAD`` months from now are created first, every row is copied, the copy is
  compared with the original (row count and the sum of a hash of every row) and the claims with the
  sequenced entries, then the original is dropped. The append-only trigger (0004) moves to the
  partitioned table (PostgreSQL clones it to every partition, present and future) and now also claims
  the index.
* SQLite: one table as before; the unique index becomes a plain one and ``AFTER`` triggers claim when
  an entry gets its index (a pending entry's update, or an insert with one), as on PostgreSQL. SQLite
  has no append-only trigger: editing a sequenced entry there is what ``audit verify --database`` finds.

Downgrade copies the entries back into one table (PostgreSQL) and restores the unique index and 0004's
trigger.

Revision ID: 0006_audit_parts
Revises: 0005_subs
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from sharing_api.store.audit_partitions import AHEAD, Month, ensure_in

revision = "0006_audit_parts"
down_revision = "0005_subs"
branch_labels = None
depends_on = None

INDEXES = {  # as schema.py: name -> columns (the unique index of 0003 is the one that changes)
    "ix_audit_entries_pending": "seq, tenant, id",
    "ix_audit_entries_patient": "tenant, patient_value, seq",
    "ix_audit_entries_agent": "tenant, agent_hpr, seq",
    "ix_audit_entries_organisation": "tenant, organisation, seq",
    "ix_audit_entries_period": (
        "tenant, recorded, action, outcome, purpose, patient_value, agent_hpr, organisation"
    ),
}
UNIQUE_BEFORE = ("uq_audit_entries_tenant_seq", "tenant, seq")
SEQ_INDEX = ("ix_audit_entries_seq", "tenant, seq")

_ENTRIES_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION dho_audit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    IF OLD.seq IS NULL AND NEW.seq IS NOT NULL AND NEW.leaf IS NOT NULL
       AND (NEW.id, NEW.tenant, NEW.recorded, NEW.action, NEW.outcome, NEW.purpose, NEW.patient_system,
            NEW.patient_value, NEW.agent_hpr, NEW.organisation, NEW.client_id, NEW.event)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.tenant, OLD.recorded, OLD.action, OLD.outcome, OLD.purpose, OLD.patient_system,
            OLD.patient_value, OLD.agent_hpr, OLD.organisation, OLD.client_id, OLD.event)
    THEN
      -- the sequencer gives a pending entry its index and leaf hash, once; the index is claimed in the
      -- log (a unique violation if another entry of the tenant has it: AUD-09)
      INSERT INTO audit_seq_claims (tenant, seq) VALUES (NEW.tenant, NEW.seq);
      RETURN NEW;
    END IF;
  END IF;
  RAISE EXCEPTION 'audit_entries is append-only: % refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
"""
_ENTRIES_CLAIM_ON_INSERT = """
CREATE OR REPLACE FUNCTION dho_audit_entries_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit_seq_claims (tenant, seq) VALUES (NEW.tenant, NEW.seq);
  RETURN NEW;
END $$;
"""
_CLAIMS_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION dho_audit_seq_claims_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_seq_claims is append-only: % refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
"""
_ENTRIES_APPEND_ONLY_0004 = """
CREATE OR REPLACE FUNCTION dho_audit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    IF OLD.seq IS NULL AND NEW.seq IS NOT NULL AND NEW.leaf IS NOT NULL
       AND (NEW.id, NEW.tenant, NEW.recorded, NEW.action, NEW.outcome, NEW.purpose, NEW.patient_system,
            NEW.patient_value, NEW.agent_hpr, NEW.organisation, NEW.client_id, NEW.event)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.tenant, OLD.recorded, OLD.action, OLD.outcome, OLD.purpose, OLD.patient_system,
            OLD.patient_value, OLD.agent_hpr, OLD.organisation, OLD.client_id, OLD.event)
    THEN
      RETURN NEW;  -- the sequencer gives a pending entry its index and leaf hash, once
    END IF;
  END IF;
  RAISE EXCEPTION 'audit_entries is append-only: % refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
"""
_SQLITE_CLAIMS = (
    "CREATE TRIGGER audit_entries_claim_on_insert AFTER INSERT ON audit_entries"
    " WHEN NEW.seq IS NOT NULL"
    " BEGIN INSERT INTO audit_seq_claims (tenant, seq) VALUES (NEW.tenant, NEW.seq); END",
    "CREATE TRIGGER audit_entries_claim_on_update AFTER UPDATE OF seq ON audit_entries"
    " WHEN OLD.seq IS NULL AND NEW.seq IS NOT NULL"
    " BEGIN INSERT INTO audit_seq_claims (tenant, seq) VALUES (NEW.tenant, NEW.seq); END",
)


_CLAIM_ALL = "INSERT INTO audit_seq_claims (tenant, seq) SELECT tenant, seq FROM {} WHERE seq IS NOT NULL"


def _create_claims() -> None:
    op.create_table(
        "audit_seq_claims",
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "seq"),
    )


def _same_rows(a: str, b: str) -> None:
    """Stop the migration (rolling it back) unless tables ``a`` and ``b`` hold the same rows: the same
    number, and the same sum of a 64-bit hash of each whole row (one pass over each table, no sort: a
    row-for-row ``EXCEPT ALL`` took most of the migration's time, and so did hashing ``t::text``, which
    spells the event bytes in hex)."""
    row = (
        "concat_ws('|', id, tenant, seq, recorded, action, outcome, purpose, patient_system, patient_value,"
        " agent_hpr, organisation, client_id, md5(event), md5(leaf))"  # md5 of bytea: no hex text
    )
    digest = f"SELECT count(*), coalesce(sum(hashtextextended({row}, 0)::numeric), 0) FROM {{}}"  # noqa: S608
    conn = op.get_bind()
    before = tuple(conn.execute(sa.text(digest.format(a))).one())
    after = tuple(conn.execute(sa.text(digest.format(b))).one())
    if before != after:
        raise RuntimeError(
            f"copying the audit log: {a} and {b} differ ({before} != {after}); nothing changed"
        )


def _claims_match(entries: str) -> None:
    conn = op.get_bind()
    sequenced = conn.execute(sa.text(f"SELECT count(*) FROM {entries} WHERE seq IS NOT NULL")).scalar()  # noqa: S608
    claims = conn.execute(sa.text("SELECT count(*) FROM audit_seq_claims")).scalar()
    if sequenced != claims:
        raise RuntimeError(f"audit log: {sequenced} sequenced entries but {claims} claimed indexes")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(UNIQUE_BEFORE[0], table_name="audit_entries")
        op.create_index(SEQ_INDEX[0], "audit_entries", ["tenant", "seq"])
        _create_claims()
        op.execute(_CLAIM_ALL.format("audit_entries"))
        for statement in _SQLITE_CLAIMS:
            op.execute(statement)
        return
    conn = op.get_bind()
    op.execute("LOCK TABLE audit_entries IN ACCESS EXCLUSIVE MODE")
    op.execute("DROP TRIGGER IF EXISTS audit_entries_append_only ON audit_entries")
    op.execute("ALTER TABLE audit_entries RENAME TO audit_entries_flat")
    op.execute(
        "ALTER TABLE audit_entries_flat RENAME CONSTRAINT audit_entries_pkey TO audit_entries_flat_pkey"
    )
    for name in (UNIQUE_BEFORE[0], *INDEXES):
        op.execute(f"DROP INDEX {name}")
    op.execute(
        "CREATE TABLE audit_entries (LIKE audit_entries_flat INCLUDING DEFAULTS)"
        " PARTITION BY RANGE (recorded)"
    )
    op.execute("ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_pkey PRIMARY KEY (id, recorded)")
    op.execute("ALTER SEQUENCE audit_entries_id_seq OWNED BY audit_entries.id")
    now = Month.of(datetime.now(UTC))
    months = {now.plus(i) for i in range(AHEAD + 1)}
    firsts = conn.execute(
        sa.text("SELECT DISTINCT recorded - recorded % 86400000000 FROM audit_entries_flat")
    ).scalars()
    months.update(Month.of_micros(day) for day in firsts)
    ensure_in(conn, months)
    _create_claims()
    op.execute("INSERT INTO audit_entries SELECT * FROM audit_entries_flat")
    op.execute(_CLAIM_ALL.format("audit_entries_flat"))
    _same_rows("audit_entries_flat", "audit_entries")
    _claims_match("audit_entries")
    op.execute("DROP TABLE audit_entries_flat")
    for name, columns in (SEQ_INDEX, *INDEXES.items()):
        op.execute(f"CREATE INDEX {name} ON audit_entries ({columns})")
    op.execute(_ENTRIES_APPEND_ONLY)
    op.execute(_ENTRIES_CLAIM_ON_INSERT)
    op.execute(_CLAIMS_APPEND_ONLY)
    op.execute(
        "CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries"
        " FOR EACH ROW EXECUTE FUNCTION dho_audit_entries_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_entries_claim BEFORE INSERT ON audit_entries"
        " FOR EACH ROW WHEN (NEW.seq IS NOT NULL) EXECUTE FUNCTION dho_audit_entries_claim()"
    )
    op.execute(
        "CREATE TRIGGER audit_seq_claims_append_only BEFORE UPDATE OR DELETE ON audit_seq_claims"
        " FOR EACH ROW EXECUTE FUNCTION dho_audit_seq_claims_append_only()"
    )
    op.execute("ANALYZE audit_entries")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for name in ("audit_entries_claim_on_insert", "audit_entries_claim_on_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.drop_table("audit_seq_claims")
        op.drop_index(SEQ_INDEX[0], table_name="audit_entries")
        op.create_index(UNIQUE_BEFORE[0], "audit_entries", ["tenant", "seq"], unique=True)
        return
    op.execute("LOCK TABLE audit_entries IN ACCESS EXCLUSIVE MODE")
    op.execute("ALTER TABLE audit_entries RENAME TO audit_entries_parts")
    op.execute(
        "ALTER TABLE audit_entries_parts RENAME CONSTRAINT audit_entries_pkey TO audit_entries_parts_pkey"
    )
    for name in (SEQ_INDEX[0], *INDEXES):
        op.execute(f"DROP INDEX {name}")
    op.execute("CREATE TABLE audit_entries (LIKE audit_entries_parts INCLUDING DEFAULTS)")
    op.execute("ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_pkey PRIMARY KEY (id)")
    op.execute("ALTER SEQUENCE audit_entries_id_seq OWNED BY audit_entries.id")
    op.execute("INSERT INTO audit_entries SELECT * FROM audit_entries_parts")
    _same_rows("audit_entries_parts", "audit_entries")
    op.execute("DROP TABLE audit_entries_parts")  # and its partitions and triggers
    op.execute(f"CREATE UNIQUE INDEX {UNIQUE_BEFORE[0]} ON audit_entries ({UNIQUE_BEFORE[1]})")
    for name, columns in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON audit_entries ({columns})")
    op.execute(_ENTRIES_APPEND_ONLY_0004)
    op.execute(
        "CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries"
        " FOR EACH ROW EXECUTE FUNCTION dho_audit_entries_append_only()"
    )
    op.execute("DROP TABLE audit_seq_claims")
    op.execute("DROP FUNCTION IF EXISTS dho_audit_seq_claims_append_only()")
    op.execute("DROP FUNCTION IF EXISTS dho_audit_entries_claim()")
