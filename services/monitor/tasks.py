"""Monitor jobs: scheduled checks, webhook deliveries, daily and weekly inspections.

Jobs take JSON arguments, reload what they need, and are idempotent: a delivery already
sent is not sent again; a check slot (name + interval window) runs once.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from arq import Retry

from services.monitor import maintenance, notifications, reports, repository, runner, service
from services.monitor.checks import CHECKS, check_intervals
from services.monitor.maintenance import MaintenanceJob
from shared.db import unit_of_work
from shared.models.monitor import DeliveryStatus, ReportKind
from shared.queue import enqueue
from shared.settings import get_settings

log = logging.getLogger("mailops.monitor.tasks")

WEBHOOK_TIMEOUT_SECONDS = 5.0


async def run_check(ctx: dict[str, Any], name: str, trigger: str = "scheduled") -> str:
    """Run one check and record its result (and any incident it opens or resolves)."""
    if name not in CHECKS:
        return f"unknown check {name}"
    async with unit_of_work() as session:
        (result,) = await runner.run_and_record(
            session, names=[name], settings=get_settings(), trigger=trigger
        )
        return result.status


async def schedule_checks(ctx: dict[str, Any]) -> int:
    """Every minute: enqueue each check whose interval slot has not run yet."""
    now = time.time()
    queued = 0
    for name, interval in check_intervals(get_settings()).items():
        slot = int(now // interval)
        # The job id names the slot: a second scheduler tick in the same slot is a no-op.
        queued += await enqueue("monitor", "run_check", job_id=f"check:{name}:{slot}", name=name)
    return queued


async def deliver_notification(ctx: dict[str, Any], delivery_id: int) -> str:
    """POST one webhook; on error retry with backoff (1, 2, 4 ... s, at most 5 min)."""
    settings = get_settings()
    async with unit_of_work() as session:
        delivery = await repository.delivery(session, delivery_id, lock=True)
        if delivery is None or delivery.status != DeliveryStatus.PENDING:
            return "nothing to do"
        delivery.attempts += 1
        try:
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS) as http:
                response = await http.post(delivery.url, json=delivery.payload)
            error = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        now = datetime.now(UTC)
        if error is None:
            delivery.status, delivery.delivered_at, delivery.last_error = (
                DeliveryStatus.DELIVERED.value,
                now,
                None,
            )
            service.add_event(
                session,
                incident_id=delivery.incident_id,
                kind="notified",
                actor=service.SYSTEM_ACTOR,
                message=f"{delivery.event} sent to {notifications.shown_url(delivery.url)}",
                occurred_at=now,
            )
            return "delivered"
        delivery.last_error = error
        tries = int(ctx.get("job_try", 1))
        if tries < settings.monitor_webhook_max_tries:
            await session.commit()
            raise Retry(defer=min(300, 2 ** (tries - 1)))
        delivery.status = DeliveryStatus.FAILED.value
        where = notifications.shown_url(delivery.url)
        log.warning("webhook %s gave up after %d tries: %s", where, tries, error)
        return "failed"


async def run_inspection(ctx: dict[str, Any], kind: str) -> str:
    """Run every check and store a daily or weekly report."""
    async with unit_of_work() as session:
        report = await reports.inspect(session, kind=ReportKind(kind), settings=get_settings())
        return str(report.id)


async def daily_inspection(ctx: dict[str, Any]) -> str:
    return await run_inspection(ctx, ReportKind.DAILY.value)


async def weekly_inspection(ctx: dict[str, Any]) -> str:
    return await run_inspection(ctx, ReportKind.WEEKLY.value)


async def daily_maintenance(ctx: dict[str, Any]) -> dict[str, int]:
    """Before the daily inspection: expunge where departments enabled it, report the rest.

    Deferred mail is only reported here; removing it takes an operator's explicit run.
    """
    settings = get_settings()
    done: dict[str, int] = {}
    for job, dry_run in (
        (MaintenanceJob.EXPUNGE_TRASH_JUNK, False),
        (MaintenanceJob.UNREAD_FOLLOWUP, True),
        (MaintenanceJob.DEFERRED_CLEANUP, True),
    ):
        async with unit_of_work() as session:
            record = await maintenance.run(
                session, settings=settings, job=job, dry_run=dry_run, actor=None
            )
            done[job.value] = record.affected
    return done
