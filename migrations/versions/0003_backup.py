"""Tables of the backup area: policies, runs, snapshots, the catalog, packs and blobs,
restores and verify runs.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backup_packs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("size", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_packs")),
    )
    op.create_table(
        "backup_verify_runs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("fraction", sa.Double(), server_default=sa.text("1.0"), nullable=False),
        sa.Column("requested_by", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("blobs_checked", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("blobs_damaged", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "damage",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_backup_verify_runs_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_verify_runs")),
    )
    op.create_table(
        "backup_blobs",
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("pack_id", sa.UUID(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["pack_id"], ["backup_packs.id"], name=op.f("fk_backup_blobs_pack_id_backup_packs")
        ),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_backup_blobs")),
    )
    op.create_index(op.f("ix_backup_blobs_pack_id"), "backup_blobs", ["pack_id"], unique=False)
    op.create_table(
        "backup_policies",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column("interval_seconds", sa.Integer(), nullable=False),
        sa.Column("keep_last", sa.Integer(), nullable=False),
        sa.Column("keep_daily", sa.Integer(), nullable=False),
        sa.Column("keep_weekly", sa.Integer(), nullable=False),
        sa.Column("keep_monthly", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "interval_seconds >= 60", name=op.f("ck_backup_policies_interval_positive")
        ),
        sa.CheckConstraint(
            "keep_daily >= 0 AND keep_weekly >= 0 AND keep_monthly >= 0",
            name=op.f("ck_backup_policies_keep_nonnegative"),
        ),
        sa.CheckConstraint("keep_last >= 1", name=op.f("ck_backup_policies_keep_last_positive")),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name=op.f("fk_backup_policies_department_id_departments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_policies")),
        sa.UniqueConstraint("department_id", name=op.f("uq_backup_policies_department_id")),
    )
    op.create_table(
        "backup_folders",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uidnext", sa.BigInteger(), nullable=False),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=False),
        sa.Column("since_seq", sa.Integer(), nullable=False),
        sa.Column("until_seq", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["mailbox_id"], ["mailboxes.id"], name=op.f("fk_backup_folders_mailbox_id_mailboxes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_folders")),
    )
    op.create_index(
        op.f("ix_backup_folders_mailbox_id"), "backup_folders", ["mailbox_id"], unique=False
    )
    op.create_index(
        "uq_backup_folders_current",
        "backup_folders",
        ["mailbox_id", "name"],
        unique=True,
        postgresql_where=sa.text("until_seq IS NULL"),
    )
    op.create_table(
        "backup_runs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("mailbox_id", sa.UUID(), nullable=True),
        sa.Column("department_id", sa.UUID(), nullable=True),
        sa.Column("requested_by", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("mailboxes_total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("mailboxes_done", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("mailboxes_failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("messages_fetched", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes_read", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes_stored", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(
            "scope IN ('mailbox', 'department', 'all', 'scheduled', 'final')",
            name=op.f("ck_backup_runs_scope_known"),
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_backup_runs_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name=op.f("fk_backup_runs_department_id_departments"),
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"], ["mailboxes.id"], name=op.f("fk_backup_runs_mailbox_id_mailboxes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_runs")),
    )
    op.create_index(op.f("ix_backup_runs_mailbox_id"), "backup_runs", ["mailbox_id"], unique=False)
    op.create_index(
        "ix_backup_runs_status_finished_at", "backup_runs", ["status", "finished_at"], unique=False
    )
    op.create_table(
        "backup_messages",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("folder_id", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("blob_hash", sa.LargeBinary(), nullable=False),
        sa.Column(
            "flags", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False
        ),
        sa.Column("internal_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("from_addr", sa.Text(), server_default="", nullable=False),
        sa.Column("to_addr", sa.Text(), server_default="", nullable=False),
        sa.Column("subject", sa.Text(), server_default="", nullable=False),
        sa.Column("message_id", sa.Text(), server_default="", nullable=False),
        sa.Column("since_seq", sa.Integer(), nullable=False),
        sa.Column("until_seq", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["blob_hash"],
            ["backup_blobs.hash"],
            name=op.f("fk_backup_messages_blob_hash_backup_blobs"),
        ),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["backup_folders.id"],
            name=op.f("fk_backup_messages_folder_id_backup_folders"),
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"], ["mailboxes.id"], name=op.f("fk_backup_messages_mailbox_id_mailboxes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_messages")),
    )
    op.create_index(
        op.f("ix_backup_messages_blob_hash"), "backup_messages", ["blob_hash"], unique=False
    )
    op.create_index(
        "ix_backup_messages_current",
        "backup_messages",
        ["folder_id", "uid"],
        unique=False,
        postgresql_where=sa.text("until_seq IS NULL"),
    )
    op.create_index(
        op.f("ix_backup_messages_folder_id"), "backup_messages", ["folder_id"], unique=False
    )
    op.create_index(
        "ix_backup_messages_mailbox_message_id",
        "backup_messages",
        ["mailbox_id", "message_id"],
        unique=False,
    )
    op.create_index(
        "ix_backup_messages_mailbox_seq",
        "backup_messages",
        ["mailbox_id", "since_seq", "until_seq"],
        unique=False,
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("run_id", sa.UUID(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("folder_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("message_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("messages_fetched", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes_read", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes_stored", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'committed')", name=op.f("ck_snapshots_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"], ["mailboxes.id"], name=op.f("fk_snapshots_mailbox_id_mailboxes")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["backup_runs.id"], name=op.f("fk_snapshots_run_id_backup_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
        sa.UniqueConstraint("mailbox_id", "seq", name="uq_snapshots_mailbox_id_seq"),
    )
    op.create_index(
        "ix_snapshots_mailbox_id_completed_at",
        "snapshots",
        ["mailbox_id", "completed_at"],
        unique=False,
    )
    op.create_index(op.f("ix_snapshots_run_id"), "snapshots", ["run_id"], unique=False)
    op.create_table(
        "restore_jobs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("snapshot_id", sa.UUID(), nullable=False),
        sa.Column("target_mode", sa.Text(), nullable=False),
        sa.Column("target_mailbox_id", sa.UUID(), nullable=False),
        sa.Column("target_folder", sa.Text(), nullable=True),
        sa.Column("folders", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("message_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("requested_by", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("done", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("restored", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("skipped", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_restore_jobs_status_known"),
        ),
        sa.CheckConstraint(
            "target_mode IN ('original', 'folder', 'mailbox')",
            name=op.f("ck_restore_jobs_target_mode_known"),
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"], ["mailboxes.id"], name=op.f("fk_restore_jobs_mailbox_id_mailboxes")
        ),
        sa.ForeignKeyConstraint(
            ["target_mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_restore_jobs_target_mailbox_id_mailboxes"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_restore_jobs")),
    )
    op.create_index(
        op.f("ix_restore_jobs_mailbox_id"), "restore_jobs", ["mailbox_id"], unique=False
    )
    op.create_index(
        op.f("ix_restore_jobs_snapshot_id"), "restore_jobs", ["snapshot_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_restore_jobs_snapshot_id"), table_name="restore_jobs")
    op.drop_index(op.f("ix_restore_jobs_mailbox_id"), table_name="restore_jobs")
    op.drop_table("restore_jobs")
    op.drop_index(op.f("ix_snapshots_run_id"), table_name="snapshots")
    op.drop_index("ix_snapshots_mailbox_id_completed_at", table_name="snapshots")
    op.drop_table("snapshots")
    op.drop_index("ix_backup_messages_mailbox_seq", table_name="backup_messages")
    op.drop_index("ix_backup_messages_mailbox_message_id", table_name="backup_messages")
    op.drop_index(op.f("ix_backup_messages_folder_id"), table_name="backup_messages")
    op.drop_index(
        "ix_backup_messages_current",
        table_name="backup_messages",
        postgresql_where=sa.text("until_seq IS NULL"),
    )
    op.drop_index(op.f("ix_backup_messages_blob_hash"), table_name="backup_messages")
    op.drop_table("backup_messages")
    op.drop_index("ix_backup_runs_status_finished_at", table_name="backup_runs")
    op.drop_index(op.f("ix_backup_runs_mailbox_id"), table_name="backup_runs")
    op.drop_table("backup_runs")
    op.drop_index(
        "uq_backup_folders_current",
        table_name="backup_folders",
        postgresql_where=sa.text("until_seq IS NULL"),
    )
    op.drop_index(op.f("ix_backup_folders_mailbox_id"), table_name="backup_folders")
    op.drop_table("backup_folders")
    op.drop_table("backup_policies")
    op.drop_index(op.f("ix_backup_blobs_pack_id"), table_name="backup_blobs")
    op.drop_table("backup_blobs")
    op.drop_table("backup_verify_runs")
    op.drop_table("backup_packs")
