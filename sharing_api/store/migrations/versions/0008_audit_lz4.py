"""Audit log: new events are compressed with LZ4 instead of pglz (PostgreSQL, issue 12).

An audited search appends its event, about 5 KB of canonical JSON; over PostgreSQL's TOAST threshold
(about 2 KB a row) the value is compressed before it is stored. pglz cost the append about 45 µs of
backend CPU per event at 100,000 observations (of about 350-430 µs the whole append takes); LZ4 does
the same in a fraction of that and decompresses faster for the sequencer, the stored check and
``$export``. The bytes stored are the same bytes (compression is below what any query sees); LZ4 keeps
them about 10 % larger (2.3 KB instead of 2.1 KB per search event).

``SET COMPRESSION`` changes no existing row: entries stored with pglz keep it and read as before. It is
set on ``audit_entries`` (new monthly partitions take it from there) and on each existing partition
(PostgreSQL does not pass it on to them). A server built without LZ4 (``default_toast_compression``
offers no ``lz4``) keeps pglz: this is a setting for speed only. SQLite stores the log uncompressed
and is not changed.

Revision ID: 0008_audit_lz4
Revises: 0007_audit_partial
"""

from alembic import op

revision = "0008_audit_lz4"
down_revision = "0007_audit_partial"
branch_labels = None
depends_on = None

PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = to_regclass('audit_entries')"
)
LZ4_BUILT_IN = "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"


def _set(method: str) -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    if method == "lz4" and not conn.exec_driver_sql(LZ4_BUILT_IN).scalar():
        return
    tables = ["audit_entries", *conn.exec_driver_sql(PARTITIONS).scalars()]
    for table in tables:
        op.execute(f'ALTER TABLE "{table}" ALTER COLUMN event SET COMPRESSION {method}')


def upgrade() -> None:
    _set("lz4")


def downgrade() -> None:
    _set("default")
