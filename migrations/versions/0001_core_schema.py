"""Core schema: domains, departments, mailboxes, aliases, API keys, audit events, and the
views Dovecot and Postfix read.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 02:24:55.020707
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The mail server's read model. Dovecot: who may log in (active only) and who exists
# (suspended and deleting mailboxes still receive mail and can be backed up).
# Postfix: which domains, mailboxes and alias/forwarding expansions exist.
MAIL_SERVER_VIEWS = {
    "dovecot_passdb": """
        SELECT address, password_hash AS password FROM mailboxes WHERE status = 'active'
    """,
    "dovecot_userdb": """
        SELECT address, id AS mailbox_id, quota_bytes FROM mailboxes
        WHERE status IN ('provisioning', 'active', 'suspended', 'deleting')
    """,
    "postfix_domains": "SELECT name AS domain FROM domains",
    "postfix_mailboxes": """
        SELECT address FROM mailboxes WHERE status IN ('provisioning', 'active', 'suspended')
    """,
    "postfix_aliases": """
        SELECT address AS source, unnest(targets) AS destination FROM aliases
        UNION ALL
        SELECT address, unnest(forward_targets) FROM mailboxes
        WHERE status IN ('provisioning', 'active', 'suspended')
        UNION ALL
        SELECT address, address FROM mailboxes
        WHERE status IN ('provisioning', 'active', 'suspended')
          AND forward_keep_copy AND cardinality(forward_targets) > 0
    """,
}


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column(
            "department_ids",
            postgresql.ARRAY(sa.UUID()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("key_prefix", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('admin', 'operator', 'manager', 'support', 'onboarding', 'viewer')",
            name=op.f("ck_api_keys_role_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("actor_id", sa.UUID(), nullable=True),
        sa.Column("actor_name", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target_type", sa.Text(), nullable=False),
        sa.Column("target_id", sa.Text(), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_actor_id"), "audit_events", ["actor_id"], unique=False)
    op.create_index(
        op.f("ix_audit_events_occurred_at"), "audit_events", ["occurred_at"], unique=False
    )
    op.create_index(
        "ix_audit_events_target", "audit_events", ["target_type", "target_id"], unique=False
    )
    op.create_table(
        "domains",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_domains")),
        sa.UniqueConstraint("name", name=op.f("uq_domains_name")),
    )
    op.create_table(
        "departments",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("domain_id", sa.UUID(), nullable=False),
        sa.Column("capacity_bytes", sa.BigInteger(), nullable=False),
        sa.Column("max_mailboxes", sa.Integer(), nullable=False),
        sa.Column("default_quota_bytes", sa.BigInteger(), nullable=False),
        sa.Column("confidential", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "external_forwarding", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
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
        sa.CheckConstraint("capacity_bytes > 0", name=op.f("ck_departments_capacity_positive")),
        sa.CheckConstraint(
            "default_quota_bytes > 0", name=op.f("ck_departments_default_quota_positive")
        ),
        sa.CheckConstraint("max_mailboxes > 0", name=op.f("ck_departments_max_mailboxes_positive")),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_departments_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_departments")),
        sa.UniqueConstraint("name", name=op.f("uq_departments_name")),
    )
    op.create_index(op.f("ix_departments_domain_id"), "departments", ["domain_id"], unique=False)
    op.create_table(
        "aliases",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("domain_id", sa.UUID(), nullable=False),
        sa.Column("department_id", sa.UUID(), nullable=True),
        sa.Column("targets", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"], name=op.f("fk_aliases_department_id_departments")
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_aliases_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("address", name=op.f("uq_aliases_address")),
    )
    op.create_index(op.f("ix_aliases_department_id"), "aliases", ["department_id"], unique=False)
    op.create_index(op.f("ix_aliases_domain_id"), "aliases", ["domain_id"], unique=False)
    op.create_table(
        "mailboxes",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("domain_id", sa.UUID(), nullable=False),
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column("display_name", sa.Text(), server_default="", nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("quota_bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), server_default="provisioning", nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column(
            "forward_targets",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "forward_keep_copy", sa.Boolean(), server_default=sa.text("true"), nullable=False
        ),
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
        sa.Column("purge_after", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('provisioning', 'active', 'suspended', 'failed', 'deleting', 'purged')",
            name=op.f("ck_mailboxes_status_known"),
        ),
        sa.CheckConstraint("quota_bytes > 0", name=op.f("ck_mailboxes_quota_positive")),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name=op.f("fk_mailboxes_department_id_departments"),
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_mailboxes_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailboxes")),
    )
    op.create_index(
        op.f("ix_mailboxes_department_id"), "mailboxes", ["department_id"], unique=False
    )
    op.create_index(op.f("ix_mailboxes_domain_id"), "mailboxes", ["domain_id"], unique=False)
    op.create_index(op.f("ix_mailboxes_status"), "mailboxes", ["status"], unique=False)
    op.create_index(
        "uq_mailboxes_address_live",
        "mailboxes",
        ["address"],
        unique=True,
        postgresql_where=sa.text("status <> 'purged'"),
    )
    for name, query in MAIL_SERVER_VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name in MAIL_SERVER_VIEWS:
        op.execute(f"DROP VIEW {name}")
    op.drop_index(
        "uq_mailboxes_address_live",
        table_name="mailboxes",
        postgresql_where=sa.text("status <> 'purged'"),
    )
    op.drop_index(op.f("ix_mailboxes_status"), table_name="mailboxes")
    op.drop_index(op.f("ix_mailboxes_domain_id"), table_name="mailboxes")
    op.drop_index(op.f("ix_mailboxes_department_id"), table_name="mailboxes")
    op.drop_table("mailboxes")
    op.drop_index(op.f("ix_aliases_domain_id"), table_name="aliases")
    op.drop_index(op.f("ix_aliases_department_id"), table_name="aliases")
    op.drop_table("aliases")
    op.drop_index(op.f("ix_departments_domain_id"), table_name="departments")
    op.drop_table("departments")
    op.drop_table("domains")
    op.drop_index("ix_audit_events_target", table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_occurred_at"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_actor_id"), table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("api_keys")
