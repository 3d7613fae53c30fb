"""The monitor's checks, one module each, all behind the small `Check` base."""

from __future__ import annotations

from services.monitor.checks.backup_freshness import BackupFreshnessCheck
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
        PlatformCheck(),
        DnsCheck(),
    )
}

__all__ = ["CHECKS", "Check", "CheckContext", "Gauge", "Measurement", "Outcome"]
