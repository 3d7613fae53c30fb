"""Backup jobs: backup runs, the provisioning service's final backup, restores, verify,
prune, and the schedule that enqueues due backups.

Jobs take ids, reload what they need, and are idempotent: a run interrupted by a crash is
carried out again from the start, and its unfinished snapshot is discarded first.
"""

from __future__ import annotations

import uuid
from typing import Any

from services.backup import service


async def run_backup(ctx: dict[str, Any], run_id: str) -> str:
    """Carry out a requested, scheduled or final backup run."""
    return await service.execute_backup_run(uuid.UUID(run_id))


async def final_backup(ctx: dict[str, Any], mailbox_id: str) -> str:
    """The last backup of a mailbox that is being deleted (enqueued by provisioning)."""
    run_id = await service.final_backup_run(uuid.UUID(mailbox_id))
    if run_id is None:
        return "nothing to do"
    return await service.execute_backup_run(run_id)


async def run_restore(ctx: dict[str, Any], restore_id: str) -> str:
    return await service.execute_restore(uuid.UUID(restore_id))


async def run_verify(ctx: dict[str, Any], verify_id: str) -> str:
    return await service.execute_verify(uuid.UUID(verify_id))


async def schedule_backups(ctx: dict[str, Any]) -> int:
    """Cron: end the jobs the worker left open, then enqueue a backup for every mailbox
    whose policy interval has passed (an abandoned scheduled run no longer holds its
    department back)."""
    await service.fail_abandoned_jobs()
    return await service.schedule_due_backups()


async def prune_snapshots(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron: apply retention, then drop unreferenced catalog rows, blobs and packs."""
    result = await service.prune()
    return dict(result.__dict__)
