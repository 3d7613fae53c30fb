"""Large folders: a restore reads the catalog a page at a time, a sync writes it a chunk at a
time, and a batch of messages is stored with one MULTIAPPEND. The pages and chunks are made
tiny here so that a few messages cross many of their boundaries; bench/backup.py measures
memory with a 100,000-message folder."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from services.backup import repository, service
from services.backup.engine import backup as engine
from services.backup.engine.backup import backup_mailbox
from services.backup.engine.imap import AppendItem, master_connection
from tests.backup import helpers

pytestmark = pytest.mark.usefixtures("mail_stack")


async def test_a_paged_restore_brings_back_every_folder_and_skips_what_the_target_has(
    seed, storage, corpus, monkeypatch
) -> None:
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    messages = corpus(11)
    twice = messages[4]  # the same bytes twice in INBOX, on different pages
    await helpers.append(mailbox.address, "INBOX", [*messages[:10], twice])
    await helpers.append(mailbox.address, "Projekte/Übersicht", corpus(4, seed=9))
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    target = await seed.mailbox("pw-1234567890", department=department)
    await helpers.append(target.address, "INBOX", [twice, messages[10]])

    pages: list[int] = []
    snapshot_messages = repository.snapshot_messages

    async def recorded(*args, **kwargs):
        rows = await snapshot_messages(*args, **kwargs)
        pages.append(len(rows))
        return rows

    monkeypatch.setattr(service, "RESTORE_PAGE", 3)
    monkeypatch.setattr(repository, "snapshot_messages", recorded)
    job = await helpers.restore(
        mailbox.id, snapshot.id, {"mode": "mailbox", "mailbox_id": target.id}
    )

    assert (job.status, job.total, job.done, job.restored, job.skipped) == (
        "succeeded",
        15,
        15,
        14,
        1,
    )
    assert max(pages) == 3 and len(pages) >= 15 // 3
    source = await helpers.state(mailbox.address)
    restored = await helpers.state(target.address)
    assert restored["Projekte/Übersicht"] == source["Projekte/Übersicht"]
    # One copy of `twice` was there already: the restore added the other, and the message
    # that only the target had stays.
    assert sorted(h for h, _, _ in restored["INBOX"]) == sorted(
        [h for h, _, _ in source["INBOX"]] + [hashlib.sha256(messages[10][0]).hexdigest()]
    )

    again = await helpers.restore(
        mailbox.id, snapshot.id, {"mode": "mailbox", "mailbox_id": target.id}
    )
    assert (again.status, again.restored, again.skipped) == ("succeeded", 0, 15)
    assert await helpers.state(target.address) == restored


async def test_flag_changes_and_expunges_across_many_chunks_are_all_recorded(
    seed, storage, corpus, monkeypatch
) -> None:
    monkeypatch.setattr(engine, "CATALOG_CHUNK", 2)
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(9))
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    await helpers.store_flags(mailbox.address, "INBOX", "1:*", "+FLAGS.SILENT (\\Seen $Done)")
    await helpers.delete_messages(mailbox.address, "INBOX", uids="2,5,8")
    second, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    assert counters.messages_fetched == 0
    server = helpers.content(await helpers.state(mailbox.address))
    assert len(server["INBOX"]) == 6
    assert all({"\\Seen", "$Done"} <= set(flags) for _, flags in server["INBOX"])
    assert await helpers.snapshot_state(second) == server


async def test_a_batch_is_appended_by_one_command_and_all_or_nothing(seed, corpus) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    when = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    first, second, third = (data for data, _, _ in corpus(3))

    def items(*messages: bytes) -> list[AppendItem]:
        return [
            AppendItem(flags=["\\Seen"], internal_date=when, size=len(m), chunks=helpers.once(m))
            for m in messages
        ]

    async with master_connection(mailbox.address) as imap:
        assert "MULTIAPPEND" in imap.capabilities
        [stored] = await imap.append_many("INBOX", items(first, second))
        # One answer for the batch: both messages got their UIDs in one APPENDUID range.
        assert stored.status == "OK" and "APPENDUID" in stored.text and ":" in stored.text
        # Dovecot refuses an empty message; with it, none of the batch is stored.
        [refused] = await imap.append_many("INBOX", items(third, b""))
        assert refused.status == "NO"
    stored_now = sorted(h for h, _, _ in (await helpers.state(mailbox.address))["INBOX"])
    assert stored_now == sorted(hashlib.sha256(m).hexdigest() for m in (first, second))


async def test_a_run_that_writes_many_catalog_rows_refreshes_the_planners_statistics(
    seed, storage, corpus, db_session, monkeypatch
) -> None:
    monkeypatch.setattr(engine, "ANALYZE_AFTER_ROWS", 5)
    monkeypatch.setattr(engine, "ANALYZE_SHARE", 0.0)
    monkeypatch.setattr(engine, "METADATA_BATCH", 4)
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(12))

    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    # 12 rows in windows of 4, at least 5 rows between two: one ANALYZE, after the 8th row.
    # ANALYZE reads the whole of a small table, so the planner's estimate is then exact.
    rows = await db_session.scalar(text("SELECT count(*) FROM backup_messages"))
    assert await repository.catalog_size(db_session) == rows - 4


async def test_an_export_paged_across_folders_holds_every_message_once_in_order(
    seed, storage, corpus, monkeypatch
) -> None:
    monkeypatch.setattr(service, "EXPORT_PAGE", 2)
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(3))
    await helpers.append(mailbox.address, "Projekte/Übersicht", corpus(2, seed=9))
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    async def folders_of(chosen: list[str] | None) -> list[str]:
        mbox = b"".join(
            [
                chunk
                async for chunk in service.export_mbox(snapshot.id, chosen, actor=helpers.OPERATOR)
            ]
        )
        return [
            line.removeprefix(b"X-Mailops-Folder: ").decode()
            for line in mbox.split(b"\n")
            if line.startswith(b"X-Mailops-Folder: ")
        ]

    assert await folders_of(None) == ["INBOX"] * 3 + ["Projekte/Übersicht"] * 2
    assert await folders_of(["Projekte/Übersicht"]) == ["Projekte/Übersicht"] * 2
