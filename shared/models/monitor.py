"""Tables of the monitor area of the shared schema.

Check results are kept with history; a per-check state row carries the consecutive counts
that open and resolve incidents (and serialises concurrent runs of one check).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base
from shared.models.core import one_of, timestamp_now


class CheckStatus(enum.StrEnum):
    """A check's verdict; `unknown` means it could not tell (e.g. no DNS resolver reachable)."""

    PASS = "pass"  # noqa: S105 - a verdict, not a password
    WARN = "warn"
    FAIL = "fail"
    UNKNOWN = "unknown"


class IncidentState(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class ReportKind(enum.StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class CheckResult(Base):
    """One run of one check, scheduled or on demand; kept as history."""

    __tablename__ = "monitor_check_results"
    __table_args__ = (
        CheckConstraint(one_of("status", CheckStatus), name="status_known"),
        Index("ix_monitor_check_results_check_started", "check", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    check: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    observed_value: Mapped[float | None] = mapped_column(Double)
    observed_unit: Mapped[str | None] = mapped_column(Text)
    duration_seconds: Mapped[float] = mapped_column(Double)
    message: Mapped[str] = mapped_column(Text, server_default="")
    # Structured findings (e.g. mailboxes near quota, the failed leg of a delivery).
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    # Aggregate gauges for /metrics: [{"name", "labels", "value"}]; never per mailbox.
    gauges: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))
    trigger: Mapped[str] = mapped_column(Text, server_default="scheduled")
    silenced: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    started_at: Mapped[datetime] = timestamp_now()


class CheckState(Base):
    """The running tally of one check: consecutive counts drive incidents, totals drive metrics."""

    __tablename__ = "monitor_check_states"

    check: Mapped[str] = mapped_column(Text, primary_key=True)
    last_result_id: Mapped[int | None] = mapped_column(
        ForeignKey("monitor_check_results.id", ondelete="SET NULL")
    )
    last_status: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    consecutive_passes: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Result ids of the current failure streak: the evidence an incident opens with.
    failing_result_ids: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), server_default=text("'{}'")
    )
    runs_total: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failures_total: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    updated_at: Mapped[datetime] = timestamp_now()


class Incident(Base):
    """A check failing past its threshold: open → acknowledged → resolved."""

    __tablename__ = "monitor_incidents"
    __table_args__ = (
        CheckConstraint(one_of("state", IncidentState), name="state_known"),
        # At most one unresolved incident per check: a failure streak never opens two.
        Index(
            "uq_monitor_incidents_check_unresolved",
            "check",
            unique=True,
            postgresql_where=text("state <> 'resolved'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    check: Mapped[str] = mapped_column(Text, index=True)
    state: Mapped[str] = mapped_column(Text, server_default=IncidentState.OPEN.value)
    severity: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    result_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), server_default=text("'{}'"))
    opened_at: Mapped[datetime] = timestamp_now()
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(Text)


class IncidentEvent(Base):
    """One line of an incident's timeline: opened, acknowledged, note, notified, resolved."""

    __tablename__ = "monitor_incident_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    incident_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("monitor_incidents.id", ondelete="CASCADE"), index=True
    )
    occurred_at: Mapped[datetime] = timestamp_now()
    kind: Mapped[str] = mapped_column(Text)
    actor_name: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text, server_default="")
    result_id: Mapped[int | None] = mapped_column(
        ForeignKey("monitor_check_results.id", ondelete="SET NULL")
    )


class NotificationDelivery(Base):
    """One webhook call about one incident event; unique, so each is sent at most once."""

    __tablename__ = "monitor_notification_deliveries"
    __table_args__ = (
        CheckConstraint(one_of("status", DeliveryStatus), name="status_known"),
        UniqueConstraint("incident_id", "event", "url", name="uq_monitor_deliveries_event_url"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    incident_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("monitor_incidents.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = timestamp_now()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MaintenanceWindow(Base):
    """A time span during which the named checks raise no incidents or notifications."""

    __tablename__ = "monitor_maintenance_windows"
    __table_args__ = (CheckConstraint("ends_at > starts_at", name="ends_after_start"),)

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    checks: Mapped[list[str]] = mapped_column(ARRAY(Text))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    reason: Mapped[str] = mapped_column(Text, server_default="")
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = timestamp_now()


class InspectionReport(Base):
    """A daily or weekly inspection: every check, the findings, and the actions taken."""

    __tablename__ = "monitor_reports"
    __table_args__ = (
        CheckConstraint(one_of("kind", ReportKind), name="kind_known"),
        Index("ix_monitor_reports_kind_started", "kind", "started_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    kind: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)


class MaintenanceSettings(Base):
    """A department's maintenance policy; no row means the defaults below."""

    __tablename__ = "monitor_maintenance_settings"
    __table_args__ = (
        CheckConstraint("trash_retention_days > 0", name="trash_retention_positive"),
        CheckConstraint("junk_retention_days > 0", name="junk_retention_positive"),
        CheckConstraint("unread_followup_days > 0", name="unread_followup_positive"),
    )

    department_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("departments.id", ondelete="CASCADE"), primary_key=True
    )
    trash_retention_days: Mapped[int] = mapped_column(Integer, server_default=text("30"))
    junk_retention_days: Mapped[int] = mapped_column(Integer, server_default=text("30"))
    unread_followup_days: Mapped[int] = mapped_column(Integer, server_default=text("14"))
    # Off by default: the scheduled run only reports what it would expunge.
    expunge_enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    updated_at: Mapped[datetime] = timestamp_now()


class MaintenanceRun(Base):
    """One maintenance job run (dry or real) and what it found or did."""

    __tablename__ = "monitor_maintenance_runs"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    job: Mapped[str] = mapped_column(Text)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    actor_name: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    affected: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONB)
