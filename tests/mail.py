"""Small real-protocol helpers for tests: SMTP send, IMAP login and polling."""

from __future__ import annotations

import asyncio
import smtplib
import time
from email.message import EmailMessage

from shared.imap import ImapError, check, imap_session, quoted
from shared.settings import Settings


def message(to: str, subject: str, body: str = "hello\n", sender: str = "sender@x.test") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(body)
    return bytes(msg)


def send(settings: Settings, to: str, subject: str, body: str = "hello\n") -> None:
    """Submit one message to Postfix over SMTP; raises SMTPRecipientsRefused if refused."""
    with smtplib.SMTP(
        settings.mail_host, settings.smtp_port, timeout=10, local_hostname="localhost"
    ) as smtp:
        smtp.sendmail("sender@x.test", [to], message(to, subject, body))


async def can_log_in(address: str, password: str) -> bool:
    try:
        async with imap_session(address, password):
            return True
    except ImapError:
        return False


async def wait_for_subject(
    address: str, subject: str, folder: str = "INBOX", seconds: float = 10.0
) -> bool:
    """Poll the folder (as the master user) until a message with `subject` is there."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        async with imap_session(address) as client:
            check(await client.select(quoted(folder)), "SELECT")
            found = check(await client.search(f"SUBJECT {quoted(subject)}"), "SEARCH")
            if found.lines[0].strip():
                return True
        await asyncio.sleep(0.1)
    return False
