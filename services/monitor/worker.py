"""The monitor worker: `mailops worker monitor`."""

from shared.queue import worker_settings

WorkerSettings = worker_settings("monitor", [])
