"""The provisioning worker: `mailops worker provisioning`."""

from arq import cron

from services.provisioning.tasks import (
    carry_out_request,
    deploy_rules,
    prepare_mailbox,
    purge_mailbox,
    sweep,
)
from shared.queue import worker_settings

WorkerSettings = worker_settings(
    "provisioning",
    [prepare_mailbox, deploy_rules, purge_mailbox, carry_out_request],
    cron_jobs=[cron(sweep, minute=set(range(0, 60, 5)), run_at_startup=True)],
    max_tries=8,
    # A new hire waits for `active`: look for jobs every 50 ms (arq's default is 0.5 s), and
    # prepare many at once, since each mostly waits on Dovecot.
    poll_delay=0.05,
    max_jobs=32,
)
