"""`delivery`: SMTP in to Postfix, LMTP to Dovecot, seen over IMAP in the probe mailbox.

The message carries a unique token header; the check polls the probe's INBOX for it,
measures the round trip, then deletes it (and any probe message a past run left behind,
e.g. one that arrived after that run gave up). A failure names the leg: `smtp` (Postfix
refused or is down), `imap` (cannot look), or `arrival` (accepted but never delivered).
"""

from __future__ import annotations

import asyncio
import smtplib
import time
import uuid
from email.message import EmailMessage
from typing import Any

from services.monitor.checks.base import (
    Check,
    CheckContext,
    Gauge,
    Outcome,
    Status,
    describe,
    grade,
)
from services.monitor.probe import NoProbeDomain, ensure_probe_mailbox
from shared.imap import ImapError, check, imap_session
from shared.settings import Settings

PROBE_HEADER = "X-Mailops-Probe"
POLL_SECONDS = 0.02


def _submit(settings: Settings, address: str, token: str) -> None:
    message = EmailMessage()
    message["From"] = f"mailops-monitor@{settings.hostname}"
    message["To"] = address
    message["Subject"] = f"mailops delivery probe {token}"
    message[PROBE_HEADER] = token
    message.set_content("Delivery probe from the mailops monitor; it deletes this message.\n")
    with smtplib.SMTP(
        settings.smtp_host,
        settings.smtp_port,
        timeout=settings.monitor_check_timeout_seconds,
        local_hostname="mailops-monitor",
    ) as smtp:
        smtp.send_message(message)


def _uids(response: Any) -> list[str]:
    found: list[str] = []
    for line in response.lines:
        if isinstance(line, bytes) and line and not line.startswith(b"SEARCH completed"):
            found.extend(part.decode() for part in line.split() if part.isdigit())
    return found


class DeliveryCheck(Check):
    name = "delivery"
    description = "End-to-end delivery: SMTP → Postfix → LMTP → Dovecot, seen over IMAP"
    interval_seconds = 300

    def timeout_seconds(self, settings: Settings) -> float:
        # Submission and cleanup get their own time on top of the arrival deadline.
        return settings.monitor_delivery_crit_seconds + 2 * settings.monitor_check_timeout_seconds

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        try:
            address = await ensure_probe_mailbox(settings)
        except NoProbeDomain as exc:
            return Outcome(Status.UNKNOWN, str(exc))
        token = uuid.uuid4().hex
        details: dict[str, Any] = {"address": address, "token": token}
        started = time.perf_counter()
        try:
            await asyncio.to_thread(_submit, settings, address, token)
        except (OSError, smtplib.SMTPException) as exc:
            details["failed_leg"] = "smtp"
            return Outcome(Status.FAIL, f"SMTP submission failed: {describe(exc)}", details=details)
        deadline = started + settings.monitor_delivery_crit_seconds
        try:
            async with imap_session(
                address, settings=settings, command_timeout=settings.monitor_check_timeout_seconds
            ) as client:
                check(await client.select("INBOX"), "SELECT INBOX")
                while True:
                    found = _uids(
                        check(
                            await client.uid_search(f'HEADER {PROBE_HEADER} "{token}"'),
                            "UID SEARCH",
                        )
                    )
                    if found:
                        roundtrip = time.perf_counter() - started
                        break
                    if time.perf_counter() >= deadline:
                        details["failed_leg"] = "arrival"
                        return Outcome(
                            Status.FAIL,
                            "Postfix accepted the probe but it did not reach the mailbox within "
                            f"{settings.monitor_delivery_crit_seconds:g} s",
                            details=details,
                        )
                    await asyncio.sleep(POLL_SECONDS)
                    check(await client.noop(), "NOOP")
                # Remove this probe and any a past run left behind.
                leftovers = _uids(
                    check(await client.uid_search(f'HEADER {PROBE_HEADER} ""'), "UID SEARCH")
                )
                uid_set = ",".join(sorted(set(found + leftovers), key=int))
                check(await client.uid("store", uid_set, "+FLAGS.SILENT (\\Deleted)"), "STORE")
                check(await client.expunge(), "EXPUNGE")
        except (ImapError, OSError, TimeoutError) as exc:
            details["failed_leg"] = "imap"
            return Outcome(Status.FAIL, f"IMAP leg failed: {describe(exc)}", details=details)
        status = grade(
            roundtrip,
            settings.monitor_delivery_warn_seconds,
            settings.monitor_delivery_crit_seconds,
        )
        details["roundtrip_seconds"] = roundtrip
        return Outcome(
            status,
            f"delivered and seen over IMAP in {roundtrip * 1000:.0f} ms",
            value=roundtrip,
            unit="s",
            details=details,
            gauges=[Gauge("mailops_delivery_roundtrip_seconds", roundtrip)],
        )
