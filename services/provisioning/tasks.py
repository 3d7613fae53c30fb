"""Provisioning jobs: prepare mailboxes in Dovecot, deploy rules, purge, carry out requests.

Every job reloads what it needs by id and is idempotent; a mail server that is down makes
the job retry with backoff, and the last failure is written where users look (the
mailbox's or rule's status and reason).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from arq import Retry

from services.provisioning import repository, service
from services.provisioning.rules import SCRIPT_NAME
from shared.auth import Principal
from shared.db import unit_of_work
from shared.errors import DomainError
from shared.imap import ImapError, check, imap_session
from shared.managesieve import ManageSieve, SieveError, SieveUnavailable
from shared.models import ApiKey, MailboxStatus
from shared.models.provisioning import RequestStatus, RuleStatus
from shared.queue import enqueue, final_backup_job_id

log = logging.getLogger("mailops.provisioning.tasks")

DEFAULT_FOLDERS = ("Sent", "Drafts", "Trash", "Junk", "Archive")
MAX_TRIES = 8


def _retry_or_give_up(ctx: dict[str, Any], exc: Exception) -> None:
    """Retry with growing delays (5 s, 10 s, ... 60 s) until the last try."""
    tries = int(ctx.get("job_try", 1))
    if tries < MAX_TRIES:
        raise Retry(defer=min(60, 5 * tries)) from exc


def _folders_ready(listing: list[Any]) -> tuple[MailboxStatus, str | None]:
    """`active` if the LIST answer holds every default folder, else `failed` naming them."""
    names = b"\n".join(line for line in listing if isinstance(line, bytes))
    missing = [f for f in DEFAULT_FOLDERS if f.encode() not in names]
    if missing:
        return MailboxStatus.FAILED, f"default folders missing after login: {', '.join(missing)}"
    return MailboxStatus.ACTIVE, None


async def prepare_mailbox(ctx: dict[str, Any], mailbox_id: str) -> str:
    """Open the mailbox in Dovecot (creating its default folders), then mark it active.

    No database connection is held while Dovecot works, and the status changes only if the
    mailbox is still `provisioning` afterwards (a suspend or delete meanwhile wins).
    """
    mailbox_uuid = uuid.UUID(mailbox_id)
    reason: str | None
    try:
        # By id: works for internationalised addresses too (see sql.conf.ext).
        async with imap_session(mailbox_id) as client:
            listing = check(await client.list('""', "*"), "LIST")
    except ImapError as exc:
        tries = ctx.get("job_try", 1)
        async with unit_of_work() as session:
            still_provisioning = await repository.settle_provisioning(
                session,
                mailbox_uuid,
                MailboxStatus.PROVISIONING,
                f"mail server not ready (try {tries}): {exc}",
            )
        if not still_provisioning:  # gone, or suspended or deleted meanwhile
            return "nothing to do"
        _retry_or_give_up(ctx, exc)
        status, reason = MailboxStatus.FAILED, f"mail server not ready after {tries} tries: {exc}"
    else:
        status, reason = _folders_ready(listing.lines)
    async with unit_of_work() as session:
        if not await repository.settle_provisioning(session, mailbox_uuid, status, reason):
            return "nothing to do"
    return str(status.value)


async def deploy_rules(ctx: dict[str, Any], mailbox_id: str, version: int) -> str:
    """Upload and activate the mailbox's Sieve script over ManageSieve (newest version only)."""
    async with unit_of_work() as session:
        rule = await repository.rule(session, uuid.UUID(mailbox_id), lock=True)
        mailbox = await repository.mailbox(session, uuid.UUID(mailbox_id))
        if rule is None or mailbox is None or rule.version != version:
            return "superseded"
        try:
            async with ManageSieve(mailbox.address) as sieve:
                await sieve.put(SCRIPT_NAME, rule.script)
                await sieve.activate(SCRIPT_NAME)
        except SieveUnavailable as exc:
            rule.status_reason = f"mail server unreachable (try {ctx.get('job_try', 1)}): {exc}"
            await session.commit()
            _retry_or_give_up(ctx, exc)
            rule.status = RuleStatus.FAILED.value
            return "failed"
        except SieveError as exc:
            rule.status, rule.status_reason = RuleStatus.FAILED.value, exc.message
            return "failed"
        rule.status, rule.status_reason = RuleStatus.DEPLOYED.value, None
        rule.deployed_at = datetime.now(UTC)
    return "deployed"


async def purge_mailbox(ctx: dict[str, Any], mailbox_id: str) -> str:
    """After retention, and once its final backup has succeeded: delete every folder and
    message over IMAP, then free the address. Until that backup succeeds the mailbox stays
    `deleting`, its reason says why, and its final backup is asked for again (the sweep
    asks for the purge every five minutes; arq takes the same job id again once the last
    one's result has expired, an hour on)."""
    async with unit_of_work() as session:
        mailbox = await repository.mailbox(session, uuid.UUID(mailbox_id), lock=True)
        if mailbox is None or mailbox.status != MailboxStatus.DELETING:
            return "nothing to do"
        if mailbox.purge_after and mailbox.purge_after > datetime.now(UTC):
            return "not due"
        if not await repository.final_backup_succeeded(session, mailbox.id):
            mailbox.status_reason = (
                "the purge waits for the mailbox's final backup to succeed: see its backup "
                "runs in the backup service"
            )
            # Its job may have failed or never reached the queue; while one is queued or
            # its result kept (an hour), this is the same job and adds nothing.
            await enqueue(
                "backup",
                "final_backup",
                job_id=final_backup_job_id(mailbox.id),
                mailbox_id=str(mailbox.id),
            )
            return "waiting for the final backup"
        if not await repository.lock_out_backups(session, mailbox.id):
            return "not due: a backup of it is running"
        try:
            # By id, as every engine login: an internationalised address cannot log in.
            await _empty_mailbox(str(mailbox.id))
        except ImapError as exc:
            mailbox.status_reason = f"purge failed (try {ctx.get('job_try', 1)}): {exc}"
            await session.commit()
            _retry_or_give_up(ctx, exc)
            return "failed"
        mailbox.status, mailbox.status_reason = MailboxStatus.PURGED.value, None
        mailbox.forward_targets = []
    return "purged"


async def _empty_mailbox(login: str) -> None:
    async with imap_session(login) as client:
        listing = check(await client.list('""', "*"), "LIST")
        for line in listing.lines:
            if not isinstance(line, bytes) or not line.startswith(b"("):
                continue
            name = line.rsplit(b' "/" ', 1)[-1].decode()
            if name.strip('"') == "INBOX":
                continue
            check(await client.delete(name), f"DELETE {name}")
        selected = check(await client.select("INBOX"), "SELECT INBOX")
        if any(
            line.endswith(b" EXISTS") and not line.startswith(b"0 ")
            for line in selected.lines
            if isinstance(line, bytes)
        ):
            check(await client.store("1:*", "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
            check(await client.expunge(), "EXPUNGE")


async def carry_out_request(ctx: dict[str, Any], request_id: str) -> str:
    """Carry out an approved configuration request as its approver: completed or failed."""
    async with unit_of_work() as session:
        request = await repository.request(session, uuid.UUID(request_id), lock=True)
        if request is None or request.status != RequestStatus.APPROVED:
            return "nothing to do"
        approver = await session.get(ApiKey, request.decided_by)
        assert approver is not None
        actor = Principal.of(approver)
        try:
            async with session.begin_nested():
                result = await service.carry_out(session, actor=actor, request=request)
        except DomainError as exc:
            request.status, request.failure_reason = RequestStatus.FAILED.value, exc.detail
        else:
            request.status, request.result = RequestStatus.COMPLETED.value, result
        request.completed_at = datetime.now(UTC)
        return str(request.status)


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron safety net: re-queue work whose job was lost (Redis flushed, worker killed);
    erase the sealed passwords of pickups that expired unused (none can open them now)."""
    now = datetime.now(UTC)
    async with unit_of_work() as session:
        stuck = await repository.mailboxes_stuck_provisioning(session, now - timedelta(minutes=5))
        due = await repository.mailboxes_due_for_purge(session, now)
        expired = await repository.erase_expired_pickups(session, now)
    for mailbox_id in stuck:
        await enqueue(
            "provisioning",
            "prepare_mailbox",
            job_id=f"prepare-mailbox:{mailbox_id}",
            mailbox_id=str(mailbox_id),
        )
    for mailbox_id in due:
        await enqueue(
            "provisioning",
            "purge_mailbox",
            job_id=f"purge-mailbox:{mailbox_id}",
            mailbox_id=str(mailbox_id),
        )
    return {"provisioning": len(stuck), "purge": len(due), "expired_pickups": expired}
