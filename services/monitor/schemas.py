"""Request and response bodies of the monitor API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, StrictBool, StrictInt

from services.monitor.notifications import shown_url
from shared.models.monitor import IncidentState, ReportKind
from shared.schemas import FromRow, Strict


class CheckResultOut(FromRow):
    id: int
    check: str
    status: str
    observed_value: float | None
    observed_unit: str | None
    duration_seconds: float
    message: str
    details: dict[str, Any]
    trigger: str
    silenced: bool
    started_at: datetime


class CheckOut(BaseModel):
    name: str
    description: str
    interval_seconds: int
    last_result: CheckResultOut | None
    open_incident_id: uuid.UUID | None


class IncidentOut(FromRow):
    id: uuid.UUID
    check: str
    state: IncidentState
    severity: str
    title: str
    result_ids: list[int]
    opened_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None


class IncidentEventOut(FromRow):
    id: int
    occurred_at: datetime
    kind: str
    actor_name: str
    message: str
    result_id: int | None


class NotificationOut(FromRow):
    id: int
    event: str
    url: Annotated[str, AfterValidator(shown_url)]
    status: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None


class IncidentDetail(IncidentOut):
    timeline: list[IncidentEventOut]
    results: list[CheckResultOut]
    notifications: list[NotificationOut]


class IncidentAction(Strict):
    note: str | None = Field(default=None, max_length=4000)


class NoteIn(Strict):
    message: str = Field(min_length=1, max_length=4000)


class MaintenanceWindowIn(Strict):
    checks: list[str] = Field(min_length=1, max_length=20)
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime
    reason: str = Field(default="", max_length=2000)


class MaintenanceWindowOut(FromRow):
    id: uuid.UUID
    checks: list[str]
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str
    created_at: datetime


class ReportIn(Strict):
    kind: ReportKind


class ReportSummary(FromRow):
    id: uuid.UUID
    kind: ReportKind
    status: str
    started_at: datetime
    finished_at: datetime


class ReportOut(ReportSummary):
    body: dict[str, Any]


class MaintenanceRunIn(Strict):
    dry_run: StrictBool = True
    # deferred-cleanup only: how long a message may sit deferred before it goes.
    older_than_days: StrictInt = Field(default=7, ge=1, le=3650)


class MaintenanceRunOut(FromRow):
    id: uuid.UUID
    job: str
    dry_run: bool
    actor_name: str
    started_at: datetime
    finished_at: datetime
    affected: int
    summary: dict[str, Any]


class MaintenanceSettingsIn(Strict):
    trash_retention_days: StrictInt = Field(default=30, ge=1, le=3650)
    junk_retention_days: StrictInt = Field(default=30, ge=1, le=3650)
    unread_followup_days: StrictInt = Field(default=14, ge=1, le=3650)
    expunge_enabled: StrictBool = False


class MaintenanceSettingsOut(MaintenanceSettingsIn, FromRow):
    department_id: uuid.UUID
