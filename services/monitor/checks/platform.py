"""`platform`: PostgreSQL, Redis, the job queues and workers, the APIs' /readyz, free disk."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from services.monitor.checks.base import (
    Check,
    CheckContext,
    Gauge,
    Outcome,
    Status,
    describe,
    worst,
)
from shared.queue import HEARTBEAT_STALE_SECONDS, SERVICES, get_pool, heartbeat_age, queue_name
from shared.settings import Settings

# A worker stamps its heartbeat every minute; three missed minutes mean it is gone.


def readyz_urls(settings: Settings) -> list[str]:
    if settings.monitor_readyz_urls is not None:
        return settings.monitor_readyz_urls
    return [
        f"{url.rstrip('/')}/readyz"
        for url in (settings.provisioning_url, settings.backup_url, settings.monitor_url)
    ]


def disk_paths(settings: Settings) -> list[Path]:
    return settings.monitor_disk_paths or [settings.resolved_state_dir]


async def _queues() -> tuple[dict[str, Any], list[Gauge], list[Status], list[str]]:
    pool = await get_pool()
    await pool.ping()
    findings: dict[str, Any] = {}
    gauges: list[Gauge] = []
    statuses: list[Status] = []
    problems: list[str] = []
    names = {queue_name(s): s for s in SERVICES}
    failed = dict.fromkeys(SERVICES, 0)
    # Finished jobs keep their result for an hour (keep_result): count the failures.
    keys = [key async for key in pool.scan_iter(match="arq:result:*", count=1000)]
    for start in range(0, len(keys), 500):
        for raw in await pool.mget(keys[start : start + 500]):
            if raw is None:
                continue
            try:
                result = json.loads(raw)
            except ValueError:
                continue
            service = names.get(result.get("q", ""))
            if service is not None and not result.get("s", True):
                failed[service] += 1
    for service in SERVICES:
        depth = int(await pool.zcard(queue_name(service)))
        age = await heartbeat_age(service)
        findings[service] = {
            "queued_jobs": depth,
            "failed_jobs_last_hour": failed[service],
            "worker_heartbeat_age_seconds": round(age, 1) if age is not None else None,
        }
        gauges.append(Gauge("mailops_jobs_queued", depth, {"queue": service}))
        gauges.append(Gauge("mailops_jobs_failed_recent", failed[service], {"queue": service}))
        gauges.append(
            Gauge(
                "mailops_worker_up",
                float(age is not None and age < HEARTBEAT_STALE_SECONDS),
                {"queue": service},
            )
        )
        if age is None or age >= HEARTBEAT_STALE_SECONDS:
            statuses.append(Status.WARN)
            problems.append(f"{service} worker has no recent heartbeat")
        if failed[service]:
            statuses.append(Status.WARN)
            problems.append(f"{failed[service]} failed {service} job(s) in the last hour")
    return findings, gauges, statuses, problems


class PlatformCheck(Check):
    name = "platform"
    description = "PostgreSQL, Redis, job queues and workers, the APIs' /readyz, free disk"
    interval_seconds = 60

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        statuses: list[Status] = []
        problems: list[str] = []
        details: dict[str, Any] = {}
        gauges: list[Gauge] = []

        try:
            async with ctx.sessions() as session:
                await session.execute(text("SELECT 1"))
            details["postgresql"] = "pass"
        except Exception as exc:
            statuses.append(Status.FAIL)
            problems.append(f"PostgreSQL: {describe(exc)}")
            details["postgresql"] = describe(exc)

        try:
            queues, queue_gauges, queue_statuses, queue_problems = await asyncio.wait_for(
                _queues(), settings.monitor_check_timeout_seconds / 2
            )
            details["redis"] = "pass"
            details["queues"] = queues
            gauges += queue_gauges
            statuses += queue_statuses
            problems += queue_problems
            if any(q["queued_jobs"] >= settings.monitor_queue_warn_jobs for q in queues.values()):
                statuses.append(Status.WARN)
                problems.append("a job queue is backed up")
        except Exception as exc:
            statuses.append(Status.FAIL)
            problems.append(f"Redis: {describe(exc)}")
            details["redis"] = describe(exc)

        details["apis"] = {}
        async with httpx.AsyncClient(timeout=settings.monitor_check_timeout_seconds / 2) as http:
            urls = readyz_urls(settings)
            answers = await asyncio.gather(*(http.get(url) for url in urls), return_exceptions=True)
        for url, answer in zip(urls, answers, strict=True):
            if isinstance(answer, BaseException):
                verdict = describe(answer)
            elif answer.status_code != 200:
                verdict = f"HTTP {answer.status_code}"
            else:
                verdict = "pass"
            details["apis"][url] = verdict
            gauges.append(Gauge("mailops_api_up", float(verdict == "pass"), {"url": url}))
            if verdict != "pass":
                statuses.append(Status.FAIL)
                problems.append(f"{url}: {verdict}")

        details["disks"] = {}
        lowest = 1.0
        for path in disk_paths(settings):
            try:
                usage = shutil.disk_usage(path)
            except OSError as exc:
                statuses.append(Status.WARN)
                problems.append(f"disk {path}: {describe(exc)}")
                continue
            free_ratio = usage.free / usage.total if usage.total else 0.0
            lowest = min(lowest, free_ratio)
            details["disks"][str(path)] = {
                "free_bytes": usage.free,
                "total_bytes": usage.total,
                "free_ratio": round(free_ratio, 4),
            }
            gauges.append(Gauge("mailops_disk_free_bytes", usage.free, {"path": str(path)}))
            gauges.append(Gauge("mailops_disk_size_bytes", usage.total, {"path": str(path)}))
            if free_ratio <= settings.monitor_disk_crit_free_ratio:
                statuses.append(Status.FAIL)
                problems.append(f"disk {path} has {free_ratio:.0%} free")
            elif free_ratio <= settings.monitor_disk_warn_free_ratio:
                statuses.append(Status.WARN)
                problems.append(f"disk {path} has {free_ratio:.0%} free")

        status = worst(statuses)
        return Outcome(
            status,
            "; ".join(problems) if problems else "database, Redis, queues, APIs and disks healthy",
            value=lowest,
            unit="ratio",
            details=details,
            gauges=gauges,
        )
