"""The backup worker: `mailops worker backup`."""

from arq import cron

from services.backup.service import SCHEDULE_TICK
from services.backup.tasks import (
    final_backup,
    prune_snapshots,
    run_backup,
    run_restore,
    run_verify,
    schedule_backups,
)
from shared.queue import worker_settings

WorkerSettings = worker_settings(
    "backup",
    [run_backup, final_backup, run_restore, run_verify],
    cron_jobs=[
        cron(
            schedule_backups,
            minute=set(range(0, 60, SCHEDULE_TICK.seconds // 60)),
            run_at_startup=True,
        ),
        cron(prune_snapshots, hour={3}, minute={30}),
    ],
    # A large mailbox's first backup or a full restore may take a while.
    job_timeout=6 * 3600,
    max_jobs=4,
)
