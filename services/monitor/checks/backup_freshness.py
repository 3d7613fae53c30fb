"""`backup_freshness`: every mailbox has a committed snapshot within its policy interval.

The interval is the department's `backup_policies.interval_seconds` (a day without a
policy) plus a grace; a mailbox never backed up counts from its creation. Failed backup
runs in the recent window make it warn. It also reports the backup store's size, and how much
of it prune would give back, for capacity planning; and how many blobs are still sealed under
an older key, which must stay configured until prune has re-sealed them (a key rotation is
over at zero).
"""

from __future__ import annotations

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
        try:
            async with ctx.sessions() as session:
                ages = await repository.backup_ages(session)
                failed = await repository.failed_backup_runs(
                    session, settings.monitor_backup_failed_runs_window_seconds
                )
                store = await repository.backup_store(session, settings.backup_key_id)
        except DBAPIError as exc:
            # The backup service's tables are missing or changed: this check cannot tell.
            return Outcome(Status.UNKNOWN, f"cannot read backup data: {describe(exc.orig or exc)}")
        grace = settings.monitor_backup_grace_seconds
        stale: list[dict[str, Any]] = []
        oldest = 0.0
        for row in ages:
            age = float(row["age"])
            oldest = max(oldest, age)
            if age > row["interval_seconds"] + grace:
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
            message += f"; {len(failed)} failed backup run(s) recently"
        return Outcome(
            status,
            message,
            value=oldest,
            unit="s",
            details={
                "mailboxes": len(ages),
                "stale_count": len(stale),
                "stale": stale[:LISTED],
                "failed_runs": failed,
                "store_bytes": store.stored,
                "store_unused_bytes": store.unused,
                "store_older_key_blobs": store.older_key_blobs,
                "held_snapshots": store.held_snapshots,
                "last_prune_timestamp": store.last_prune,
            },
            gauges=[
                Gauge("mailops_backup_oldest_age_seconds", oldest),
                Gauge("mailops_backup_stale_mailboxes", len(stale)),
                Gauge("mailops_backup_failed_runs", len(failed)),
                Gauge("mailops_backup_store_bytes", store.stored),
                Gauge("mailops_backup_store_unused_bytes", store.unused),
                Gauge("mailops_backup_older_key_blobs", store.older_key_blobs),
                Gauge("mailops_backup_held_snapshots", store.held_snapshots),
                Gauge("mailops_backup_last_prune_timestamp_seconds", store.last_prune),
            ],
        )
