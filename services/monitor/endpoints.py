"""The monitor API under /v1: status, checks, incidents, maintenance windows, reports.

`viewer` (and `operator`, `support`) keys read everything; `operator` keys act.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from services.monitor import maintenance, reports, repository, runner, service
from services.monitor.checks import CHECKS, check_intervals
from services.monitor.maintenance import MaintenanceJob
from services.monitor.schemas import (
    CheckOut,
    CheckResultOut,
    IncidentAction,
    IncidentDetail,
    IncidentEventOut,
    IncidentOut,
    MaintenanceRunIn,
    MaintenanceRunOut,
    MaintenanceSettingsIn,
    MaintenanceSettingsOut,
    MaintenanceWindowIn,
    MaintenanceWindowOut,
    NoteIn,
    NotificationOut,
    ReportIn,
    ReportOut,
    ReportSummary,
)
from shared import audit
from shared.app import located
from shared.auth import Principal, SessionDep, require
from shared.errors import NotFound, problem_responses
from shared.models import Role
from shared.models.monitor import IncidentState, MaintenanceSettings, ReportKind
from shared.observability import HealthResponse
from shared.schemas import RowId
from shared.settings import get_settings

router = APIRouter(
    prefix="/v1", tags=["monitor"], responses=problem_responses(400, 401, 403, 404, 409, 422, 503)
)
Reader = Annotated[Principal, Depends(require(Role.VIEWER, Role.OPERATOR, Role.SUPPORT))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]


def _health_entry(name: str, result: Any) -> dict[str, Any]:
    if result is None:
        return {
            "componentId": name,
            "status": "warn",
            "checkStatus": "unknown",
            "output": "has not run yet",
        }
    entry: dict[str, Any] = {
        "componentId": name,
        # health+json knows pass/warn/fail: a check that cannot tell is a warning there.
        "status": "warn" if result.status == "unknown" else result.status,
        "checkStatus": result.status,
        "time": result.started_at.isoformat(),
        "output": result.message,
        "durationSeconds": round(result.duration_seconds, 4),
    }
    if result.observed_value is not None:
        entry["observedValue"] = result.observed_value
        entry["observedUnit"] = result.observed_unit
    return entry


@router.get(
    "/status",
    summary="Overall status with each check's last result (health+json)",
    response_class=HealthResponse,
)
async def get_status(session: SessionDep, _: Reader) -> HealthResponse:
    current = await service.status(session)
    body = {
        "status": current["status"],
        "serviceId": "mailops-monitor",
        "description": "mail platform health from real-protocol checks",
        "checks": {
            name: [_health_entry(name, result)] for name, result in current["checks"].items()
        },
    }
    return HealthResponse(body)


@router.get("/checks", summary="Every check with its interval and last result")
async def list_checks(session: SessionDep, _: Reader) -> list[CheckOut]:
    latest = await repository.latest_results(session)
    unresolved = {i.check: i.id for i in await repository.unresolved_incidents(session)}
    intervals = check_intervals(get_settings())
    return [
        CheckOut(
            name=name,
            description=check.description,
            interval_seconds=intervals[name],
            last_result=CheckResultOut.model_validate(latest[name]) if name in latest else None,
            open_incident_id=unresolved.get(name),
        )
        for name, check in CHECKS.items()
    ]


@router.get("/checks/{name}/results", summary="A check's result history, newest first")
async def check_results(
    name: str,
    session: SessionDep,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before_id: Annotated[RowId | None, Query()] = None,
) -> list[CheckResultOut]:
    service.known_check(name)
    rows = await repository.results(session, name, limit=limit, before_id=before_id)
    return [CheckResultOut.model_validate(r) for r in rows]


@router.post("/checks/{name}/run", status_code=201, summary="Run a check now")
async def run_check(name: str, session: SessionDep, _: Operator) -> CheckResultOut:
    service.known_check(name)
    (result,) = await runner.run_and_record(
        session, names=[name], settings=get_settings(), trigger="on-demand"
    )
    return CheckResultOut.model_validate(result)


@router.get("/incidents", summary="Incidents, newest first, optionally by state")
async def list_incidents(
    session: SessionDep,
    _: Reader,
    state: IncidentState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[IncidentOut]:
    rows = await repository.incidents(session, state=state.value if state else None, limit=limit)
    return [IncidentOut.model_validate(i) for i in rows]


async def _detail(session: SessionDep, incident_id: uuid.UUID) -> IncidentDetail:
    incident = await service.get_incident(session, incident_id)
    timeline = await repository.timeline(session, incident_id)
    results = await repository.results_by_id(
        session, [*incident.result_ids, *(e.result_id for e in timeline if e.result_id)]
    )
    deliveries = await repository.deliveries(session, incident_id)
    return IncidentDetail(
        **IncidentOut.model_validate(incident).model_dump(),
        timeline=[IncidentEventOut.model_validate(e) for e in timeline],
        results=[CheckResultOut.model_validate(r) for r in results],
        notifications=[NotificationOut.model_validate(d) for d in deliveries],
    )


@router.get("/incidents/{incident_id}", summary="An incident with its timeline and causes")
async def get_incident(incident_id: uuid.UUID, session: SessionDep, _: Reader) -> IncidentDetail:
    return await _detail(session, incident_id)


@router.post("/incidents/{incident_id}/acknowledge", summary="Acknowledge an open incident")
async def acknowledge_incident(
    incident_id: uuid.UUID,
    session: SessionDep,
    principal: Operator,
    body: IncidentAction | None = None,
) -> IncidentDetail:
    await service.acknowledge(
        session, incident_id=incident_id, actor=principal.name, note=body.note if body else None
    )
    await session.flush()
    return await _detail(session, incident_id)


@router.post("/incidents/{incident_id}/resolve", summary="Resolve an incident by hand")
async def resolve_incident(
    incident_id: uuid.UUID,
    session: SessionDep,
    principal: Operator,
    body: IncidentAction | None = None,
) -> IncidentDetail:
    await service.resolve(
        session,
        settings=get_settings(),
        incident_id=incident_id,
        actor=principal.name,
        note=body.note if body else None,
    )
    await session.flush()
    return await _detail(session, incident_id)


@router.post("/incidents/{incident_id}/notes", status_code=201, summary="Add a timeline note")
async def add_note(
    incident_id: uuid.UUID, body: NoteIn, session: SessionDep, principal: Operator
) -> IncidentEventOut:
    event = await service.add_note(
        session, incident_id=incident_id, actor=principal.name, message=body.message
    )
    return IncidentEventOut.model_validate(event)


@router.post(
    "/maintenance-windows", status_code=201, summary="Silence named checks for a time span"
)
async def create_window(
    body: MaintenanceWindowIn, session: SessionDep, principal: Operator
) -> MaintenanceWindowOut:
    window = await service.create_window(
        session,
        checks=body.checks,
        starts_at=body.starts_at or datetime.now(UTC),
        ends_at=body.ends_at,
        reason=body.reason,
        actor=principal.name,
    )
    return MaintenanceWindowOut.model_validate(window)


@router.get("/maintenance-windows", summary="Current and future maintenance windows")
async def list_windows(session: SessionDep, _: Reader) -> list[MaintenanceWindowOut]:
    rows = await repository.windows(session, active_at=datetime.now(UTC))
    return [MaintenanceWindowOut.model_validate(w) for w in rows]


@router.get("/reports", summary="Inspection reports, newest first")
async def list_reports(
    session: SessionDep,
    _: Reader,
    kind: ReportKind | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 30,
) -> list[ReportSummary]:
    rows = await repository.reports(session, kind=kind.value if kind else None, limit=limit)
    return [ReportSummary.model_validate(r) for r in rows]


@router.get(
    "/reports/{report_id}",
    summary="One report, as JSON or (Accept: text/html) as a page",
    response_model=ReportOut,
    responses={200: {"content": {"text/html": {}}}},
)
async def get_report(
    report_id: uuid.UUID, request: Request, session: SessionDep, _: Reader
) -> Response | ReportOut:
    report = await repository.report(session, report_id)
    if report is None:
        raise NotFound(f"There is no report {report_id}.", field="report_id")
    accept = request.headers.get("accept", "")
    if "text/html" in accept and "application/json" not in accept.split(",")[0]:
        return HTMLResponse(reports.render_html(report))
    return ReportOut.model_validate(report)


@router.post(
    "/reports",
    status_code=201,
    responses=located(201, "The report"),
    summary="Run an inspection now and store its report",
)
async def create_report(
    body: ReportIn, session: SessionDep, _: Operator, response: Response
) -> ReportOut:
    report = await reports.inspect(session, kind=body.kind, settings=get_settings())
    response.headers["Location"] = f"/v1/reports/{report.id}"
    return ReportOut.model_validate(report)


@router.post(
    "/maintenance/{job}", status_code=201, summary="Run a maintenance job (dry run by default)"
)
async def run_maintenance(
    job: MaintenanceJob,
    session: SessionDep,
    principal: Operator,
    body: MaintenanceRunIn | None = None,
) -> MaintenanceRunOut:
    body = body or MaintenanceRunIn()
    record = await maintenance.run(
        session,
        settings=get_settings(),
        job=job,
        dry_run=body.dry_run,
        actor=principal,
        older_than_days=body.older_than_days,
    )
    return MaintenanceRunOut.model_validate(record)


@router.get("/maintenance/runs", summary="Maintenance runs, newest first")
async def list_maintenance_runs(session: SessionDep, _: Reader) -> list[MaintenanceRunOut]:
    rows = await repository.maintenance_runs_since(session, None)
    return [MaintenanceRunOut.model_validate(r) for r in rows]


async def _department(session: SessionDep, department_id: uuid.UUID) -> None:
    if await repository.department(session, department_id) is None:
        raise NotFound(f"There is no department {department_id}.", field="department_id")


@router.get(
    "/departments/{department_id}/maintenance-settings",
    summary="A department's maintenance settings (defaults if never set)",
)
async def get_maintenance_settings(
    department_id: uuid.UUID, session: SessionDep, _: Reader
) -> MaintenanceSettingsOut:
    await _department(session, department_id)
    row = await repository.maintenance_settings(session, department_id)
    if row is None:
        return MaintenanceSettingsOut(department_id=department_id)
    return MaintenanceSettingsOut.model_validate(row)


@router.put(
    "/departments/{department_id}/maintenance-settings",
    summary="Set a department's maintenance settings",
)
async def put_maintenance_settings(
    department_id: uuid.UUID,
    body: MaintenanceSettingsIn,
    session: SessionDep,
    principal: Operator,
) -> MaintenanceSettingsOut:
    await _department(session, department_id)
    row = await repository.maintenance_settings(session, department_id)
    before = (
        MaintenanceSettingsIn.model_validate(row, from_attributes=True).model_dump()
        if row
        else None
    )
    if row is None:
        row = MaintenanceSettings(department_id=department_id)
        session.add(row)
    for key, value in body.model_dump().items():
        setattr(row, key, value)
    row.updated_at = datetime.now(UTC)
    audit.record(
        session,
        actor=principal,
        action="monitor.maintenance_settings.set",
        target_type="department",
        target_id=department_id,
        before=before,
        after=body.model_dump(),
    )
    await session.flush()
    return MaintenanceSettingsOut.model_validate(row)
