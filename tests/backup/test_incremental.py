"""Incremental backups fetch only what changed; the catalog grows with changes, not runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.parser import BytesHeaderParser

import pytest
from sqlalchemy import select

from services.backup.engine import backup, imap
from services.backup.engine.backup import MailboxBackup, backup_mailbox
from services.backup.engine.imap import master_connection
from shared.db import unit_of_work
from shared.models import MailboxStatus
from shared.models.backup import BackupFolder
from tests.backup import helpers
from tests.backup.conftest import enmime_corpus

pytestmark = pytest.mark.usefixtures("mail_stack")


async def test_unchanged_mailbox_backup_fetches_no_bodies_and_adds_no_catalog_rows(
    seed, storage, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(12))
    await helpers.append(mailbox.address, "Archive", corpus(4, seed=2))
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    rows = await helpers.catalog_rows(mailbox.id)
    for _ in range(3):
        snapshot, counters = await backup_mailbox(
            mailbox_id=mailbox.id, run_id=None, storage=storage
        )
        assert counters.messages_fetched == 0 and counters.bytes_stored == 0
        assert snapshot.message_count == 16
    assert await helpers.catalog_rows(mailbox.id) == rows == 16


async def test_flag_changes_and_expunges_are_recorded_without_fetching_bodies(
    seed, storage, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(10))
    first, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.store_flags(mailbox.address, "INBOX", "1:2", "+FLAGS ($Done \\Flagged)")
    await helpers.delete_messages(mailbox.address, "INBOX", uids="9:10")
    second, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert counters.messages_fetched == 0
    server = await helpers.state(mailbox.address)
    assert await helpers.snapshot_state(second) == helpers.content(server)
    assert second.message_count == 8
    # The earlier snapshot still reads as it was.
    assert first.message_count == 10 and len((await helpers.snapshot_state(first))["INBOX"]) == 10


async def uidvalidities(mailbox_id, folder: str) -> set[int]:  # type: ignore[no-untyped-def]
    """The UIDVALIDITYs the catalog has had the folder under."""
    async with unit_of_work() as session:
        rows = await session.scalars(
            select(BackupFolder.uidvalidity).where(
                BackupFolder.mailbox_id == mailbox_id, BackupFolder.name == folder
            )
        )
        return set(rows)


def after_the_listing(monkeypatch, change: Callable[[], Awaitable[object]]) -> None:
    """`change` is made to the mailbox between the next run's folder listing and its sync
    of the folders (once)."""
    listed = MailboxBackup._list

    async def listing_then_change(self, imap):
        folders = await listed(self, imap)
        monkeypatch.undo()
        await change()
        return folders

    monkeypatch.setattr(MailboxBackup, "_list", listing_then_change)


async def test_mail_delivered_during_a_run_is_taken_by_the_next_run_once(
    seed, storage, corpus, monkeypatch
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(3, seed=80))
    after_the_listing(
        monkeypatch, lambda: helpers.append(mailbox.address, "INBOX", corpus(2, seed=81))
    )
    first, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert first.message_count == 3  # the folder as it was listed
    second, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert counters.messages_fetched == 2
    assert second.message_count == 5
    assert await helpers.snapshot_state(second) == await helpers.server_content(mailbox.address)


async def test_mail_delivered_during_a_run_and_deleted_before_the_next_is_gone_from_it(
    seed, storage, corpus, monkeypatch
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(3, seed=82))
    after_the_listing(
        monkeypatch, lambda: helpers.append(mailbox.address, "INBOX", corpus(1, seed=83))
    )
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.delete_messages(mailbox.address, "INBOX", uids="4")
    second, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert second.message_count == 3
    assert await helpers.snapshot_state(second) == await helpers.server_content(mailbox.address)


async def test_a_folder_deleted_during_a_run_is_gone_from_its_snapshot(
    seed, storage, corpus, monkeypatch
) -> None:
    mailbox, _ = await helpers.backed_up(
        seed, storage, {"INBOX": corpus(2, seed=100), "Old": corpus(2, seed=101)}
    )
    await helpers.append(mailbox.address, "Old", corpus(1, seed=102))  # changed: to sync

    async def delete_old() -> None:
        async with master_connection(mailbox.address) as other:
            await other.command(b'DELETE "Old"')

    after_the_listing(monkeypatch, delete_old)
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert snapshot.message_count == 2
    assert await helpers.snapshot_state(snapshot) == await helpers.server_content(mailbox.address)


async def test_uidvalidity_change_rescans_without_fetching_stored_bodies(
    seed, storage, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    messages = corpus(6, seed=4)
    await helpers.append(mailbox.address, "Projekt", messages)
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.delete_folder(mailbox.address, "Projekt")
    await helpers.append(mailbox.address, "Projekt", messages)  # a new UIDVALIDITY
    snapshot, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert counters.messages_fetched == 0
    assert snapshot.message_count == 6
    assert len(await uidvalidities(mailbox.id, "Projekt")) == 2, "rescanned as a new folder"


async def test_a_rescan_fetches_again_only_the_bodies_of_messages_without_a_message_id(
    seed, storage
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    messages = enmime_corpus()
    await helpers.append(mailbox.address, "Projekt", messages)
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.delete_folder(mailbox.address, "Projekt")
    await helpers.append(mailbox.address, "Projekt", messages)  # a new UIDVALIDITY
    snapshot, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    without_id = [m for m, _, _ in messages if not BytesHeaderParser().parsebytes(m)["Message-ID"]]
    assert 0 < len(without_id) < len(messages)
    assert counters.messages_fetched == len(without_id)
    assert len(await uidvalidities(mailbox.id, "Projekt")) == 2, "rescanned as a new folder"
    assert await helpers.snapshot_state(snapshot) == await helpers.server_content(mailbox.address)


async def test_generated_messages_alike_in_all_but_their_body_are_each_kept_as_themselves(
    seed, storage
) -> None:
    """No Message-ID, one INTERNALDATE, one envelope, bodies of one length: only the bytes
    tell them apart, so the one seen later is downloaded, not taken for the first."""
    mailbox = await seed.mailbox("pw-1234567890")
    delivered = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    header = "From: cron@x.test\r\nTo: ops@x.test\r\nSubject: disk\r\n"
    header += "Date: Mon, 6 May 2024 07:08:09 +0000\r\n\r\n"
    first, second = ((header + f"{used}% used\r\n").encode() for used in (91, 92))
    await helpers.append(mailbox.address, "Alerts", [(first, [], delivered)])
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.append(mailbox.address, "Alerts", [(second, [], delivered)])
    snapshot, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert counters.messages_fetched == 1
    assert await helpers.snapshot_state(snapshot) == await helpers.server_content(mailbox.address)


async def test_messages_alike_but_for_their_envelope_are_not_taken_for_one_another(
    seed, storage
) -> None:
    """No Message-ID, one INTERNALDATE, one size: the subject tells them apart."""
    mailbox = await seed.mailbox("pw-1234567890")
    delivered = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)

    def note(subject: str, body: str) -> tuple[bytes, list[str], datetime]:
        header = f"From: cron@x.test\r\nTo: ops@x.test\r\nSubject: {subject}\r\n"
        return (
            (header + "Date: Mon, 6 May 2024 07:08:09 +0000\r\n\r\n" + body).encode(),
            [],
            delivered,
        )

    await helpers.append(mailbox.address, "Alerts", [note("disk A", "91% used\r\n")])
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.delete_folder(mailbox.address, "Alerts")
    await helpers.append(mailbox.address, "Alerts", [note("disk B", "92% used\r\n")])
    snapshot, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert counters.messages_fetched == 1
    assert await helpers.snapshot_state(snapshot) == await helpers.server_content(mailbox.address)


async def test_a_folder_made_again_between_the_listing_and_its_sync_is_read_as_new(
    seed, storage, corpus, monkeypatch
) -> None:
    """Its UIDs are not those the listed UIDVALIDITY stands for: read on as the old folder,
    the snapshot would mix the two."""
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "Projekt", corpus(4, seed=129))
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.store_flags(mailbox.address, "Projekt", "1", "+FLAGS.SILENT (\\Flagged)")

    async def made_again() -> None:
        await helpers.delete_folder(mailbox.address, "Projekt")
        await helpers.append(mailbox.address, "Projekt", corpus(6, seed=130))

    after_the_listing(monkeypatch, made_again)
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert await helpers.snapshot_state(snapshot) == await helpers.server_content(mailbox.address)


async def test_a_sparse_folder_is_searched_in_uid_windows_its_answer_lines_kept_short(
    seed, storage, monkeypatch
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    when = datetime(2024, 5, 6, tzinfo=UTC)
    notes = [(b"Subject: note %d\r\n\r\nbody\r\n" % i, [], when) for i in range(1200)]
    await helpers.append(mailbox.address, "INBOX", notes)
    await helpers.delete_messages(
        mailbox.address, "INBOX", uids=",".join(str(uid) for uid in range(2, 1201, 2))
    )
    # Every other UID gone: one answer listing the 600 left would be about 2,000 bytes.
    monkeypatch.setattr(imap, "LINE_LIMIT", 1500)
    monkeypatch.setattr(backup, "UID_WINDOW", 200)
    snapshot, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert counters.messages_fetched == snapshot.message_count == 600
    # And the sync of what changed: 300 expunged (one VANISHED list of them would be about
    # 1,700 bytes) and 100 flagged, asked about 200 of the catalog's UIDs at a time.
    await helpers.delete_messages(
        mailbox.address, "INBOX", uids=",".join(str(uid) for uid in range(1, 1201, 4))
    )
    await helpers.store_flags(mailbox.address, "INBOX", "1:400", "+FLAGS.SILENT (\\Seen)")
    synced, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert counters.messages_fetched == 0
    assert await helpers.snapshot_state(synced) == await helpers.server_content(mailbox.address)


class _UidsOnly:
    """An IMAP connection to a folder of these UIDs that answers UID SEARCH, counting them."""

    def __init__(self, uids: list[int]) -> None:
        self.uids, self.commands = uids, 0

    async def command(self, command: bytes) -> imap.Tagged:
        self.commands += 1
        returned, _, window = command.removeprefix(b"UID SEARCH RETURN ").partition(b" UID ")
        low, high = (int(n) for n in window.split(b":"))
        found = [u for u in self.uids if low <= u <= high]
        items: list[bytes] = [b"UID"]
        if found and returned == b"(ALL)":
            items += [b"ALL", ",".join(map(str, found)).encode()]
        elif found:
            items += [b"MIN", b"%d" % min(found), b"MAX", b"%d" % max(found)]
            items += [b"COUNT", b"%d" % len(found)]
        return imap.Tagged("OK", "done", [imap.Untagged("ESEARCH", None, items)])


async def test_a_folder_of_far_apart_uids_is_searched_in_few_commands() -> None:
    """UIDs near 2^32 (kept by a migration) cost a count and a listing, not a command per
    window of the range."""
    folder = _UidsOnly([5, 9, 4_000_000_000])
    assert await backup._search_uids(folder, 1, 2**32 - 1) == [5, 9, 4_000_000_000]  # type: ignore[arg-type]
    assert folder.commands == 2
    crowded = _UidsOnly(list(range(1, 120_001)))
    assert await backup._search_uids(crowded, 1, 120_000) == crowded.uids  # type: ignore[arg-type]
    assert crowded.commands <= 7  # halved until each listing holds at most UID_WINDOW


async def test_suspended_and_deleting_mailboxes_are_still_backed_up(seed, storage, corpus) -> None:
    for status in (MailboxStatus.SUSPENDED, MailboxStatus.DELETING):
        mailbox = await seed.mailbox("pw-1234567890", status=status)
        await helpers.append(mailbox.address, "INBOX", corpus(3))
        snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
        assert snapshot.message_count == 3
