"""`imap`: connect, greeting, log in to the probe mailbox (as master), SELECT INBOX; latency."""

from __future__ import annotations

import time

from services.monitor.checks.base import Check, CheckContext, Gauge, Outcome, Status, describe
from services.monitor.probe import NoProbeDomain, ensure_probe_mailbox
from shared.imap import ImapError, check, imap_session


class ImapCheck(Check):
    name = "imap"
    description = "IMAP answers: greeting, login to the probe mailbox, SELECT INBOX"
    interval_seconds = 60

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        try:
            address = await ensure_probe_mailbox(settings)
        except NoProbeDomain as exc:
            return Outcome(Status.UNKNOWN, str(exc))
        started = time.perf_counter()
        try:
            async with imap_session(
                address, settings=settings, command_timeout=settings.monitor_check_timeout_seconds
            ) as client:
                check(await client.select("INBOX"), "SELECT INBOX")
        except ImapError as exc:
            return Outcome(Status.FAIL, str(exc), details={"address": address})
        except (OSError, TimeoutError) as exc:
            return Outcome(Status.FAIL, f"IMAP session broke: {describe(exc)}")
        latency = time.perf_counter() - started
        status = Status.WARN if latency >= settings.monitor_imap_warn_seconds else Status.PASS
        return Outcome(
            status,
            f"logged in and selected INBOX in {latency * 1000:.0f} ms",
            value=latency,
            unit="s",
            details={"address": address, "server": f"{settings.mail_host}:{settings.imap_port}"},
            gauges=[Gauge("mailops_imap_login_seconds", latency)],
        )
