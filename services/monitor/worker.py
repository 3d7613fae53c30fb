"""The monitor worker: `mailops worker monitor`.

Checks run on their own intervals (a once-a-minute scheduler enqueues the due ones); the
maintenance jobs run at 05:30, the daily inspection at 06:00 and the weekly one on Mondays
at 06:30 (UTC).
"""

from arq import cron

from services.monitor.tasks import (
    daily_inspection,
    daily_maintenance,
    deliver_notification,
    run_check,
    run_inspection,
    schedule_checks,
    weekly_inspection,
)
from shared.queue import worker_settings

WorkerSettings = worker_settings(
    "monitor",
    [run_check, deliver_notification, run_inspection],
    cron_jobs=[
        cron(schedule_checks, name="monitor-schedule-checks", second=5, run_at_startup=True),
        cron(daily_maintenance, name="monitor-daily-maintenance", hour=5, minute=30),
        cron(daily_inspection, name="monitor-daily-inspection", hour=6, minute=0),
        cron(weekly_inspection, name="monitor-weekly-inspection", weekday=0, hour=6, minute=30),
    ],
    # A check can take its timeout; inspections run every check plus the reports.
    job_timeout=600,
    max_tries=8,
)
