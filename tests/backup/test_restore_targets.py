"""What a restore finds and makes in its target: a copy marked \\Deleted is no copy (the next
expunge takes it); the folders it creates are subscribed (clients that show subscribed
folders only would show no restored mail), the one a restore goes under included."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from services.backup import service
from services.backup.engine import restore, utf7
from services.backup.engine.imap import Literal, Tagged, Untagged, master_connection
from services.backup.engine.storage import StoredBlob
from tests.backup import helpers

pytestmark = pytest.mark.usefixtures("mail_stack")


async def test_a_copy_marked_deleted_in_the_target_does_not_count_as_restored(
    seed, storage, corpus
) -> None:
    mailbox, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(2, seed=119)})
    await helpers.store_flags(mailbox.address, "INBOX", "1:*", "+FLAGS.SILENT (\\Deleted)")

    job = await helpers.restore(mailbox.id, snapshot.id)
    assert (job.status, job.restored, job.skipped) == ("succeeded", 2, 0)
    again = await helpers.restore(mailbox.id, snapshot.id)
    assert (again.status, again.restored, again.skipped) == ("succeeded", 0, 2)
    async with master_connection(mailbox.address) as imap:
        await imap.command(b"SELECT INBOX")
        await imap.command(b"EXPUNGE")
    assert await helpers.server_content(mailbox.address) == await helpers.snapshot_state(snapshot)


async def test_a_copy_marked_deleted_stands_for_a_backed_up_one_marked_so(
    seed, storage, corpus
) -> None:
    [(data, _, when)] = corpus(1, seed=120)
    mailbox, snapshot = await helpers.backed_up(
        seed, storage, {"INBOX": [(data, ["\\Deleted"], when)]}
    )
    job = await helpers.restore(mailbox.id, snapshot.id)
    assert (job.status, job.restored, job.skipped) == ("succeeded", 0, 1)


async def test_the_folders_a_restore_creates_are_subscribed_the_one_it_goes_under_too(
    seed, storage, corpus
) -> None:
    mailbox, snapshot = await helpers.backed_up(
        seed, storage, {"INBOX": corpus(1, seed=121), "Projekte/Übersicht": corpus(1, seed=122)}
    )
    job = await helpers.restore(mailbox.id, snapshot.id, {"mode": "folder", "folder": "Wieder"})
    assert job.status == "succeeded", job.reason
    async with master_connection(mailbox.address) as imap:
        answer = await imap.command(b'LSUB "" "Wieder*"')
    subscribed = {utf7.decode(bytes(r.data[-1]).decode()) for r in answer.of("LSUB")}
    assert {"Wieder", "Wieder/INBOX", "Wieder/Projekte/Übersicht"} <= subscribed


async def test_a_restore_run_again_reports_its_progress_as_it_skips(
    seed, storage, corpus, monkeypatch
) -> None:
    mailbox, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(4, seed=126)})
    assert (await helpers.restore(mailbox.id, snapshot.id)).skipped == 4
    monkeypatch.setattr(service, "RESTORE_PAGE", 2)
    reported: list[int] = []
    record = service._record_progress

    def watched(job, progress) -> None:  # type: ignore[no-untyped-def]
        reported.append(progress.done)
        record(job, progress)

    monkeypatch.setattr(service, "_record_progress", watched)
    again = await helpers.restore(mailbox.id, snapshot.id)
    assert (again.status, again.skipped) == ("succeeded", 4)
    assert reported[:2] == [2, 4], "each page skipped is reported as it is"


class _Answers:
    """An IMAP connection whose every command gets this answer."""

    def __init__(self, *responses: Untagged) -> None:
        self.responses = list(responses)

    async def command(self, command: bytes) -> Tagged:
        return Tagged("OK", "done", self.responses)


async def test_a_flag_change_another_session_makes_meanwhile_is_no_copy_in_the_target() -> None:
    """With QRESYNC on, Dovecot slips `* n FETCH (UID u FLAGS (...))` of any message into
    an answer: no body, and maybe not one of the messages asked about."""
    body = b"Subject: s\r\n\r\nx\r\n"
    server = _Answers(
        Untagged("FETCH", 1, [[b"UID", b"1", b"BODY[]", Literal(body)]]),
        Untagged("FETCH", 7, [[b"UID", b"9", b"FLAGS", [b"\\Seen"]]]),  # not asked about
        Untagged("FETCH", 1, [[b"UID", b"1", b"FLAGS", [b"\\Seen"]]]),  # after its body
    )
    target = restore._TargetFolder(server, {len(body): [restore._Listed(1, len(body), False)]})  # type: ignore[arg-type]
    await target.hash_sizes({len(body)})
    blob = StoredBlob(hashlib.sha256(body).digest(), len(body), ())
    item = restore.RestoreItem(1, blob, [], datetime.now(UTC))
    assert target.take(item), "the copy there is found, its body not taken for empty"
