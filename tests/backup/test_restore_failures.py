"""A restore that cannot be carried out fails saying why."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from services.backup import service
from services.backup.engine import imap, restore
from services.backup.engine.backup import backup_mailbox
from shared.db import unit_of_work
from shared.models import Mailbox, MailboxStatus
from shared.models.backup import BackupBlob, BackupMessage
from tests.backup import helpers

pytestmark = pytest.mark.usefixtures("mail_stack")


async def test_a_restore_whose_server_stops_answering_fails_saying_so(
    seed, storage, corpus, monkeypatch
) -> None:
    mailbox, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(2, seed=89)})
    await helpers.empty(mailbox.address)
    monkeypatch.setattr(imap, "COMMAND_TIMEOUT_SECONDS", 0)
    job = await helpers.restore(mailbox.id, snapshot.id, storage=storage)
    assert job.status == "failed"
    assert job.reason is not None and "got no answer in 0 s" in job.reason


async def test_a_restore_whose_target_was_deleted_since_the_request_fails_saying_so(
    seed, storage, corpus
) -> None:
    mailbox, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(1, seed=97)})
    job_id = await helpers.request_restore(mailbox.id, snapshot.id)
    async with unit_of_work() as session:
        row = await session.get(Mailbox, mailbox.id)
        assert row is not None
        row.status = MailboxStatus.PURGED.value
    await service.execute_restore(job_id, storage)
    async with unit_of_work() as session:
        job = await service.get_restore(session, restore_id=job_id)
    assert job.status == "failed"
    assert job.reason is not None and "is purged since the restore was requested" in job.reason


async def test_a_message_that_does_not_read_is_left_out_and_the_rest_restored(
    seed, storage, corpus, monkeypatch
) -> None:
    """Its APPEND is cut off with nothing of it stored (no truncated message in the folder);
    the folder is taken again without it; the job fails naming it, its counts exact."""
    mailbox = await seed.mailbox("pw-1234567890")
    [(first, flags, when), (last, _, _)] = corpus(2, seed=106)
    tiny = b"X: y\r\n\r\nz"  # as long as `M7 LOGOUT`: once the bytes a LOGOUT sent into it
    messages = [(first, flags, when), (tiny, [], when), (last, [], when)]
    await helpers.append(mailbox.address, "INBOX", messages)
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.empty(mailbox.address)
    async with unit_of_work() as session:
        blob = await session.get(BackupBlob, hashlib.sha256(tiny).digest())
        damaged = await session.scalar(
            select(BackupMessage.id).where(
                BackupMessage.mailbox_id == mailbox.id,
                BackupMessage.blob_hash == hashlib.sha256(tiny).digest(),
            )
        )
    assert blob is not None
    monkeypatch.setattr(restore, "APPEND_BATCH", 1)  # the first is in before the damage
    with helpers.corrupted(storage, blob):
        job = await helpers.restore(mailbox.id, snapshot.id, storage=storage)
    assert job.status == "failed" and job.reason is not None
    assert f"message {damaged} (for 'INBOX') does not read" in job.reason
    assert "1 messages do not read from the backup store" in job.reason
    assert (job.total, job.done, job.restored, job.skipped) == (3, 3, 2, 0)
    restored = await helpers.state(mailbox.address)
    assert [h for h, _, _ in restored["INBOX"]] == sorted(
        hashlib.sha256(m).hexdigest() for m in (first, last)
    )
