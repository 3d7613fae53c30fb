"""Tables of the monitor area: check results and states, incidents and their timeline,
notification deliveries, maintenance windows, settings and runs, inspection reports.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "monitor_check_results",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("check", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("observed_value", sa.Double(), nullable=True),
        sa.Column("observed_unit", sa.Text(), nullable=True),
        sa.Column("duration_seconds", sa.Double(), nullable=False),
        sa.Column("message", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "gauges",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
        sa.Column("trigger", sa.Text(), server_default="scheduled", nullable=False),
        sa.Column("silenced", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('pass', 'warn', 'fail', 'unknown')",
            name=op.f("ck_monitor_check_results_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_check_results")),
    )
    op.create_index(
        "ix_monitor_check_results_check_started",
        "monitor_check_results",
        ["check", "started_at"],
        unique=False,
    )
    op.create_table(
        "monitor_incidents",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("check", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="open", nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column(
            "result_ids",
            postgresql.ARRAY(sa.BigInteger()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "opened_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('open', 'acknowledged', 'resolved')",
            name=op.f("ck_monitor_incidents_state_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_incidents")),
    )
    op.create_index(
        op.f("ix_monitor_incidents_check"), "monitor_incidents", ["check"], unique=False
    )
    op.create_index(
        "uq_monitor_incidents_check_unresolved",
        "monitor_incidents",
        ["check"],
        unique=True,
        postgresql_where=sa.text("state <> 'resolved'"),
    )
    op.create_table(
        "monitor_maintenance_runs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("actor_name", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("affected", sa.Integer(), nullable=False),
        sa.Column("summary", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_maintenance_runs")),
    )
    op.create_index(
        op.f("ix_monitor_maintenance_runs_started_at"),
        "monitor_maintenance_runs",
        ["started_at"],
        unique=False,
    )
    op.create_table(
        "monitor_maintenance_windows",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("checks", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "ends_at > starts_at", name=op.f("ck_monitor_maintenance_windows_ends_after_start")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_maintenance_windows")),
    )
    op.create_index(
        op.f("ix_monitor_maintenance_windows_ends_at"),
        "monitor_maintenance_windows",
        ["ends_at"],
        unique=False,
    )
    op.create_table(
        "monitor_reports",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint(
            "kind IN ('daily', 'weekly')", name=op.f("ck_monitor_reports_kind_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_reports")),
    )
    op.create_index(
        "ix_monitor_reports_kind_started", "monitor_reports", ["kind", "started_at"], unique=False
    )
    op.create_table(
        "monitor_check_states",
        sa.Column("check", sa.Text(), nullable=False),
        sa.Column("last_result_id", sa.BigInteger(), nullable=True),
        sa.Column("last_status", sa.Text(), nullable=True),
        sa.Column(
            "consecutive_failures", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("consecutive_passes", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "failing_result_ids",
            postgresql.ARRAY(sa.BigInteger()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("runs_total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("failures_total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["last_result_id"],
            ["monitor_check_results.id"],
            name=op.f("fk_monitor_check_states_last_result_id_monitor_check_results"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("check", name=op.f("pk_monitor_check_states")),
    )
    op.create_table(
        "monitor_incident_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("incident_id", sa.UUID(), nullable=False),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("actor_name", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), server_default="", nullable=False),
        sa.Column("result_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["monitor_incidents.id"],
            name=op.f("fk_monitor_incident_events_incident_id_monitor_incidents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["monitor_check_results.id"],
            name=op.f("fk_monitor_incident_events_result_id_monitor_check_results"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_incident_events")),
    )
    op.create_index(
        op.f("ix_monitor_incident_events_incident_id"),
        "monitor_incident_events",
        ["incident_id"],
        unique=False,
    )
    op.create_table(
        "monitor_notification_deliveries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("incident_id", sa.UUID(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_monitor_notification_deliveries_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["monitor_incidents.id"],
            name=op.f("fk_monitor_notification_deliveries_incident_id_monitor_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_notification_deliveries")),
        sa.UniqueConstraint("incident_id", "event", "url", name="uq_monitor_deliveries_event_url"),
    )
    op.create_index(
        op.f("ix_monitor_notification_deliveries_incident_id"),
        "monitor_notification_deliveries",
        ["incident_id"],
        unique=False,
    )
    op.create_table(
        "monitor_maintenance_settings",
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column(
            "trash_retention_days", sa.Integer(), server_default=sa.text("30"), nullable=False
        ),
        sa.Column(
            "junk_retention_days", sa.Integer(), server_default=sa.text("30"), nullable=False
        ),
        sa.Column(
            "unread_followup_days", sa.Integer(), server_default=sa.text("14"), nullable=False
        ),
        sa.Column("expunge_enabled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "junk_retention_days > 0",
            name=op.f("ck_monitor_maintenance_settings_junk_retention_positive"),
        ),
        sa.CheckConstraint(
            "trash_retention_days > 0",
            name=op.f("ck_monitor_maintenance_settings_trash_retention_positive"),
        ),
        sa.CheckConstraint(
            "unread_followup_days > 0",
            name=op.f("ck_monitor_maintenance_settings_unread_followup_positive"),
        ),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name=op.f("fk_monitor_maintenance_settings_department_id_departments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("department_id", name=op.f("pk_monitor_maintenance_settings")),
    )


def downgrade() -> None:
    op.drop_table("monitor_maintenance_settings")
    op.drop_index(
        op.f("ix_monitor_notification_deliveries_incident_id"),
        table_name="monitor_notification_deliveries",
    )
    op.drop_table("monitor_notification_deliveries")
    op.drop_index(
        op.f("ix_monitor_incident_events_incident_id"), table_name="monitor_incident_events"
    )
    op.drop_table("monitor_incident_events")
    op.drop_table("monitor_check_states")
    op.drop_index("ix_monitor_reports_kind_started", table_name="monitor_reports")
    op.drop_table("monitor_reports")
    op.drop_index(
        op.f("ix_monitor_maintenance_windows_ends_at"), table_name="monitor_maintenance_windows"
    )
    op.drop_table("monitor_maintenance_windows")
    op.drop_index(
        op.f("ix_monitor_maintenance_runs_started_at"), table_name="monitor_maintenance_runs"
    )
    op.drop_table("monitor_maintenance_runs")
    op.drop_index(
        "uq_monitor_incidents_check_unresolved",
        table_name="monitor_incidents",
        postgresql_where=sa.text("state <> 'resolved'"),
    )
    op.drop_index(op.f("ix_monitor_incidents_check"), table_name="monitor_incidents")
    op.drop_table("monitor_incidents")
    op.drop_index("ix_monitor_check_results_check_started", table_name="monitor_check_results")
    op.drop_table("monitor_check_results")
