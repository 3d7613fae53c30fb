"""The backup worker: `mailops worker backup`."""

from shared.queue import worker_settings

WorkerSettings = worker_settings("backup", [])
