"""Check metrics for /metrics, from the latest stored results (not from in-process state).

A scrape reads two small queries' worth of rows (each check's last result with its gauges
and run counters, and the open incidents) at most every `monitor_metrics_cache_seconds`;
the collector serves that snapshot.
Base units, no per-mailbox labels; counters end in `_total`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.monitor import repository
from shared.db import get_sessionmaker

log = logging.getLogger("mailops.monitor.metrics")

HELP = {
    "mailops_imap_login_seconds": "Time to connect, log in to the probe mailbox and select INBOX",
    "mailops_delivery_roundtrip_seconds": "SMTP submission to the message seen over IMAP",
    "mailops_queue_messages": "Messages in Postfix's queues, by queue",
    "mailops_queue_oldest_message_age_seconds": "Age of the oldest message in Postfix's queue",
    "mailops_tls_cert_expiry_timestamp_seconds": "When each endpoint's certificate expires",
    "mailops_mailboxes": "Mailboxes the quota check watched",
    "mailops_mailboxes_over_quota_ratio": "Share of mailboxes at or above the quota level",
    "mailops_mailbox_quota_usage_max_ratio": "The fullest mailbox's usage over its quota",
    "mailops_mail_storage_used_bytes": "Mail stored across all watched mailboxes",
    "mailops_backup_oldest_age_seconds": "Age of the oldest last backup among mailboxes",
    "mailops_backup_oldest_last_success_timestamp_seconds": (
        "When the mailbox backed up longest ago was last backed up (or created)"
    ),
    "mailops_backup_stale_mailboxes": "Mailboxes without a snapshot within their policy",
    "mailops_backup_failed_runs": "Failed backup runs in the recent window",
    "mailops_backup_store_bytes": "Size of the backup store's pack files",
    "mailops_backup_store_unused_bytes": "Backup store bytes no blob needs (prune frees them)",
    "mailops_backup_older_key_blobs": "Backup blobs still sealed under an older key",
    "mailops_backup_held_snapshots": "Backup snapshots a hold keeps whatever retention says",
    "mailops_backup_last_prune_timestamp_seconds": "When a backup prune last succeeded (0: never)",
    "mailops_backup_unreadable_key_blobs": "Backup blobs under a key no longer configured",
    "mailops_backup_last_verify_timestamp_seconds": "When the last verify ended (0: never)",
    "mailops_backup_verify_damaged_blobs": "Damaged blobs the last verify found",
    "mailops_jobs_queued": "Jobs waiting in each service's queue",
    "mailops_jobs_failed_recent": "Jobs that failed in the last hour, per queue",
    "mailops_worker_up": "1 if the service's worker stamped a heartbeat recently",
    "mailops_api_up": "1 if the API's /readyz passed",
    "mailops_disk_free_bytes": "Free space on the mail and backup stores",
    "mailops_disk_size_bytes": "Size of the mail and backup stores",
    "mailops_dns_domains_with_problems": "Domains whose MX/SPF/DMARC/DKIM posture is incomplete",
}
STATUSES = ("pass", "warn", "fail", "unknown")


@dataclass
class Snapshot:
    taken_at: float = 0.0
    runs: list[repository.LatestRun] = field(default_factory=list)
    open_incidents: int = 0


class CheckMetrics(Collector):
    """A collector over the latest-results snapshot; `refresh` is awaited before a scrape."""

    def __init__(self, cache_seconds: float) -> None:
        self.cache_seconds = cache_seconds
        self.snapshot = Snapshot()

    async def refresh(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self.snapshot.taken_at < self.cache_seconds:
            return
        try:
            async with get_sessionmaker()() as session:
                runs = await repository.latest_runs(session)
                open_incidents = await repository.open_incident_count(session)
        except Exception:
            # A scrape must still answer (with the last snapshot) when the database does not.
            log.warning("could not refresh check metrics", exc_info=True)
            return
        self.snapshot = Snapshot(
            taken_at=time.monotonic(),
            runs=runs,
            open_incidents=open_incidents,
        )

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        up = GaugeMetricFamily(
            "mailops_check_up",
            "1 if the check's last run passed or warned, else 0",
            labels=["check"],
        )
        status = GaugeMetricFamily(
            "mailops_check_status",
            "The check's last verdict (1 for the current one)",
            labels=["check", "status"],
        )
        duration = GaugeMetricFamily(
            "mailops_check_duration_seconds", "How long the check's last run took", labels=["check"]
        )
        last_run = GaugeMetricFamily(
            "mailops_check_last_run_timestamp_seconds", "When the check last ran", labels=["check"]
        )
        gauges: dict[str, GaugeMetricFamily] = {}
        runs = CounterMetricFamily("mailops_check_runs", "Check runs recorded", labels=["check"])
        failures = CounterMetricFamily(
            "mailops_check_failures", "Check runs that failed", labels=["check"]
        )
        for run in snapshot.runs:
            check, verdict = run.check, run.status
            up.add_metric([check], 1.0 if verdict in ("pass", "warn") else 0.0)
            for name in STATUSES:
                status.add_metric([check, name], 1.0 if verdict == name else 0.0)
            duration.add_metric([check], run.duration_seconds)
            last_run.add_metric([check], run.started_at.timestamp())
            runs.add_metric([check], run.runs_total)
            failures.add_metric([check], run.failures_total)
            for sample in run.gauges:
                name, labels = sample["name"], sample.get("labels") or {}
                family = gauges.get(name)
                if family is None:
                    family = gauges[name] = GaugeMetricFamily(
                        name, HELP.get(name, name), labels=sorted(labels)
                    )
                family.add_metric([labels[k] for k in sorted(labels)], float(sample["value"]))
        incidents = GaugeMetricFamily("mailops_incidents_open", "Unresolved incidents")
        incidents.add_metric([], snapshot.open_incidents)
        yield from (up, status, duration, last_run, runs, failures, incidents)
        yield from gauges.values()
