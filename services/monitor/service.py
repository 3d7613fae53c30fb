"""The monitor's rules: record check results, open and resolve incidents, notify, silence.

An incident opens after `monitor_failure_threshold` consecutive failures and resolves after
`monitor_recovery_threshold` consecutive non-failures (pass or warn), so one blip neither
opens nor closes one. `unknown` results break neither streak. A check inside a
maintenance window still records its results but opens, resolves and notifies nothing.
Services never commit: the caller's transaction does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.monitor import notifications, repository
from services.monitor.checks import CHECKS, Measurement
from shared.errors import Conflict, NotFound, Unprocessable
from shared.models.monitor import (
    CheckResult,
    CheckStatus,
    Incident,
    IncidentEvent,
    IncidentState,
    MaintenanceWindow,
)
from shared.settings import Settings

SYSTEM_ACTOR = "monitor"
# The failing results an incident keeps as its cause (the first ones of the streak).
EVIDENCE_KEPT = 10


def known_check(name: str) -> str:
    if name not in CHECKS:
        raise NotFound(
            f"There is no check {name!r}; the checks are: {', '.join(CHECKS)}.", field="name"
        )
    return name


def add_event(
    session: AsyncSession,
    *,
    incident_id: uuid.UUID,
    kind: str,
    actor: str,
    message: str,
    result_id: int | None = None,
    occurred_at: datetime | None = None,
) -> IncidentEvent:
    """Append one entry to an incident's timeline."""
    event = IncidentEvent(
        incident_id=incident_id,
        occurred_at=occurred_at or datetime.now(UTC),
        kind=kind,
        actor_name=actor,
        message=message,
        result_id=result_id,
    )
    session.add(event)
    return event


async def record_result(
    session: AsyncSession,
    *,
    settings: Settings,
    measurement: Measurement,
    trigger: str = "scheduled",
) -> CheckResult:
    """Store one run's result and move the check's incident along; scheduled or on demand."""
    outcome = measurement.outcome
    state = await repository.lock_check_state(session, measurement.check)
    window = await repository.window_silencing(session, measurement.check, measurement.started_at)
    result = CheckResult(
        check=measurement.check,
        status=outcome.status.value,
        observed_value=outcome.value,
        observed_unit=outcome.unit,
        duration_seconds=measurement.duration_seconds,
        message=outcome.message[:2000],
        details=outcome.details,
        gauges=[g.as_json() for g in outcome.gauges],
        trigger=trigger,
        silenced=window is not None,
        started_at=measurement.started_at,
    )
    session.add(result)
    await session.flush()

    state.runs_total += 1
    state.last_result_id, state.last_status = result.id, result.status
    state.updated_at = datetime.now(UTC)
    if outcome.status is CheckStatus.FAIL:
        state.failures_total += 1
        state.consecutive_failures += 1
        state.consecutive_passes = 0
        if len(state.failing_result_ids) < EVIDENCE_KEPT:
            state.failing_result_ids = [*state.failing_result_ids, result.id]
    elif outcome.status in (CheckStatus.PASS, CheckStatus.WARN):
        state.consecutive_passes += 1
        state.consecutive_failures = 0
        state.failing_result_ids = []

    if window is not None:
        return result
    incident = await repository.unresolved_incident(session, measurement.check)
    if incident is None and state.consecutive_failures >= settings.monitor_failure_threshold:
        await _open_incident(
            session, settings=settings, evidence=state.failing_result_ids, result=result
        )
    elif incident is not None and state.consecutive_passes >= settings.monitor_recovery_threshold:
        await _resolve(
            session,
            settings=settings,
            incident=incident,
            actor=SYSTEM_ACTOR,
            message=f"{state.consecutive_passes} consecutive passing runs: {result.message}",
            result=result,
        )
    return result


async def _open_incident(
    session: AsyncSession, *, settings: Settings, evidence: list[int], result: CheckResult
) -> Incident:
    now = datetime.now(UTC)
    check = CHECKS[result.check]
    incident = Incident(
        id=uuid.uuid4(),
        check=result.check,
        state=IncidentState.OPEN.value,
        severity="critical",
        title=f"{check.name} failing: {result.message}"[:300],
        result_ids=list(evidence),
        opened_at=now,
    )
    session.add(incident)
    add_event(
        session,
        incident_id=incident.id,
        kind="opened",
        actor=SYSTEM_ACTOR,
        message=f"{len(evidence)} consecutive failures: {result.message}"[:2000],
        result_id=result.id,
        occurred_at=now,
    )
    await session.flush()
    await notifications.notify(
        session, settings=settings, incident=incident, event="opened", result=result
    )
    return incident


async def _resolve(
    session: AsyncSession,
    *,
    settings: Settings,
    incident: Incident,
    actor: str,
    message: str,
    result: CheckResult | None,
) -> None:
    now = datetime.now(UTC)
    incident.state = IncidentState.RESOLVED.value
    incident.resolved_at, incident.resolved_by = now, actor
    add_event(
        session,
        incident_id=incident.id,
        kind="resolved",
        actor=actor,
        message=message[:2000],
        result_id=result.id if result else None,
        occurred_at=now,
    )
    await session.flush()
    await notifications.notify(
        session, settings=settings, incident=incident, event="resolved", result=result
    )


async def get_incident(
    session: AsyncSession, incident_id: uuid.UUID, *, lock: bool = False
) -> Incident:
    incident = await repository.incident(session, incident_id, lock=lock)
    if incident is None:
        raise NotFound(f"There is no incident {incident_id}.", field="incident_id")
    return incident


async def _unresolved_incident(session: AsyncSession, incident_id: uuid.UUID) -> Incident:
    """The incident, locked for this transaction; Conflict if it is already resolved."""
    incident = await get_incident(session, incident_id, lock=True)
    if incident.state == IncidentState.RESOLVED:
        raise Conflict("The incident is already resolved.", field="state")
    return incident


async def acknowledge(
    session: AsyncSession, *, incident_id: uuid.UUID, actor: str, note: str | None
) -> Incident:
    incident = await _unresolved_incident(session, incident_id)
    if incident.state == IncidentState.OPEN:
        now = datetime.now(UTC)
        incident.state = IncidentState.ACKNOWLEDGED.value
        incident.acknowledged_at, incident.acknowledged_by = now, actor
        add_event(
            session,
            incident_id=incident.id,
            kind="acknowledged",
            actor=actor,
            message=note or "",
            occurred_at=now,
        )
    return incident


async def resolve(
    session: AsyncSession,
    *,
    settings: Settings,
    incident_id: uuid.UUID,
    actor: str,
    note: str | None,
) -> Incident:
    incident = await _unresolved_incident(session, incident_id)
    await _resolve(
        session,
        settings=settings,
        incident=incident,
        actor=actor,
        message=note or "resolved by hand",
        result=None,
    )
    return incident


async def add_note(
    session: AsyncSession, *, incident_id: uuid.UUID, actor: str, message: str
) -> IncidentEvent:
    incident = await get_incident(session, incident_id)
    event = add_event(session, incident_id=incident.id, kind="note", actor=actor, message=message)
    await session.flush()
    return event


async def create_window(
    session: AsyncSession,
    *,
    checks: list[str],
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
    actor: str,
) -> MaintenanceWindow:
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise Unprocessable(
            f"Unknown check(s): {', '.join(unknown)}; the checks are: {', '.join(CHECKS)}.",
            field="checks",
        )
    if ends_at <= starts_at:
        raise Unprocessable("A window must end after it starts.", field="ends_at")
    window = MaintenanceWindow(
        id=uuid.uuid4(),
        checks=sorted(set(checks)),
        starts_at=starts_at,
        ends_at=ends_at,
        reason=reason,
        created_by=actor,
        created_at=datetime.now(UTC),
    )
    session.add(window)
    await session.flush()
    return window


def overall(statuses: list[str]) -> str:
    """health+json's overall status: fail beats warn beats pass; unknown counts as warn."""
    if "fail" in statuses:
        return "fail"
    if "warn" in statuses or "unknown" in statuses:
        return "warn"
    return "pass"


async def status(session: AsyncSession) -> dict[str, Any]:
    """Each check's last result and the overall verdict (never-run checks are `unknown`)."""
    latest = await repository.latest_results(session)
    checks: dict[str, Any] = {name: latest.get(name) for name in CHECKS}
    return {
        "status": overall([r.status if r else "unknown" for r in checks.values()]),
        "checks": checks,
    }
