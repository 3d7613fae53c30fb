"""The monitor's checks, one module each, all behind the small `Check` base."""

from __future__ import annotations

from services.monitor.checks.backup_freshness import BackupFreshnessCheck
from services.monitor.checks.backup_integrity import BackupIntegrityCheck
from services.monitor.checks.base import Check, CheckContext, Gauge, Measurement, Outcome
from services.monitor.checks.delivery import DeliveryCheck
from services.monitor.checks.dns import DnsCheck
from services.monitor.checks.imap import ImapCheck
from services.monitor.checks.lmtp import LmtpCheck
from services.monitor.checks.platform import PlatformCheck
from services.monitor.checks.queue import QueueCheck
from services.monitor.checks.quota import QuotaCheck
from services.monitor.checks.sieve import SieveCheck
from services.monitor.checks.tls import TlsCheck
from shared.settings import Settings

CHECKS: dict[str, Check] = {
    check.name: check
    for check in (
        ImapCheck(),
        DeliveryCheck(),
        LmtpCheck(),
        SieveCheck(),
        QueueCheck(),
        TlsCheck(),
        QuotaCheck(),
        BackupFreshnessCheck(),
        BackupIntegrityCheck(),
        PlatformCheck(),
        DnsCheck(),
    )
}


def check_intervals(settings: Settings) -> dict[str, int]:
    """Each check's run interval in seconds: its default or MAILOPS_MONITOR_CHECK_INTERVALS."""
    overrides = settings.monitor_check_intervals
    unknown = sorted(set(overrides) - set(CHECKS))
    if unknown:
        raise ValueError(
            f"MAILOPS_MONITOR_CHECK_INTERVALS names unknown checks {', '.join(unknown)}; "
            f"the checks are {', '.join(CHECKS)}"
        )
    return {name: overrides.get(name, check.interval_seconds) for name, check in CHECKS.items()}


__all__ = [
    "CHECKS",
    "Check",
    "CheckContext",
    "Gauge",
    "Measurement",
    "Outcome",
    "check_intervals",
]
