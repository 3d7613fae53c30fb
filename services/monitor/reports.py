"""Daily and weekly inspections: every check, the findings that need follow-up, a stored report.

The body is JSON (served as is) and renders to a plain HTML page for people.
"""

from __future__ import annotations

import html
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from string import Template
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.monitor import repository, runner, service
from services.monitor.checks import CHECKS
from shared.models import MailboxStatus
from shared.models.monitor import CheckResult, InspectionReport, ReportKind
from shared.settings import Settings

LISTED = 200
PERIOD = {ReportKind.DAILY: timedelta(days=1), ReportKind.WEEKLY: timedelta(days=7)}
_RANK = {"pass": 0, "unknown": 1, "warn": 2, "fail": 3}


def _trend(previous: str | None, current: str) -> str:
    if previous is None:
        return "new"
    if _RANK[current] == _RANK[previous]:
        return "same"
    return "better" if _RANK[current] < _RANK[previous] else "worse"


async def inspect(
    session: AsyncSession, *, kind: ReportKind, settings: Settings
) -> InspectionReport:
    """Run every check (recorded like scheduled runs) and store the report."""
    started = datetime.now(UTC)
    previous = await repository.last_report(session, kind.value)
    since = previous.started_at if previous else started - PERIOD[kind]
    results = await runner.run_and_record(
        session, names=list(CHECKS), settings=settings, trigger=f"{kind.value}-inspection"
    )
    by_check = {r.check: r for r in results}
    counts = await repository.status_counts_since(session, since)
    previous_status = {
        c["name"]: c["status"] for c in (previous.body.get("checks", []) if previous else [])
    }
    checks = [
        {
            "name": r.check,
            "status": r.status,
            "message": r.message,
            "observed_value": r.observed_value,
            "observed_unit": r.observed_unit,
            "duration_seconds": round(r.duration_seconds, 4),
            "previous_status": previous_status.get(r.check),
            "trend": _trend(previous_status.get(r.check), r.status),
            "runs_since_last_report": counts.get(r.check, {}),
        }
        for r in results
    ]
    open_incidents = [
        {
            "id": str(i.id),
            "check": i.check,
            "state": i.state,
            "severity": i.severity,
            "title": i.title,
            "opened_at": i.opened_at.isoformat(),
        }
        for i in await repository.unresolved_incidents(session)
    ]
    held_count, held = await repository.mailboxes_in_status(
        session, (MailboxStatus.SUSPENDED.value, MailboxStatus.DELETING.value), LISTED
    )
    runs = await repository.maintenance_runs_since(session, since)
    body: dict[str, Any] = {
        "kind": kind.value,
        "status": service.overall([r.status for r in results]),
        "started_at": started.isoformat(),
        "period_start": since.isoformat(),
        "checks": checks,
        "near_quota": _details(by_check.get("quota"), "near_quota"),
        "near_quota_count": _details(by_check.get("quota"), "near_quota_count", 0),
        "stale_backups": _details(by_check.get("backup_freshness"), "stale"),
        "stale_backup_count": _details(by_check.get("backup_freshness"), "stale_count", 0),
        "failed_backup_runs": _details(by_check.get("backup_freshness"), "failed_runs"),
        "open_incidents": open_incidents,
        "queue": {
            "depth": _details(by_check.get("queue"), "depth", {}),
            "oldest_age_seconds": _details(by_check.get("queue"), "oldest_age_seconds", None),
        },
        "certificates": _details(by_check.get("tls"), "endpoints"),
        "suspended_or_deleting_count": held_count,
        "suspended_or_deleting": held,
        "maintenance": [
            {
                "job": run.job,
                "dry_run": run.dry_run,
                "actor": run.actor_name,
                "started_at": run.started_at.isoformat(),
                "affected": run.affected,
                "summary": run.summary,
            }
            for run in runs
        ],
    }
    report = InspectionReport(
        id=uuid.uuid4(),
        kind=kind.value,
        status=body["status"],
        started_at=started,
        finished_at=datetime.now(UTC),
        body=body,
    )
    session.add(report)
    await session.flush()
    return report


def _details(result: CheckResult | None, key: str, default: Any = ()) -> Any:
    """A finding from a check's details; lists default to empty."""
    if result is None or result.details.get(key) is None:
        return list(default) if isinstance(default, tuple) else default
    return result.details[key]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> str:
    if not rows:
        return f"<p class='none'>{_e(empty)}</p>"
    head = "".join(f"<th>{_e(c.replace('_', ' '))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: InspectionReport) -> str:
    """The report as a self-contained HTML page."""
    body = report.body
    template = Template(resources.files("services.monitor").joinpath("report.html").read_text())
    checks = [{**c, "status": c["status"].upper()} for c in body.get("checks", [])]
    queue = body.get("queue", {})
    queue_rows = [{"queue": q, "messages": n} for q, n in (queue.get("depth") or {}).items()]
    return template.substitute(
        title=_e(f"mailops {report.kind} inspection — {report.started_at:%Y-%m-%d %H:%M} UTC"),
        status=_e(report.status),
        status_class=_e(report.status),
        period=_e(f"{body.get('period_start')} → {body.get('started_at')}"),
        checks=_table(
            checks, ["name", "status", "trend", "previous_status", "message"], "No checks ran."
        ),
        incidents=_table(
            body.get("open_incidents", []),
            ["check", "state", "severity", "opened_at", "title"],
            "No open incidents.",
        ),
        near_quota=_table(
            body.get("near_quota", []),
            ["address", "department", "ratio", "used_bytes", "quota_bytes", "level"],
            "No mailbox near its quota.",
        ),
        near_quota_count=_e(body.get("near_quota_count", 0)),
        stale_backups=_table(
            body.get("stale_backups", []),
            ["address", "department", "last_snapshot_at", "age_seconds", "interval_seconds"],
            "Every mailbox has a fresh backup.",
        ),
        stale_backup_count=_e(body.get("stale_backup_count", 0)),
        failed_runs=_table(
            body.get("failed_backup_runs", []),
            ["address", "reason", "finished_at"],
            "No failed backup runs.",
        ),
        queue=_table(queue_rows, ["queue", "messages"], "Queue not read."),
        queue_oldest=_e(queue.get("oldest_age_seconds")),
        certificates=_table(
            body.get("certificates", []),
            ["endpoint", "status", "days_left", "error"],
            "No TLS endpoints configured.",
        ),
        held=_table(
            body.get("suspended_or_deleting", []),
            ["address", "status", "reason", "since"],
            "No suspended or deleting mailboxes.",
        ),
        held_count=_e(body.get("suspended_or_deleting_count", 0)),
        maintenance=_table(
            body.get("maintenance", []),
            ["job", "dry_run", "actor", "started_at", "affected"],
            "No maintenance runs in this period.",
        ),
    )
