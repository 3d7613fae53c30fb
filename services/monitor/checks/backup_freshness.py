"""`backup_freshness`: every mailbox has a committed snapshot within its policy interval.

The interval is the department's `backup_policies.interval_seconds` (the settings' default
without a policy) plus a grace of at most a quarter of it: an hourly department's mailbox is
stale after 75 minutes, not two hours. A mailbox never backed up counts from its creation.
Failed backup runs in the recent window make it warn. The store itself is watched by
`backup_integrity`.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.exc import DBAPIError

from services.monitor import repository
from services.monitor.checks.base import Check, CheckContext, Gauge, Outcome, Status, describe

LISTED = 200


class BackupFreshnessCheck(Check):
    name = "backup_freshness"
    description = "Every mailbox has a successful snapshot within its policy interval"
    interval_seconds = 900

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        window = settings.monitor_backup_failed_runs_window_seconds
        try:
            async with ctx.sessions() as session:
                ages = await repository.backup_ages(session, settings.backup_interval_seconds)
                failed_count, failed = await repository.failed_backup_runs(session, window)
        except DBAPIError as exc:
            # The backup service's tables are missing or changed: this check cannot tell.
            return Outcome(Status.UNKNOWN, f"cannot read backup data: {describe(exc.orig or exc)}")
        stale: list[dict[str, Any]] = []
        oldest = 0.0
        for row in ages:
            age = float(row["age"])
            oldest = max(oldest, age)
            interval = int(row["interval_seconds"])
            if age > interval + min(settings.monitor_backup_grace_seconds, interval // 4):
                stale.append(
                    {
                        "address": row["address"],
                        "department": row["department"],
                        "last_snapshot_at": (
                            row["completed_at"].isoformat() if row["completed_at"] else None
                        ),
                        "age_seconds": round(age),
                        "interval_seconds": row["interval_seconds"],
                    }
                )
        stale.sort(key=lambda m: -int(m["age_seconds"]))
        status = Status.FAIL if stale else Status.WARN if failed else Status.PASS
        message = f"{len(stale)} of {len(ages)} mailboxes without a fresh backup"
        if failed:
            message += f"; {failed_count} failed backup run(s) recently"
        return Outcome(
            status,
            message,
            value=oldest,
            unit="s",
            details={
                "mailboxes": len(ages),
                "stale_count": len(stale),
                "stale": stale[:LISTED],
                "failed_run_count": failed_count,
                "failed_runs": failed,
            },
            gauges=[
                Gauge("mailops_backup_oldest_age_seconds", oldest),
                # The same as a time: `time() - it` stays right when this check stops running.
                Gauge("mailops_backup_oldest_last_success_timestamp_seconds", time.time() - oldest),
                Gauge("mailops_backup_stale_mailboxes", len(stale)),
                Gauge("mailops_backup_failed_runs", failed_count),
            ],
        )
