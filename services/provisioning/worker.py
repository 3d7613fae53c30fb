"""The provisioning worker: `mailops worker provisioning`."""

from services.provisioning.tasks import prepare_mailbox
from shared.queue import worker_settings

WorkerSettings = worker_settings("provisioning", [prepare_mailbox])
