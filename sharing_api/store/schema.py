"""Tables. The migrations in ``migrations/versions`` create exactly these; a test checks they agree.

Times are integers (microseconds since the epoch, UTC) so that SQLite and PostgreSQL compare and sort
them the same way. Resource JSON is stored as the exact bytes that are served.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("orgnr", String(9), primary_key=True),
    Column("name", Text, nullable=False),
    Column("resh_ids", Text, nullable=False, server_default=""),
    Column("opt_in", Boolean, nullable=False, server_default="0"),
    Column("created", BigInteger, nullable=False),
    Column("processors", Text, nullable=False, server_default=""),
    Column("emergency_override", Boolean, nullable=False, server_default="0"),
    Column("allow_unknown_codes", Boolean, nullable=False, server_default="0"),
)

observations = Table(
    "observations",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("patient_system", String(64), nullable=False),
    Column("patient_value", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("kind", String(256), nullable=False),
    Column("effective_start", BigInteger, nullable=False),
    Column("effective_end", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("tenant", "id"),
    Index("ix_observations_patient_date", "tenant", "patient_value", "patient_system", "effective_start"),
    Index("ix_observations_last_updated", "tenant", "last_updated"),
)

observation_tokens = Table(
    "observation_tokens",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("observation_id", String(64), nullable=False),
    Column("param", String(16), nullable=False),  # "code" | "category"
    Column("system", String(256), nullable=False),
    Column("code", String(256), nullable=False),
    # Copies of the observation's patient and effective time (migration 0004): a search for one
    # patient, one code and a period is one range scan of ``ix_observation_tokens_patient`` (the
    # end bound is checked inside the index), then a primary-key lookup per hit.
    Column("patient_system", String(64), nullable=False),
    Column("patient_value", String(64), nullable=False),
    Column("effective_start", BigInteger, nullable=False),
    Column("effective_end", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "observation_id", "param", "system", "code"),
    Index(
        "ix_observation_tokens_patient",
        "tenant",
        "patient_value",
        "param",
        "code",
        "system",
        "effective_start",
        "effective_end",
        "observation_id",
    ),
)

observation_identifiers = Table(
    "observation_identifiers",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("system", String(256), nullable=False),
    Column("value", String(256), nullable=False),
    Column("observation_id", String(64), nullable=False),
    # The idempotency guarantee: one business identifier, one observation, per tenant.
    PrimaryKeyConstraint("tenant", "system", "value"),
    Index("ix_observation_identifiers_observation", "tenant", "observation_id"),
)

observation_history = Table(
    "observation_history",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("tenant", "id", "version_id"),
)

# -- sharing policy (issue #4): agreements between organisations, patients' directives -------------

agreements = Table(
    "agreements",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("controller", String(9), nullable=False),
    Column("consumer", String(9), nullable=False),
    Column("categories", Text, nullable=False),  # space-separated observation-category codes
    Column("purposes", Text, nullable=False),  # space-separated PurposeOfUse codes
    Column("valid_from", BigInteger, nullable=False),
    Column("valid_to", BigInteger, nullable=True),
    Column("data_from", BigInteger, nullable=True),
    Column("data_to", BigInteger, nullable=True),
    Column("created", BigInteger, nullable=False),
    # space-separated categories the consumer may also change (migration 0005_careplan)
    Column("write_categories", Text, nullable=False, server_default=""),
    Index("ix_agreements_parties", "controller", "consumer"),
)

directives = Table(
    "directives",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("patient_system", String(64), nullable=False),
    Column("patient_value", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # reservation | block | consent
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("tenant", "id"),
    Index("ix_directives_patient", "tenant", "patient_value", "patient_system"),
)

directive_history = Table(
    "directive_history",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("tenant", "id", "version_id"),
)

# -- treatment and self-treatment plans (issue #11; migration 0005_careplan) --------------------------
# CarePlan and Goal resources of all tenants, versioned like observations. ``version_id`` is the
# compare-and-set guard of an update (``UPDATE ... WHERE version_id = :expected``), and the history's
# primary key (tenant, type, id, version) refuses a second copy of one version whatever the interleaving.

plan_resources = Table(
    "plan_resources",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("resource_type", String(16), nullable=False),  # CarePlan | Goal
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("patient_system", String(64), nullable=False),
    Column("patient_value", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("period_start", BigInteger, nullable=True),
    Column("period_end", BigInteger, nullable=True),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("tenant", "resource_type", "id"),
    Index("ix_plan_resources_patient", "tenant", "patient_value", "patient_system", "resource_type"),
)

plan_tokens = Table(
    "plan_tokens",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("resource_type", String(16), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("param", String(16), nullable=False),  # "category"
    Column("system", String(256), nullable=False),
    Column("code", String(256), nullable=False),
    PrimaryKeyConstraint("tenant", "resource_type", "resource_id", "param", "system", "code"),
)

plan_history = Table(
    "plan_history",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("resource_type", String(16), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    # who wrote this version (from the caller's token and attestation), also in the JSON's meta
    Column("author_organisation", String(16), nullable=True),
    Column("author_hpr", String(16), nullable=True),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("tenant", "resource_type", "id", "version_id"),
)

# -- client systems (issue #3): who may ask for tokens, with which keys and scopes -------------------

clients = Table(
    "clients",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("orgnr", String(9), nullable=False),
    Column("point_of_care", String(9), nullable=True),
    Column("name", Text, nullable=False, server_default=""),
    Column("jwks", Text, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("created", BigInteger, nullable=False),
)

# == audit log (sharing_api/audit; migration 0003) ==================================================
# One tamper-evident log per tenant (domain.md "Audit"). ``audit_entries`` holds every event as its
# RFC 8785 canonical bytes; ``seq`` and ``leaf`` are NULL until the sequencer gives the entry its place
# in the tenant's Merkle tree. The other columns are extracted at append time for search and log
# control. ``audit_heads`` is the per-tenant tree state the sequencer locks, and the log's stable name;
# ``audit_checkpoints`` the signed checkpoints (C2SP signed notes). On PostgreSQL, entries and
# checkpoints are append-only by trigger (migration 0004): only a pending entry's seq/leaf may be set.
# On PostgreSQL ``audit_entries`` is partitioned by month of ``recorded`` (0006_audit_parts,
# ``store/audit_partitions.py``), with primary key (id, recorded); the columns and indexes are as below.

_SEQUENCED: dict[str, Any] = {
    "postgresql_where": text("seq IS NOT NULL"),
    "sqlite_where": text("seq IS NOT NULL"),
}
_PENDING: dict[str, Any] = {"postgresql_where": text("seq IS NULL"), "sqlite_where": text("seq IS NULL")}

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("tenant", String(32), nullable=False),
    Column("seq", BigInteger, nullable=True),
    Column("leaf", LargeBinary, nullable=True),
    Column("recorded", BigInteger, nullable=False),
    Column("action", String(32), nullable=False),
    Column("outcome", String(2), nullable=False),
    Column("purpose", String(8), nullable=True),
    Column("patient_system", String(64), nullable=True),
    Column("patient_value", String(64), nullable=True),
    Column("agent_hpr", String(16), nullable=True),
    Column("organisation", String(16), nullable=True),
    Column("client_id", String(128), nullable=True),
    Column("event", LargeBinary, nullable=False),  # LZ4-compressed on PostgreSQL (0008_audit_lz4)
    # An entry by its index, and pages by index. Not unique: on PostgreSQL the table is partitioned by
    # month (migration 0006_audit_parts), and a unique index there would have to include the month.
    # ``audit_seq_claims`` below refuses an index given twice (security-tests AUD-09).
    # Each of these holds only the entries its queries ask for (migration 0007_audit_partial): the
    # sequenced ones (every query on them has ``seq IS NOT NULL`` or compares ``seq``), or, for the
    # sequencer, the pending ones. An append then adds 3 index entries and the sequencer's update 6,
    # instead of 7 and 7.
    Index("ix_audit_entries_seq", "tenant", "seq", **_SEQUENCED),
    Index("ix_audit_entries_pending", "tenant", "id", **_PENDING),
    Index("ix_audit_entries_patient", "tenant", "patient_value", "seq", **_SEQUENCED),
    Index("ix_audit_entries_agent", "tenant", "agent_hpr", "seq", **_SEQUENCED),
    Index("ix_audit_entries_organisation", "tenant", "organisation", "seq", **_SEQUENCED),
    # A tenant's period, covering what the console's dashboard counts (migration 0005_console2).
    Index(
        "ix_audit_entries_period",
        "tenant",
        "recorded",
        "action",
        "outcome",
        "purpose",
        "patient_value",
        "agent_hpr",
        "organisation",
    ),
)

# Every index given in a tenant's log, claimed by a database trigger when an entry gets it (the
# sequencer's update, or an insert of an entry that already has one): its primary key refuses an index
# given twice, in whatever month the entries lie (security-tests AUD-09; migration 0006_audit_parts).
audit_seq_claims = Table(
    "audit_seq_claims",
    metadata,
    Column("tenant", String(32), nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "seq"),
)

audit_heads = Table(
    "audit_heads",
    metadata,
    Column("tenant", String(32), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary, nullable=False),
    Column("peaks", LargeBinary, nullable=False),  # the compact range of the tree: 32 bytes per bit of size
    Column("checkpoint_size", BigInteger, nullable=False),
    Column("checkpoint_at", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    # The log's name in its checkpoints (C2SP origin), fixed when the log is created (migration 0004).
    Column("origin", String(255), nullable=True),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("tenant", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary, nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("note", Text, nullable=False),
    PrimaryKeyConstraint("tenant", "size"),
)

# Revoked access tokens (RFC 7009), durable; Redis holds a cache of the live ones (auth/replaystate.py).
revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("jti_sha256", String(64), primary_key=True),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

# Where each deployment's replay state (Redis) lives now and since when (the epoch rule).
replay_epochs = Table(
    "replay_epochs",
    metadata,
    Column("deployment", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("began_at", BigInteger, nullable=False),
)

# The auditor console (sharing_api/console): auditor accounts, per-tenant rule settings, triage of rule
# hits, and the result of the last server-side verification of each tenant's log.

console_auditors = Table(
    "console_auditors",
    metadata,
    Column("username", String(64), primary_key=True),
    Column("tenant", String(32), nullable=False),
    Column("name", Text, nullable=False),
    Column("password_hash", Text, nullable=False),  # argon2id (argon2-cffi), never the password
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("created", BigInteger, nullable=False),
)

console_rule_settings = Table(
    "console_rule_settings",
    metadata,
    Column("tenant", String(32), nullable=False),
    Column("rule", String(8), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("threshold", Integer, nullable=True),
    Column("updated", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "rule"),
)

console_triage = Table(
    "console_triage",
    metadata,
    Column("tenant", String(32), nullable=False),
    Column("flag", String(128), nullable=False),  # the rule hit's key: rule id and the evidence's first seq
    Column("state", String(16), nullable=False),  # explained | escalated | open
    Column("note", Text, nullable=False, server_default=""),
    Column("auditor", String(64), nullable=False),
    Column("updated", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "flag"),
)

# Cases (saker) opened from rule hits of the review queue (console/cases.py, console.md §5.1 page 4):
# a case's state, outcome and attached events, and its notes in order. Migration 0006_console_r8.
console_cases = Table(
    "console_cases",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("tenant", String(32), nullable=False),
    Column("flag", String(128), nullable=False),  # the rule hit it was opened from (console_triage.flag)
    Column("seqs", Text, nullable=False),  # JSON list of the attached events' indexes
    Column("state", String(16), nullable=False),  # open | waiting | review | closed
    Column("outcome", String(16), nullable=True),  # legitimate | breach | unresolved, once closed
    Column("opened_by", String(64), nullable=False),
    Column("opened", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Index("uq_console_cases_flag", "tenant", "flag", unique=True),
)

console_case_notes = Table(
    "console_case_notes",
    metadata,
    Column("tenant", String(32), nullable=False),
    Column("case_id", BigInteger, nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("auditor", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # the case's state after this note
    Column("note", Text, nullable=False),
    Index("ix_console_case_notes_case", "tenant", "case_id", "at"),
)

console_verifications = Table(
    "console_verifications",
    metadata,
    Column("tenant", String(32), primary_key=True),
    Column("verified_at", BigInteger, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("problem", String(32), nullable=True),
    Column("bad_index", BigInteger, nullable=True),
    Column("entries", BigInteger, nullable=False),
    Column("signed_size", BigInteger, nullable=False),
    Column("seconds", Text, nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
)

# Topic-based subscriptions (sharing_api/subscriptions, docs/subscriptions.md): who follows which
# patient's events at which endpoint, and the durable outbox of notifications still to deliver.

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("tenant", String(9), nullable=False),
    Column("id", String(64), nullable=False),
    Column("topic", String(256), nullable=False),
    Column("status", String(16), nullable=False),  # active | error | off (R4 subscription-status)
    Column("patient_system", String(64), nullable=False),
    Column("patient_value", String(64), nullable=False),
    Column("client_id", String(256), nullable=False),
    Column("consumer", String(9), nullable=False),  # the subscriber's legal entity (org.nr)
    Column("point_of_care", String(9), nullable=True),
    Column("practitioner_hpr", String(16), nullable=True),
    Column("purpose", String(16), nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("payload", String(16), nullable=False),  # id-only | full-resource
    Column("end_at", BigInteger, nullable=True),
    Column("events", BigInteger, nullable=False, server_default="0"),
    Column("error", Text, nullable=True),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),  # the Subscription as accepted (id, meta set)
    PrimaryKeyConstraint("tenant", "id"),
    Index("ix_subscriptions_patient", "tenant", "topic", "patient_value", "patient_system"),
    Index("ix_subscriptions_consumer", "tenant", "consumer"),
)

notification_outbox = Table(
    "notification_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("tenant", String(9), nullable=False),
    Column("subscription_id", String(64), nullable=False),
    Column("event_number", BigInteger, nullable=False),
    Column("focus", String(256), nullable=False),  # e.g. Observation/<id>/_history/<version>
    Column("created", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | failed | dropped
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt", BigInteger, nullable=False),
    Column("lease_until", BigInteger, nullable=False, server_default="0"),
    Column("last_result", Text, nullable=True),
    Index("ix_notification_outbox_due", "state", "next_attempt"),
)

# The console dashboard's rollup of each tenant's sequenced audit entries (console/rollup.py, migration
# 0005_console2): derived from the entries' columns, folded in by index, rebuildable and checked
# against the log. Counts per UTC hour; who was active per Oslo day, as a 32-day bit mask per bucket.
console_rollup_state = Table(
    "console_rollup_state",
    metadata,
    Column("tenant", String(32), primary_key=True),
    Column("folded", BigInteger, nullable=False),  # entries with seq < folded are in the rollup
)

console_rollup_hours = Table(
    "console_rollup_hours",
    metadata,
    Column("tenant", String(32), nullable=False),
    Column("hour", BigInteger, nullable=False),  # hours since 1970-01-01T00:00Z
    Column("requests", BigInteger, nullable=False),
    Column("refused", BigInteger, nullable=False),
    Column("emergency", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "hour"),
)

console_rollup_actors = Table(
    "console_rollup_actors",
    metadata,
    Column("tenant", String(32), nullable=False),
    Column("kind", String(1), nullable=False),  # p patient, h health worker (HPR), o organisation
    Column("bucket", Integer, nullable=False),  # Oslo day number // 32
    Column("value", String(64), nullable=False),
    Column("days", BigInteger, nullable=False),  # bit (day number % 32) set: active that day
    PrimaryKeyConstraint("tenant", "kind", "bucket", "value"),
)

# The controller's watch list for log-control rule R10 (console/rules.py): patients whose unexplained
# accesses always need review (a public person, an employee as a patient). Migration 0005_console2.
console_watchlist = Table(
    "console_watchlist",
    metadata,
    Column("tenant", String(32), nullable=False),
    Column("patient_value", String(64), nullable=False),  # as audit_entries.patient_value
    Column("reason", Text, nullable=False),
    Column("added_by", String(64), nullable=False),
    Column("added", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "patient_value"),
)
