"""Provisioning jobs: make mailboxes ready on the mail server."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq import Retry
from sqlalchemy import select

from shared.db import transaction
from shared.imap import ImapError, check, imap_session
from shared.models import Mailbox, MailboxStatus

log = logging.getLogger("mailops.provisioning.tasks")

DEFAULT_FOLDERS = ("Sent", "Drafts", "Trash", "Junk", "Archive")


async def prepare_mailbox(ctx: dict[str, Any], mailbox_id: str) -> str:
    """Open the mailbox in Dovecot (creating its default folders), then mark it active.

    Idempotent: an already active mailbox is left as it is.
    """
    async for session in transaction():
        mailbox = await session.scalar(
            select(Mailbox).where(Mailbox.id == uuid.UUID(mailbox_id)).with_for_update()
        )
        if mailbox is None or mailbox.status != MailboxStatus.PROVISIONING:
            return "nothing to do"
        try:
            async with imap_session(mailbox.address) as client:
                listing = check(await client.list('""', "*"), "LIST")
        except ImapError as exc:
            tries = ctx.get("job_try", 1)
            mailbox.status_reason = f"mail server not ready (try {tries}): {exc}"
            if tries < 5:
                raise Retry(defer=tries * 5) from exc
            mailbox.status = MailboxStatus.FAILED
            return "failed"
        names = b"\n".join(line for line in listing.lines if isinstance(line, bytes))
        missing = [f for f in DEFAULT_FOLDERS if f.encode() not in names]
        if missing:
            mailbox.status = MailboxStatus.FAILED
            mailbox.status_reason = f"default folders missing after login: {', '.join(missing)}"
            return "failed"
        mailbox.status = MailboxStatus.ACTIVE
        mailbox.status_reason = None
    return "active"
