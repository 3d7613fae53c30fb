"""`backup_integrity`: what is backed up can be read back.

It fails when the latest verify found damage (naming the mailboxes it affects) or when blobs
are sealed under a key the settings no longer hold (they cannot be read: the key must be
put back in MAILOPS_BACKUP_PREVIOUS_KEYS); it warns when no prune has succeeded for
PRUNE_OVERDUE while snapshots that old exist (retention is not applied, the store grows).
It also reports the store's size and what prune would give back, for capacity planning, and
how many blobs are still under an older key (a key rotation is over at zero). Hourly: the
store's figures read every blob row.
"""

from __future__ import annotations

import time

from sqlalchemy.exc import DBAPIError

from services.monitor import repository
from services.monitor.checks.base import Check, CheckContext, Gauge, Outcome, Status, describe
from shared.settings import Settings

# The nightly prune missed once is no news; missed a whole day more, it is.
PRUNE_OVERDUE = 36 * 3600


class BackupIntegrityCheck(Check):
    name = "backup_integrity"
    description = "Backups read back: no damage found by verify, no blob under a missing key"
    interval_seconds = 3600

    def timeout_seconds(self, settings: Settings) -> float:
        # A sum over every blob row: a large store takes longer than a probe of a server.
        return max(settings.monitor_check_timeout_seconds, 120)

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        keys = [settings.backup_key_id, *settings.backup_previous_keys]
        try:
            async with ctx.sessions() as session:
                store = await repository.backup_store(session, settings.backup_key_id, keys)
                verify = await repository.last_verify(session)
        except DBAPIError as exc:
            return Outcome(Status.UNKNOWN, f"cannot read backup data: {describe(exc.orig or exc)}")
        now = time.time()
        problems: list[str] = []
        status = Status.PASS
        if verify is not None and verify.blobs_damaged:
            status = Status.FAIL
            problems.append(
                f"the last verify found {verify.blobs_damaged} damaged blobs, in the backups of "
                + ", ".join(verify.mailboxes[:10])
            )
        if store.unreadable_blobs:
            status = Status.FAIL
            problems.append(
                f"{store.unreadable_blobs} blobs are sealed under a key that is not configured: "
                "put it back in MAILOPS_BACKUP_PREVIOUS_KEYS"
            )
        since_prune = now - store.last_prune
        aged = store.oldest_snapshot and now - store.oldest_snapshot > PRUNE_OVERDUE
        if aged and since_prune > PRUNE_OVERDUE:
            status = Status.FAIL if status is Status.FAIL else Status.WARN
            problems.append(
                f"no prune has succeeded for {since_prune / 3600:.0f} h"
                if store.last_prune
                else "no prune has ever succeeded"
            )
        message = "; ".join(problems) or "no damage found, every key configured"
        return Outcome(
            status,
            message,
            details={
                "store_bytes": store.stored,
                "store_unused_bytes": store.unused,
                "store_older_key_blobs": store.older_key_blobs,
                "unreadable_key_blobs": store.unreadable_blobs,
                "held_snapshots": store.held_snapshots,
                "last_prune_timestamp": store.last_prune,
                "last_verify_timestamp": verify.finished_at if verify else 0,
                "verify_damaged_blobs": verify.blobs_damaged if verify else 0,
                "verify_damaged_mailboxes": verify.mailboxes if verify else [],
            },
            gauges=[
                Gauge("mailops_backup_store_bytes", store.stored),
                Gauge("mailops_backup_store_unused_bytes", store.unused),
                Gauge("mailops_backup_older_key_blobs", store.older_key_blobs),
                Gauge("mailops_backup_unreadable_key_blobs", store.unreadable_blobs),
                Gauge("mailops_backup_held_snapshots", store.held_snapshots),
                Gauge("mailops_backup_last_prune_timestamp_seconds", store.last_prune),
                Gauge(
                    "mailops_backup_last_verify_timestamp_seconds",
                    verify.finished_at if verify else 0,
                ),
                Gauge("mailops_backup_verify_damaged_blobs", verify.blobs_damaged if verify else 0),
            ],
        )
