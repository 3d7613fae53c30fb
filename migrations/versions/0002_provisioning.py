"""Tables of the provisioning area: configuration requests, credential pickups, mail rules,
idempotency records; and each mailbox's credential generation.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provisioning_requests",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("requested_by", sa.UUID(), nullable=False),
        sa.Column("decided_by", sa.UUID(), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "kind IN ('create_mailbox', 'change_quota', 'change_allocation', 'suspend_mailbox', 'delete_mailbox')",
            name=op.f("ck_provisioning_requests_kind_known"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected', 'completed', 'failed')",
            name=op.f("ck_provisioning_requests_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["decided_by"],
            ["api_keys.id"],
            name=op.f("fk_provisioning_requests_decided_by_api_keys"),
        ),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name=op.f("fk_provisioning_requests_department_id_departments"),
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"],
            ["api_keys.id"],
            name=op.f("fk_provisioning_requests_requested_by_api_keys"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provisioning_requests")),
    )
    op.create_index(
        op.f("ix_provisioning_requests_department_id"),
        "provisioning_requests",
        ["department_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_provisioning_requests_status"), "provisioning_requests", ["status"], unique=False
    )
    op.create_table(
        "credential_pickups",
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("picked_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_credential_pickups_mailbox_id_mailboxes"),
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_credential_pickups")),
    )
    op.create_index(
        op.f("ix_credential_pickups_mailbox_id"), "credential_pickups", ["mailbox_id"], unique=False
    )
    op.create_table(
        "idempotency_records",
        sa.Column("api_key_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("mailbox_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_idempotency_records_api_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_idempotency_records_mailbox_id_mailboxes"),
        ),
        sa.PrimaryKeyConstraint("api_key_id", "key", name=op.f("pk_idempotency_records")),
    )
    op.create_table(
        "mail_rules",
        sa.Column("mailbox_id", sa.UUID(), nullable=False),
        sa.Column("script", sa.Text(), nullable=False),
        sa.Column("form", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'deployed', 'failed')", name=op.f("ck_mail_rules_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"], ["mailboxes.id"], name=op.f("fk_mail_rules_mailbox_id_mailboxes")
        ),
        sa.PrimaryKeyConstraint("mailbox_id", name=op.f("pk_mail_rules")),
    )
    op.add_column(
        "mailboxes",
        sa.Column(
            "credential_generation", sa.Integer(), server_default=sa.text("1"), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_column("mailboxes", "credential_generation")
    op.drop_table("mail_rules")
    op.drop_table("idempotency_records")
    op.drop_index(op.f("ix_credential_pickups_mailbox_id"), table_name="credential_pickups")
    op.drop_table("credential_pickups")
    op.drop_index(op.f("ix_provisioning_requests_status"), table_name="provisioning_requests")
    op.drop_index(
        op.f("ix_provisioning_requests_department_id"), table_name="provisioning_requests"
    )
    op.drop_table("provisioning_requests")
