"""Copies of one message in several mailboxes: a copy may have its own delivery headers, the
body is stored once, every copy comes back byte for byte, and the body lives as long as a
copy needs it."""

from __future__ import annotations

import base64
import random
import smtplib
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from services.backup import service
from services.backup.engine.backup import backup_mailbox
from services.backup.engine.storage import FRAME_PLAINTEXT_BYTES, LocalPackStorage
from shared.db import unit_of_work
from shared.models.backup import BackupBlob, BackupMessage
from shared.settings import Settings
from tests.backup import helpers
from tests.backup.test_crash_and_verify import verify
from tests.mail import wait_for_subject

pytestmark = pytest.mark.usefixtures("mail_stack")


def memo(recipients: list[str], subject: str) -> bytes:
    """A memo with a 40 KB attachment, as the sender's mail client submits it."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "cfo@x.test", ", ".join(recipients), subject
    msg["Message-ID"] = f"<{uuid.uuid4()}@x.test>"
    msg.set_content("Quarterly figures attached.\n")
    msg.add_attachment(
        random.Random(subject).randbytes(40_000),
        maintype="application",
        subtype="pdf",
        filename="q3.pdf",
    )
    return bytes(msg).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def deliver(settings: Settings, recipients: list[str], data: bytes) -> None:
    """One SMTP submission to Postfix for these recipients."""
    with smtplib.SMTP(
        settings.mail_host, settings.smtp_port, timeout=10, local_hostname="localhost"
    ) as smtp:
        smtp.sendmail("cfo@x.test", recipients, data)


async def delivered_copies(seed, settings: Settings) -> list:
    """Four copies of one memo: two delivered in one SMTP transaction, one delivered on its
    own (its own Delivered-To and Received), and the sender's copy in its Sent folder."""
    department = await seed.department()
    await seed.backup_policy(department)
    mailboxes = [await seed.mailbox("pw-1234567890", department=department) for _ in range(4)]
    subject = f"Q3 figures {uuid.uuid4().hex[:8]}"
    data = memo([m.address for m in mailboxes[:3]], subject)
    deliver(settings, [m.address for m in mailboxes[:2]], data)
    deliver(settings, [mailboxes[2].address], data)
    await helpers.append(mailboxes[3].address, "Sent", [(data, ["\\Seen"], datetime.now(UTC))])
    for mailbox in mailboxes[:3]:
        assert await wait_for_subject(mailbox.address, subject)
    return mailboxes


async def message_blobs(mailbox_ids: list[uuid.UUID]) -> list[BackupBlob]:
    async with unit_of_work() as session:
        return list(
            (
                await session.scalars(
                    select(BackupBlob)
                    .join(BackupMessage, BackupMessage.blob_hash == BackupBlob.hash)
                    .where(BackupMessage.mailbox_id.in_(mailbox_ids))
                    .distinct()
                )
            ).all()
        )


async def test_each_delivered_copy_stores_only_its_headers_once_the_body_is_stored(
    seed, settings, storage
) -> None:
    mailboxes = await delivered_copies(seed, settings)
    states = [await helpers.state(m.address) for m in mailboxes]
    copies = [digest for state in states for folder in state.values() for digest, _, _ in folder]
    # One transaction's copies are identical; one delivered alone has its own Delivered-To
    # and Received; the sender's has no delivery headers at all.
    assert len(copies) == 4 and len(set(copies)) == 3 and copies[0] == copies[1]

    stored, snapshots = [], []
    for mailbox in mailboxes:
        snap, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
        stored.append(counters.bytes_stored)
        snapshots.append(snap)
    assert stored[0] > 40_000 and all(s < 2_000 for s in stored[1:])
    blobs = await message_blobs([m.id for m in mailboxes])
    assert len(blobs) == 3 and len({b.body_hash for b in blobs}) == 1
    assert blobs[0].body_hash is not None

    last = mailboxes[-1]
    await helpers.empty(last.address)
    job = await helpers.restore(last.id, snapshots[-1].id)
    assert (job.status, job.restored) == ("succeeded", 1)
    assert await helpers.state(last.address) == states[-1]


async def test_damage_to_a_shared_body_names_every_mailbox_and_prune_keeps_it_for_the_last(
    seed, settings, storage
) -> None:
    mailboxes = await delivered_copies(seed, settings)
    snapshots = [
        (await backup_mailbox(mailbox_id=m.id, run_id=None, storage=storage))[0] for m in mailboxes
    ]
    (body_hash,) = {bytes(b.body_hash or b"") for b in await message_blobs([mailboxes[0].id])}
    async with unit_of_work() as session:
        body = await session.get(BackupBlob, body_hash)
        assert body is not None
    with helpers.corrupted(storage, body):
        damaged = await verify()
    # One report, for the body's own bytes, naming every mailbox (none per header blob).
    [report] = damaged.damage
    assert report["blob"] == body_hash.hex()
    assert {m["address"] for m in report["mailboxes"]} == {m.address for m in mailboxes}

    async def drop_and_prune(gone: list) -> None:
        """Delete the memo on the server, back up (the new snapshot lacks it), prune the rest."""
        for mailbox in gone:
            folder = "Sent" if mailbox is mailboxes[3] else "INBOX"
            await helpers.delete_messages(mailbox.address, folder)
            await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
        await service.prune()

    await drop_and_prune(mailboxes[:2])
    assert await message_blobs([m.id for m in mailboxes[:2]]) == []
    left = await message_blobs([m.id for m in mailboxes[2:]])
    assert len(left) == 2 and {b.body_hash for b in left} == {body_hash}
    kept = mailboxes[2]
    before = await helpers.state(kept.address)
    await helpers.empty(kept.address)
    job = await helpers.restore(kept.id, snapshots[2].id)
    assert (job.status, await helpers.state(kept.address)) == ("succeeded", before)

    await helpers.empty(kept.address)
    await drop_and_prune(mailboxes[2:])
    async with unit_of_work() as session:
        assert await session.get(BackupBlob, body_hash) is None


async def test_copies_of_a_message_larger_than_a_frame_share_the_body_and_come_back_whole(
    seed, storage
) -> None:
    sent = memo(["ceo@x.test"], "board pack")
    header_end = sent.index(b"\r\n\r\n") + 4
    attachment = base64.encodebytes(random.Random(5).randbytes(7 << 20)).replace(b"\n", b"\r\n")
    sent = sent[:header_end] + b"--board\r\n\r\n" + attachment + b"--board--\r\n"
    assert len(sent) > 2 * FRAME_PLAINTEXT_BYTES
    delivered = b"Delivered-To: ceo@x.test\r\nReturn-Path: <cfo@x.test>\r\n" + sent
    when = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    sender, receiver = [await seed.mailbox("pw-1234567890") for _ in range(2)]
    await helpers.append(sender.address, "Sent", [(sent, ["\\Seen"], when)])
    await helpers.append(receiver.address, "INBOX", [(delivered, [], when)])
    before = await helpers.state(receiver.address)

    stored = []
    for mailbox in (sender, receiver):
        snap, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
        stored.append(counters.bytes_stored)
    assert stored[0] > 7 << 20 and stored[1] < 2_000
    # Restore and verify read a pack a frame at a time, so memory holds about one frame
    # however large the message.
    reads = ReadSizes(storage.root)
    await helpers.empty(receiver.address)
    job = await helpers.restore(receiver.id, snap.id, storage=reads)
    assert (job.status, await helpers.state(receiver.address)) == ("succeeded", before)
    assert (await verify(reads)).blobs_damaged == 0
    assert 0 < max(reads.sizes) <= FRAME_PLAINTEXT_BYTES + 1024
    # Restoring again finds it there (hashed a chunk at a time on the server) and adds nothing.
    again = await helpers.restore(receiver.id, snap.id)
    assert (again.status, again.restored, again.skipped) == ("succeeded", 0, 1)


class ReadSizes(LocalPackStorage):
    """The real pack storage, noting how much each read asks for."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.sizes: list[int] = []

    def read(self, pack_id: uuid.UUID, offset: int, length: int) -> bytes:
        self.sizes.append(length)
        return super().read(pack_id, offset, length)
