"""Backup then restore gives back every message byte for byte, with flags and INTERNALDATE."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from sqlalchemy import func, select

from services.backup import service
from services.backup.engine.backup import backup_mailbox, backup_mailboxes
from services.backup.engine.imap import master_connection, quote
from shared.db import unit_of_work
from shared.models import Mailbox
from shared.models.backup import BackupBlob
from tests.backup import helpers
from tests.backup.conftest import enmime_corpus

pytestmark = pytest.mark.usefixtures("mail_stack")


async def test_enmime_corpus_comes_back_byte_identical_with_flags_and_internaldate(
    seed, storage
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    messages = enmime_corpus()
    await helpers.append(mailbox.address, "INBOX", messages[::2])
    await helpers.append(mailbox.address, "Archive/Tésts", messages[1::2])
    before = await helpers.state(mailbox.address)
    assert sum(len(v) for v in before.values()) == len(messages)

    snapshot, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert counters.messages_fetched == len(messages)
    await helpers.empty(mailbox.address)
    assert await helpers.state(mailbox.address) == {}

    job = await helpers.restore(mailbox.id, snapshot.id)
    assert (job.status, job.total, job.restored, job.skipped) == (
        "succeeded",
        len(messages),
        len(messages),
        0,
    )
    assert await helpers.state(mailbox.address) == before


async def test_generated_corpus_with_attachments_non_ascii_folders_and_keywords_round_trips(
    seed, storage, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    big = corpus(1, seed=99)[0]
    # Larger than one 4 MiB frame: written and read a chunk at a time.
    big_body = big[0] + b"\r\n" + (b"x" * 76 + b"\r\n") * 70_000
    await helpers.append(mailbox.address, "INBOX", [*corpus(30), (big_body, ["\\Seen"], big[2])])
    await helpers.append(mailbox.address, "Отправленные", corpus(10, seed=2))
    await helpers.append(mailbox.address, "Projekte/Überblick/日本", corpus(8, seed=5))
    await helpers.append(mailbox.address, "A&B", corpus(3, seed=6))
    before = await helpers.state(mailbox.address)

    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert snapshot.message_count == 52
    await helpers.empty(mailbox.address)

    job = await helpers.restore(mailbox.id, snapshot.id)
    assert job.status == "succeeded", job.reason
    assert await helpers.state(mailbox.address) == before

    again = await helpers.restore(mailbox.id, snapshot.id)
    assert (again.status, again.restored, again.skipped) == ("succeeded", 0, 52)
    assert await helpers.state(mailbox.address) == before


async def test_folder_names_with_brackets_are_backed_up_and_restored(seed, storage, corpus) -> None:
    # Dovecot sends these names unquoted: a bracket is an atom's character.
    mailbox = await seed.mailbox("pw-1234567890")
    for number, folder in enumerate(("Notes[1", "a]b", "Re[2] (x)")):
        await helpers.append(mailbox.address, folder, corpus(2, seed=84 + number))
    before = await helpers.state(mailbox.address)
    assert set(before) == {"Notes[1", "a]b", "Re[2] (x)"}

    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert snapshot.message_count == 6
    _, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert counters.messages_fetched == 0
    await helpers.empty(mailbox.address)
    job = await helpers.restore(mailbox.id, snapshot.id)
    assert job.status == "succeeded", job.reason
    assert await helpers.state(mailbox.address) == before


async def test_a_restore_creates_the_snapshots_empty_folders_too(seed, storage, corpus) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(2, seed=92))
    async with master_connection(mailbox.address) as imap:
        for folder in ("Projects", "Projects/2019"):
            await imap.command(b"CREATE " + quote(folder))
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.empty(mailbox.address)

    only = await helpers.restore(
        mailbox.id, snapshot.id, {"mode": "folder", "folder": "Back"}, folders=["Projects"]
    )
    assert (only.status, only.total) == ("succeeded", 0)
    whole = await helpers.restore(mailbox.id, snapshot.id)
    assert whole.status == "succeeded"
    folders = set(await helpers.state(mailbox.address, skip_empty=False))
    assert {"Back/Projects", "Projects", "Projects/2019", "INBOX"} <= folders
    assert "Back/Projects/2019" not in folders


async def test_two_restores_into_one_mailbox_at_once_add_each_message_once(
    seed, storage, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(40, seed=90))
    await helpers.append(mailbox.address, "Archive", corpus(20, seed=91))
    before = await helpers.state(mailbox.address)
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.empty(mailbox.address)

    # A double-click: the same restore requested twice, both taken by workers at once.
    jobs = [await helpers.request_restore(mailbox.id, snapshot.id) for _ in range(2)]
    await asyncio.gather(*(service.execute_restore(job, storage) for job in jobs))
    async with unit_of_work() as session:
        ended = [await service.get_restore(session, restore_id=job) for job in jobs]
    assert [job.status for job in ended] == ["succeeded", "succeeded"]
    assert sorted((job.restored, job.skipped) for job in ended) == [(0, 60), (60, 0)]
    assert await helpers.state(mailbox.address) == before


async def test_a_mailbox_with_an_internationalised_address_is_backed_up_and_restored(
    seed, storage, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    local, domain = mailbox.address.split("@")
    async with unit_of_work() as session:
        row = await session.get(Mailbox, mailbox.id)
        assert row is not None
        row.address = f"jürgen.{local}@{domain}"  # IMAP LOGIN cannot carry this name
    by_id = str(mailbox.id)  # how the tests reach it over IMAP, as the engine does
    await helpers.append(by_id, "INBOX", corpus(3, seed=96))
    before = await helpers.state(by_id)

    [first] = await backup_mailboxes(mailbox_ids=[mailbox.id], run_id=None, storage=storage)
    [again] = await backup_mailboxes(mailbox_ids=[mailbox.id], run_id=None, storage=storage)
    assert first.error is None and again.error is None, (first.error, again.error)
    assert again.snapshot is not None and again.counters.messages_fetched == 0
    await helpers.empty(by_id)
    job = await helpers.restore(mailbox.id, again.snapshot.id, storage=storage)
    assert (job.status, job.restored) == ("succeeded", 3), job.reason
    assert await helpers.state(by_id) == before


async def test_a_message_in_many_mailboxes_is_stored_once(seed, storage, corpus) -> None:
    department = await seed.department()
    shared = corpus(5, seed=11)
    mailboxes = [await seed.mailbox("pw-1234567890", department=department) for _ in range(3)]
    for mailbox in mailboxes:
        await helpers.append(mailbox.address, "INBOX", shared)
    stored = []
    for mailbox in mailboxes:
        _, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
        stored.append(counters.bytes_stored)
    assert stored[0] > 0 and stored[1:] == [0, 0]
    async with unit_of_work() as session:
        hashes = [hashlib.sha256(m[0]).digest() for m in shared]
        count = await session.scalar(
            select(func.count()).select_from(BackupBlob).where(BackupBlob.hash.in_(hashes))
        )
    assert count == 5
