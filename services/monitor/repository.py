"""Every query the monitor makes; services and checks hold the rules, not the SQL.

The backup tables (`backup_policies`, `snapshots`, `backup_runs`) belong to the backup
service: they are read here with plain SQL against their agreed columns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Department, Domain, Mailbox, MailboxStatus
from shared.models.backup import VerifyRun
from shared.models.monitor import (
    CheckResult,
    CheckState,
    Incident,
    IncidentEvent,
    IncidentState,
    InspectionReport,
    MaintenanceRun,
    MaintenanceSettings,
    MaintenanceWindow,
    NotificationDelivery,
)

PROBE_DEPARTMENT = "mailops-monitor"
# Mailboxes whose quota and backups the monitor watches.
WATCHED_STATUSES = (MailboxStatus.ACTIVE.value, MailboxStatus.SUSPENDED.value)

# --- mail data ------------------------------------------------------------------------


async def probe_domain(session: AsyncSession, name: str | None) -> Domain | None:
    query = select(Domain)
    query = query.where(Domain.name == name) if name else query.order_by(Domain.created_at)
    return (await session.scalars(query.limit(1))).first()


async def live_mailbox(session: AsyncSession, address: str) -> Mailbox | None:
    return await session.scalar(
        select(Mailbox).where(
            Mailbox.address == address, Mailbox.status != MailboxStatus.PURGED.value
        )
    )


async def department_named(session: AsyncSession, name: str) -> Department | None:
    return await session.scalar(select(Department).where(Department.name == name))


@dataclass(frozen=True)
class WatchedMailbox:
    address: str
    department: str
    quota_bytes: int


async def watched_mailboxes(session: AsyncSession) -> list[WatchedMailbox]:
    """Active and suspended mailboxes (not the probe) with their quota."""
    rows = await session.execute(
        select(Mailbox.address, Department.name, Mailbox.quota_bytes)
        .join(Department, Department.id == Mailbox.department_id)
        .where(Mailbox.status.in_(WATCHED_STATUSES), Department.name != PROBE_DEPARTMENT)
    )
    return [WatchedMailbox(a, d, q) for a, d, q in rows]


async def mailboxes_in_status(
    session: AsyncSession, statuses: Sequence[str], limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """How many mailboxes are in these statuses, and the first `limit` of them."""
    where = Mailbox.status.in_(statuses)
    total = await session.scalar(select(func.count()).select_from(Mailbox).where(where))
    rows = await session.execute(
        select(Mailbox.address, Mailbox.status, Mailbox.status_reason, Mailbox.updated_at)
        .where(where)
        .order_by(Mailbox.updated_at)
        .limit(limit)
    )
    return int(total or 0), [
        {"address": a, "status": s, "reason": r, "since": u.isoformat()} for a, s, r, u in rows
    ]


async def domain_names(session: AsyncSession) -> list[str]:
    return list(await session.scalars(select(Domain.name).order_by(Domain.name)))


async def departments_with_settings(
    session: AsyncSession,
) -> list[tuple[Department, MaintenanceSettings | None]]:
    rows = await session.execute(
        select(Department, MaintenanceSettings)
        .outerjoin(MaintenanceSettings, MaintenanceSettings.department_id == Department.id)
        .order_by(Department.name)
    )
    return [(d, s) for d, s in rows]


async def department(session: AsyncSession, department_id: uuid.UUID) -> Department | None:
    return await session.get(Department, department_id)


async def maintenance_settings(
    session: AsyncSession, department_id: uuid.UUID
) -> MaintenanceSettings | None:
    return await session.get(MaintenanceSettings, department_id)


async def mailbox_departments(session: AsyncSession) -> dict[str, uuid.UUID]:
    """address → department id, for the mailboxes Dovecot knows."""
    rows = await session.execute(
        select(Mailbox.address, Mailbox.department_id).where(
            Mailbox.status != MailboxStatus.PURGED.value
        )
    )
    return {a: d for a, d in rows}


# --- backup service's tables (read only) ----------------------------------------------


_MAILBOX_BACKUP_AGE = f"""
    WITH last AS (
        SELECT mailbox_id, max(completed_at) AS completed_at
        FROM snapshots WHERE completed_at IS NOT NULL GROUP BY mailbox_id
    )
    SELECT m.address, d.name AS department, last.completed_at,
           extract(epoch FROM now() - coalesce(last.completed_at, m.created_at)) AS age,
           coalesce(p.interval_seconds, :default_interval) AS interval_seconds
    FROM mailboxes m
    JOIN departments d ON d.id = m.department_id
    LEFT JOIN last ON last.mailbox_id = m.id
    LEFT JOIN backup_policies p ON p.department_id = m.department_id
    WHERE m.status IN ('active', 'suspended') AND d.name <> '{PROBE_DEPARTMENT}'
"""


async def backup_ages(session: AsyncSession, default_interval: int) -> list[dict[str, Any]]:
    """Each watched mailbox's last committed snapshot, its age in seconds, and its interval
    (its department's policy's, else `default_interval`).

    A mailbox never backed up counts its age from its creation.
    """
    rows = await session.execute(text(_MAILBOX_BACKUP_AGE), {"default_interval": default_interval})
    return [dict(row) for row in rows.mappings()]


@dataclass(frozen=True)
class BackupStore:
    stored: int  # every pack, retired ones included until their file goes
    unused: int  # what no blob needs: what prune's repack and deletions give back
    older_key_blobs: int  # blobs under a key other than the current one: it is still needed
    unreadable_blobs: int  # blobs under a key no longer configured: they cannot be read
    held_snapshots: int  # kept by a hold whatever retention says
    last_prune: float  # when a prune last succeeded, in Unix seconds; 0: never
    oldest_snapshot: float  # when the oldest committed snapshot was completed; 0: none


async def backup_store(
    session: AsyncSession, key_id: str, configured_keys: Sequence[str]
) -> BackupStore:
    """The backup store's size and use, `key_id` being the current backup key and
    `configured_keys` every key the settings hold (the current one and the previous)."""
    row = (
        await session.execute(
            text(
                "SELECT (SELECT coalesce(sum(size), 0) FROM backup_packs) AS stored, "
                "coalesce(sum(length), 0) AS live, "
                "count(*) FILTER (WHERE key_id <> :key_id) AS older, "
                "count(*) FILTER (WHERE NOT key_id = ANY(:keys)) AS unreadable, "
                "(SELECT count(*) FROM snapshots WHERE held_at IS NOT NULL) AS held, "
                "(SELECT extract(epoch FROM max(finished_at)) FROM backup_prune_runs "
                "WHERE status = 'succeeded') AS last_prune, "
                "(SELECT extract(epoch FROM min(completed_at)) FROM snapshots) AS oldest "
                "FROM backup_blobs"
            ),
            {"key_id": key_id, "keys": list(configured_keys)},
        )
    ).one()
    return BackupStore(
        stored=int(row.stored),
        unused=max(0, int(row.stored) - int(row.live)),
        older_key_blobs=int(row.older),
        unreadable_blobs=int(row.unreadable),
        held_snapshots=int(row.held),
        last_prune=float(row.last_prune or 0),
        oldest_snapshot=float(row.oldest or 0),
    )


@dataclass(frozen=True)
class LastVerify:
    finished_at: float  # Unix seconds
    blobs_checked: int
    blobs_damaged: int
    mailboxes: list[str]  # the addresses of the mailboxes its damage affects


async def last_verify(session: AsyncSession) -> LastVerify | None:
    """The latest verify that ran to its end (damage found or not), if any."""
    # Through to the end: succeeded, or failed for the damage it found. One stopped (its
    # timeout, a crash) has written its progress, but says nothing of the blobs it did not
    # reach.
    went_through = (VerifyRun.status == "succeeded") | (VerifyRun.blobs_damaged > 0)
    run = await session.scalar(
        select(VerifyRun)
        .where(VerifyRun.finished_at.is_not(None), VerifyRun.blobs_checked > 0, went_through)
        .order_by(VerifyRun.finished_at.desc())
        .limit(1)
    )
    if run is None or run.finished_at is None:
        return None
    affected = sorted(
        {
            str(m.get("address") or m.get("mailbox_id"))
            for report in run.damage
            for m in report.get("mailboxes", [])
        }
    )
    return LastVerify(run.finished_at.timestamp(), run.blobs_checked, run.blobs_damaged, affected)


async def failed_backup_runs(
    session: AsyncSession, window_seconds: int
) -> tuple[int, list[dict[str, Any]]]:
    """How many backup runs failed within the window, and the latest 50 of them."""
    rows = (
        (
            await session.execute(
                text(
                    """
                SELECT r.id::text AS id, r.reason, m.address, r.started_at, r.finished_at,
                       count(*) OVER () AS failed
                FROM backup_runs r LEFT JOIN mailboxes m ON m.id = r.mailbox_id
                WHERE r.status = 'failed'
                  AND coalesce(r.finished_at, r.started_at) > now() - make_interval(secs => :window)
                ORDER BY coalesce(r.finished_at, r.started_at) DESC
                LIMIT 50
                """
                ),
                {"window": window_seconds},
            )
        )
        .mappings()
        .all()
    )
    listed = [
        {
            k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in row.items()
            if k != "failed"
        }
        for row in rows
    ]
    return (int(rows[0]["failed"]) if rows else 0), listed


# --- check results and states ---------------------------------------------------------


async def lock_check_state(session: AsyncSession, check: str) -> CheckState:
    """The check's state row, created if missing and locked for this transaction."""
    await session.execute(insert(CheckState).values(check=check).on_conflict_do_nothing())
    state = await session.scalar(
        select(CheckState)
        .where(CheckState.check == check)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert state is not None
    return state


@dataclass(frozen=True)
class LatestRun:
    """A check's last result and its run counters: what /metrics shows."""

    check: str
    status: str
    duration_seconds: float
    started_at: datetime
    gauges: list[dict[str, Any]]
    runs_total: int
    failures_total: int


async def latest_results(session: AsyncSession) -> dict[str, CheckResult]:
    """The last result of every check that has run."""
    rows = await session.scalars(
        select(CheckResult).join(CheckState, CheckState.last_result_id == CheckResult.id)
    )
    return {r.check: r for r in rows}


async def latest_runs(session: AsyncSession) -> list[LatestRun]:
    """Each check's last result with its counters, in one query (for /metrics)."""
    rows = await session.execute(
        select(
            CheckResult.check,
            CheckResult.status,
            CheckResult.duration_seconds,
            CheckResult.started_at,
            CheckResult.gauges,
            CheckState.runs_total,
            CheckState.failures_total,
        ).join(CheckState, CheckState.last_result_id == CheckResult.id)
    )
    return [LatestRun(c, s, d, t, g or [], r, f) for c, s, d, t, g, r, f in rows]


async def results(
    session: AsyncSession, check: str, *, limit: int, before_id: int | None
) -> list[CheckResult]:
    query = select(CheckResult).where(CheckResult.check == check)
    if before_id is not None:
        query = query.where(CheckResult.id < before_id)
    return list(await session.scalars(query.order_by(CheckResult.id.desc()).limit(limit)))


async def results_by_id(session: AsyncSession, ids: Sequence[int]) -> list[CheckResult]:
    if not ids:
        return []
    return list(
        await session.scalars(
            select(CheckResult).where(CheckResult.id.in_(ids)).order_by(CheckResult.id)
        )
    )


async def status_counts_since(
    session: AsyncSession, since: datetime | None
) -> dict[str, dict[str, int]]:
    """check → status → number of results since `since` (all history if None)."""
    query = select(CheckResult.check, CheckResult.status, func.count()).group_by(
        CheckResult.check, CheckResult.status
    )
    if since is not None:
        query = query.where(CheckResult.started_at >= since)
    counts: dict[str, dict[str, int]] = {}
    for check, status, count in await session.execute(query):
        counts.setdefault(check, {})[status] = int(count)
    return counts


# --- maintenance windows --------------------------------------------------------------


async def window_silencing(
    session: AsyncSession, check: str, at: datetime
) -> MaintenanceWindow | None:
    return await session.scalar(
        select(MaintenanceWindow)
        .where(
            MaintenanceWindow.starts_at <= at,
            MaintenanceWindow.ends_at > at,
            MaintenanceWindow.checks.contains([check]),
        )
        .limit(1)
    )


async def windows(session: AsyncSession, *, active_at: datetime | None) -> list[MaintenanceWindow]:
    query = select(MaintenanceWindow).order_by(MaintenanceWindow.starts_at.desc())
    if active_at is not None:
        query = query.where(MaintenanceWindow.ends_at > active_at)
    return list(await session.scalars(query.limit(200)))


# --- incidents and notifications ------------------------------------------------------


async def unresolved_incident(session: AsyncSession, check: str) -> Incident | None:
    return await session.scalar(
        select(Incident).where(
            Incident.check == check, Incident.state != IncidentState.RESOLVED.value
        )
    )


async def unresolved_incidents(session: AsyncSession) -> list[Incident]:
    """Every open or acknowledged incident (at most one per check), newest first."""
    return list(
        await session.scalars(
            select(Incident)
            .where(Incident.state != IncidentState.RESOLVED.value)
            .order_by(Incident.opened_at.desc())
        )
    )


async def incident(
    session: AsyncSession, incident_id: uuid.UUID, *, lock: bool = False
) -> Incident | None:
    query = select(Incident).where(Incident.id == incident_id)
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def incidents(session: AsyncSession, *, state: str | None, limit: int) -> list[Incident]:
    query = select(Incident).order_by(Incident.opened_at.desc()).limit(limit)
    if state is not None:
        query = query.where(Incident.state == state)
    return list(await session.scalars(query))


async def open_incident_count(session: AsyncSession) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(Incident)
        .where(Incident.state != IncidentState.RESOLVED.value)
    )
    return int(count or 0)


async def timeline(session: AsyncSession, incident_id: uuid.UUID) -> list[IncidentEvent]:
    return list(
        await session.scalars(
            select(IncidentEvent)
            .where(IncidentEvent.incident_id == incident_id)
            .order_by(IncidentEvent.id)
        )
    )


async def add_delivery(
    session: AsyncSession, *, incident_id: uuid.UUID, event: str, url: str, payload: Any
) -> int | None:
    """A pending webhook delivery; None if this event was already queued for this URL."""
    delivery_id = await session.scalar(
        insert(NotificationDelivery)
        .values(incident_id=incident_id, event=event, url=url, payload=payload)
        .on_conflict_do_nothing()
        .returning(NotificationDelivery.id)
    )
    return int(delivery_id) if delivery_id is not None else None


async def delivery(
    session: AsyncSession, delivery_id: int, *, lock: bool = False
) -> NotificationDelivery | None:
    query = select(NotificationDelivery).where(NotificationDelivery.id == delivery_id)
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def deliveries(session: AsyncSession, incident_id: uuid.UUID) -> list[NotificationDelivery]:
    return list(
        await session.scalars(
            select(NotificationDelivery)
            .where(NotificationDelivery.incident_id == incident_id)
            .order_by(NotificationDelivery.id)
        )
    )


# --- reports and maintenance runs -----------------------------------------------------


async def last_report(session: AsyncSession, kind: str) -> InspectionReport | None:
    return await session.scalar(
        select(InspectionReport)
        .where(InspectionReport.kind == kind)
        .order_by(InspectionReport.started_at.desc())
        .limit(1)
    )


async def reports(session: AsyncSession, *, kind: str | None, limit: int) -> list[InspectionReport]:
    query = select(InspectionReport).order_by(InspectionReport.started_at.desc()).limit(limit)
    if kind is not None:
        query = query.where(InspectionReport.kind == kind)
    return list(await session.scalars(query))


async def report(session: AsyncSession, report_id: uuid.UUID) -> InspectionReport | None:
    return await session.get(InspectionReport, report_id)


async def maintenance_runs_since(
    session: AsyncSession, since: datetime | None, limit: int = 100
) -> list[MaintenanceRun]:
    query = select(MaintenanceRun).order_by(MaintenanceRun.started_at.desc()).limit(limit)
    if since is not None:
        query = query.where(MaintenanceRun.started_at >= since)
    return list(await session.scalars(query))
