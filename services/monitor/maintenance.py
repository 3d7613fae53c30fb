"""Maintenance jobs: dry-run by default, audited, following each department's settings.

- `expunge-trash-junk`: mail in Trash and Junk older than the department's retention.
  It is expunged only in departments that turned `expunge_enabled` on (and only when the
  run is not a dry run); elsewhere it is counted.
- `unread-followup`: mailboxes with unread INBOX mail older than the department's
  follow-up age (count and oldest), a report for people to act on.
- `deferred-cleanup`: mail deferred in Postfix's queue longer than N days; removed only
  when the run is not a dry run.

Age is a message's arrival (internal) date, which clients show and which survives moves
between folders; one doveadm call per folder and age covers every user.
"""

from __future__ import annotations

import enum
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.monitor import mailqueue, repository
from services.monitor.doveadm import DoveadmError, doveadm
from shared import audit
from shared.auth import Principal
from shared.errors import Unavailable
from shared.models.monitor import MaintenanceRun, MaintenanceSettings
from shared.settings import Settings

DOVEADM_SECONDS = 600.0
LISTED = 500
DEFAULTS = MaintenanceSettings(
    trash_retention_days=30, junk_retention_days=30, unread_followup_days=14, expunge_enabled=False
)


class MaintenanceJob(enum.StrEnum):
    EXPUNGE_TRASH_JUNK = "expunge-trash-junk"
    UNREAD_FOLLOWUP = "unread-followup"
    DEFERRED_CLEANUP = "deferred-cleanup"


def _date(days: int) -> str:
    # doveadm search dates: an absolute day, so the cut is the same for every user.
    return (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%d")


async def _policies(session: AsyncSession) -> dict[uuid.UUID, tuple[str, MaintenanceSettings]]:
    return {
        department.id: (department.name, row or DEFAULTS)
        for department, row in await repository.departments_with_settings(session)
    }


async def _counts(settings: Settings, folder: str, days: int) -> Counter[str]:
    out = await doveadm(
        settings,
        "search",
        "-A",
        "mailbox",
        folder,
        "before",
        _date(days),
        time_limit=DOVEADM_SECONDS,
    )
    return Counter(line.split("\t")[0].lower() for line in out.splitlines()[1:] if line)


async def expunge_trash_junk(
    session: AsyncSession, *, settings: Settings, dry_run: bool
) -> tuple[int, dict[str, Any]]:
    policies = await _policies(session)
    owners = await repository.mailbox_departments(session)
    found: list[dict[str, Any]] = []
    expunged = 0
    for folder, attribute in (("Trash", "trash_retention_days"), ("Junk", "junk_retention_days")):
        for days in sorted({getattr(p, attribute) for _, p in policies.values()}):
            counts = await _counts(settings, folder, days)
            act_on: list[str] = []
            for address, count in counts.items():
                department = owners.get(address)
                if department is None or department not in policies:
                    continue
                name, policy = policies[department]
                if getattr(policy, attribute) != days:
                    continue
                act = not dry_run and policy.expunge_enabled
                found.append(
                    {
                        "address": address,
                        "department": name,
                        "folder": folder,
                        "messages": count,
                        "older_than_days": days,
                        "action": "expunged" if act else "would expunge",
                    }
                )
                if act:
                    act_on.append(address)
                    expunged += count
            if act_on:
                with tempfile.NamedTemporaryFile("w", suffix=".users") as users:
                    users.write("\n".join(act_on) + "\n")
                    users.flush()
                    await doveadm(
                        settings,
                        "expunge",
                        "-F",
                        users.name,
                        "mailbox",
                        folder,
                        "before",
                        _date(days),
                        time_limit=DOVEADM_SECONDS,
                    )
    total = sum(f["messages"] for f in found)
    return expunged if not dry_run else total, {
        "messages_found": total,
        "messages_expunged": expunged,
        "mailboxes": found[:LISTED],
    }


async def unread_followup(
    session: AsyncSession, *, settings: Settings
) -> tuple[int, dict[str, Any]]:
    policies = await _policies(session)
    owners = await repository.mailbox_departments(session)
    shortest = min((p.unread_followup_days for _, p in policies.values()), default=14)
    out = await doveadm(
        settings,
        "fetch",
        "-A",
        "date.received",
        "mailbox",
        "INBOX",
        "unseen",
        "before",
        _date(shortest),
        time_limit=DOVEADM_SECONDS,
    )
    per_user: dict[str, list[datetime]] = {}
    for line in out.splitlines()[1:]:
        user, _, received = line.partition("\t")
        try:
            when = datetime.fromisoformat(received.strip()).replace(tzinfo=UTC)
        except ValueError:
            continue
        per_user.setdefault(user.lower(), []).append(when)
    mailboxes: list[dict[str, Any]] = []
    for address, dates in per_user.items():
        department = owners.get(address)
        if department is None or department not in policies:
            continue
        name, policy = policies[department]
        cut = datetime.now(UTC) - timedelta(days=policy.unread_followup_days)
        old = [d for d in dates if d < cut]
        if old:
            mailboxes.append(
                {
                    "address": address,
                    "department": name,
                    "unread_older": len(old),
                    "oldest": min(old).isoformat(),
                    "older_than_days": policy.unread_followup_days,
                }
            )
    mailboxes.sort(key=lambda m: m["oldest"])
    return len(mailboxes), {"mailboxes": mailboxes[:LISTED], "mailbox_count": len(mailboxes)}


async def deferred_cleanup(
    *, settings: Settings, older_than_days: int, dry_run: bool
) -> tuple[int, dict[str, Any]]:
    messages = await mailqueue.read_queue(settings)
    cut = time.time() - older_than_days * 86400
    old = [m for m in messages if m.queue_name == "deferred" and m.arrival_time < cut]
    if not dry_run:
        await mailqueue.remove(settings, [m.queue_id for m in old])
    return len(old), {
        "older_than_days": older_than_days,
        "action": "would remove" if dry_run else "removed",
        "messages": [
            {
                "queue_id": m.queue_id,
                "sender": m.sender,
                "recipients": list(m.recipients),
                "age_days": round((time.time() - m.arrival_time) / 86400, 2),
                "reason": m.reason,
            }
            for m in old[:LISTED]
        ],
    }


async def run(
    session: AsyncSession,
    *,
    settings: Settings,
    job: MaintenanceJob,
    dry_run: bool,
    actor: Principal | None,
    older_than_days: int = 7,
) -> MaintenanceRun:
    """Run one job, store what it found or did, and audit it in the same transaction."""
    started = datetime.now(UTC)
    try:
        if job is MaintenanceJob.EXPUNGE_TRASH_JUNK:
            affected, summary = await expunge_trash_junk(
                session, settings=settings, dry_run=dry_run
            )
        elif job is MaintenanceJob.UNREAD_FOLLOWUP:
            dry_run = True  # a report: it never changes anything
            affected, summary = await unread_followup(session, settings=settings)
        else:
            affected, summary = await deferred_cleanup(
                settings=settings, older_than_days=older_than_days, dry_run=dry_run
            )
    except (DoveadmError, mailqueue.QueueUnavailable, TimeoutError) as exc:
        # The mail server is down or unreachable: the caller's to retry, not our bug (a 503).
        raise Unavailable(
            f"{job.value} could not reach the mail server: {exc or 'its tool timed out'}; "
            "start it (`mailops stack up`) and run the job again",
            code="mail_server_unavailable",
        ) from exc
    record = MaintenanceRun(
        id=uuid.uuid4(),
        job=job.value,
        dry_run=dry_run,
        actor_name=actor.name if actor else "monitor",
        started_at=started,
        finished_at=datetime.now(UTC),
        affected=affected,
        summary=summary,
    )
    session.add(record)
    audit.record(
        session,
        actor=actor,
        action=f"monitor.maintenance.{job.value}",
        target_type="maintenance_run",
        target_id=record.id,
        after={"dry_run": dry_run, "affected": affected},
    )
    await session.flush()
    return record
