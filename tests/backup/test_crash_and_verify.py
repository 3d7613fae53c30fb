"""A worker killed mid-backup leaves no damage; the rerun completes; verify finds bad bytes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from services.backup import repository, service
from services.backup.engine import backup as engine_backup
from services.backup.engine.backup import (
    MailboxOutcome,
    backup_mailbox,
    backup_mailboxes,
    mailbox_lock,
)
from services.backup.engine.imap import ImapConnection, ImapProtocolError
from services.backup.engine.storage import LocalPackStorage, PackStorage, PackWriter
from shared.db import unit_of_work
from shared.models.backup import (
    BackupMessage,
    BackupScope,
    JobStatus,
    Snapshot,
    SnapshotStatus,
    VerifyRun,
)
from tests.backup import helpers
from tests.conftest import run_worker

pytestmark = pytest.mark.usefixtures("mail_stack")

WORKER = """
import asyncio, sys, uuid
from services.backup import service
asyncio.run(service.execute_backup_run(uuid.UUID(sys.argv[1])))
"""


ARQ_WORKER = """
from arq.worker import run_worker
from services.backup.worker import WorkerSettings
run_worker({**WorkerSettings, "cron_jobs": [], "poll_delay": 0.01})
"""


async def kill_mid_backup(worker: asyncio.subprocess.Process, mailbox_id: uuid.UUID) -> None:
    """SIGKILL the worker once its backup of the mailbox has catalogued messages."""
    try:
        for _ in range(1500):
            if await pending_rows(mailbox_id) > 0 or worker.returncode is not None:
                break
            await asyncio.sleep(0.02)
        assert worker.returncode is None, "the worker ended before it could be killed"
        worker.send_signal(signal.SIGKILL)
    finally:
        await worker.wait()
    assert await pending_rows(mailbox_id) > 0, "killed before its backup began"


async def pending_rows(mailbox_id) -> int:
    async with unit_of_work() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(BackupMessage)
                .join(
                    Snapshot,
                    (Snapshot.mailbox_id == BackupMessage.mailbox_id)
                    & (Snapshot.seq == BackupMessage.since_seq),
                )
                .where(
                    BackupMessage.mailbox_id == mailbox_id,
                    Snapshot.status == SnapshotStatus.PENDING.value,
                )
            )
        )


async def verify(storage: PackStorage | None = None) -> VerifyRun:
    async with unit_of_work() as session:
        run = VerifyRun(status=JobStatus.QUEUED.value, fraction=1.0)
        session.add(run)
        await session.flush()
        run_id = run.id
    await service.execute_verify(run_id, storage)
    async with unit_of_work() as session:
        found = await session.get(VerifyRun, run_id)
        assert found is not None
        return found


async def test_killed_backup_reruns_to_completion_and_verify_reports_corruption_by_mailbox(
    seed, storage, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    messages = corpus(400, seed=13)
    await helpers.append(mailbox.address, "INBOX", messages)
    before = await helpers.state(mailbox.address)
    async with unit_of_work() as session:
        run = await service.create_run(session, scope=BackupScope.MAILBOX, mailbox_id=mailbox.id)
        run_id = run.id

    worker = await asyncio.create_subprocess_exec(sys.executable, "-c", WORKER, str(run_id))
    await kill_mid_backup(worker, mailbox.id)

    assert await service.execute_backup_run(run_id) == "succeeded"
    async with unit_of_work() as session:
        snapshots = (
            await session.scalars(select(Snapshot).where(Snapshot.mailbox_id == mailbox.id))
        ).all()
    assert [(x.status, x.message_count) for x in snapshots] == [("committed", 400)]
    assert await helpers.state(mailbox.address) == before

    clean = await verify()
    assert (clean.status, clean.blobs_damaged) == ("succeeded", 0)
    assert clean.blobs_checked >= 400

    blob = await helpers.message_blob(mailbox.id)
    with helpers.corrupted(storage, blob):
        damaged = await verify()
    assert (damaged.status, damaged.blobs_damaged) == ("failed", 1)
    [report] = damaged.damage
    assert report["blob"] == bytes(blob.hash).hex()
    assert [m["mailbox_id"] for m in report["mailboxes"]] == [str(mailbox.id)]
    assert report["mailboxes"][0]["snapshot_ids"] == [str(snapshots[0].id)]


async def test_a_job_of_a_killed_worker_is_run_again_by_the_next_worker_after_its_lease(
    seed, corpus
) -> None:
    """Not after the job's six-hour timeout, for which arq would otherwise claim it."""
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(400, seed=13))
    async with unit_of_work() as session:
        run = await service.create_run(session, scope=BackupScope.MAILBOX, mailbox_id=mailbox.id)
        run_id = run.id
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ARQ_WORKER, env={**os.environ, "MAILOPS_JOB_LEASE_SECONDS": "1"}
    )
    await kill_mid_backup(worker, mailbox.id)

    await asyncio.wait_for(run_worker("backup"), timeout=60)
    async with unit_of_work() as session:
        again = await repository.backup_run(session, run_id)
        assert again is not None and (again.status, again.mailboxes_done) == ("succeeded", 1)
        [snapshot] = await session.scalars(
            select(Snapshot).where(Snapshot.mailbox_id == mailbox.id)
        )
    assert (snapshot.status, snapshot.message_count) == ("committed", 400)


class _WatchedWriter(PackWriter):
    """A local pack writer that records how far each pack is durable, and checks that no
    two threads use it at once."""

    def __init__(self, inner: PackWriter, durable: dict[uuid.UUID, int]) -> None:
        self._inner, self._durable, self._busy = inner, durable, False
        self.pack_id = inner.pack_id
        durable[self.pack_id] = 0

    @property  # type: ignore[override]
    def size(self) -> int:
        return self._inner.size

    def _use(self, step, *args):
        assert not self._busy, "two threads on one pack writer"
        self._busy = True
        try:
            return step(*args)
        finally:
            self._busy = False

    def append(self, data: bytes) -> int:
        return self._use(self._inner.append, data)

    def truncate(self, size: int) -> None:
        self._use(self._inner.truncate, size)

    def sync(self) -> None:
        size = self._inner.size
        self._use(self._inner.sync)
        self._durable[self.pack_id] = size

    def close(self) -> None:
        self._use(self._inner.close)


class _WatchedStorage(LocalPackStorage):
    def __init__(self, root) -> None:
        super().__init__(root)
        self.durable: dict[uuid.UUID, int] = {}

    def create(self) -> PackWriter:
        return _WatchedWriter(super().create(), self.durable)


async def test_an_outcome_that_cannot_be_reported_stops_every_mailbox_backup(
    seed, storage, corpus
) -> None:
    small = await seed.mailbox("pw-1234567890")
    await helpers.append(small.address, "INBOX", corpus(1))
    large = [await seed.mailbox("pw-1234567890") for _ in range(2)]
    for mailbox in large:
        await helpers.append(mailbox.address, "INBOX", corpus(150))
    reported: list[MailboxOutcome] = []

    async def on_done(outcomes: list[MailboxOutcome]) -> None:
        reported.extend(outcomes)
        raise RuntimeError("the run's record is unreachable")

    ids = [small.id, *(m.id for m in large)]
    with pytest.raises(RuntimeError, match="unreachable"):
        await backup_mailboxes(mailbox_ids=ids, run_id=None, storage=storage, on_done=on_done)
    for mailbox_id in ids:  # a backup still going on would hold its mailbox's lock
        async with mailbox_lock(mailbox_id):
            pass
    assert len(reported) == 1, "the first outcome's report failed: no other came after it"
    async with unit_of_work() as session:
        committed = await session.scalar(
            select(func.count())
            .select_from(Snapshot)
            .where(Snapshot.mailbox_id.in_(ids), Snapshot.completed_at.is_not(None))
        )
    assert committed == 1


async def test_the_catalog_names_a_blob_only_once_its_pack_bytes_are_durable(
    seed, storage, corpus, monkeypatch
) -> None:
    """A blob row, which any other mailbox's snapshot may come to share, is written only
    once the bytes it names are fsynced; and no two threads use one pack writer."""
    watched = _WatchedStorage(storage.root)
    mailbox = await seed.mailbox("pw-1234567890")
    when = datetime(2024, 5, 1, tzinfo=UTC)
    large = b"Subject: large\r\n\r\n" + b"x" * (5 << 20)  # over one frame: streamed alone
    await helpers.append(mailbox.address, "INBOX", [*corpus(180, seed=21), (large, [], when)])
    recorded: list[dict[str, object]] = []
    insert_blobs = repository.insert_blobs

    async def checked_insert_blobs(session, rows) -> None:
        for row in rows:
            end = int(row["offset"]) + int(row["length"])
            assert end <= watched.durable[row["pack_id"]], "a blob row ahead of its fsync"
        recorded.extend(rows)
        await insert_blobs(session, rows)

    monkeypatch.setattr(repository, "insert_blobs", checked_insert_blobs)
    snapshot, counters = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=watched)
    assert snapshot.message_count == 181 and counters.messages_fetched == 181
    assert len(recorded) >= 181  # every message (bodies of 32 KiB and more apart)


async def test_a_message_the_server_cuts_short_fails_the_run_and_is_stored_whole_after(
    seed, storage, corpus, monkeypatch
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    message, flags, when = corpus(1, seed=93)[0]
    large = message + b"\r\n" + (b"y" * 76 + b"\r\n") * 70_000  # over one 4 MiB chunk
    await helpers.append(mailbox.address, "INBOX", [(large, flags, when)])
    whole_message = ImapConnection.body_chunks

    async def first_chunk_only(self, uid, chunk_bytes):
        async for chunk in whole_message(self, uid, chunk_bytes):
            yield chunk
            return  # the connection's answers stop here, as if the message were cut off

    monkeypatch.setattr(ImapConnection, "body_chunks", first_chunk_only)
    with pytest.raises(ImapProtocolError, match=r"not its RFC822\.SIZE"):
        await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    monkeypatch.undo()
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    before = await helpers.state(mailbox.address)
    await helpers.empty(mailbox.address)
    job = await helpers.restore(mailbox.id, snapshot.id, storage=storage)
    assert (job.status, job.restored) == ("succeeded", 1)
    assert await helpers.state(mailbox.address) == before


async def test_a_fractional_verify_samples_a_window_of_hash_prefixes_where_it_starts(
    seed, storage, corpus
) -> None:
    mailbox, _ = await helpers.backed_up(seed, storage, {"INBOX": corpus(1, seed=95)})
    blob = await helpers.message_blob(mailbox.id)
    prefix = int.from_bytes(bytes(blob.hash)[:2], "big")
    after = bytes(blob.hash)[:-1]  # just before it

    async def sampled(fraction: float, start: int) -> bool:
        async with unit_of_work() as session:
            page = await repository.blob_page(session, after, 1, fraction, start % 65536)
        return [b.hash for b in page] == [bytes(blob.hash)]

    assert await sampled(1e-9, prefix)  # however small the fraction, one prefix is read
    assert not await sampled(1e-9, prefix + 1)
    assert await sampled(0.5, prefix - 32767)  # wrapping round the prefixes
    assert not await sampled(0.5, prefix + 1)


async def test_a_pack_that_does_not_read_is_reported_by_verify_as_damage(
    seed, storage, corpus
) -> None:
    mailbox, _ = await helpers.backed_up(seed, storage, {"INBOX": corpus(1, seed=107)})
    blob = await helpers.message_blob(mailbox.id)
    path = storage.path(blob.pack_id)
    aside = path.with_suffix(".aside")
    path.rename(aside)
    path.mkdir()  # reading it fails as a bad disk's would: an OSError, not a missing file
    try:
        damaged = await verify(storage)
    finally:
        path.rmdir()
        aside.rename(path)
    assert damaged.status == "failed"
    [report] = [d for d in damaged.damage if d["blob"] == bytes(blob.hash).hex()]
    assert "does not read" in report["error"]
    assert [m["mailbox_id"] for m in report["mailboxes"]] == [str(mailbox.id)]


async def test_a_runs_reason_names_the_mailboxes_that_failed_by_address(
    seed, storage, monkeypatch
) -> None:
    department = await seed.department()
    fine = await seed.mailbox("pw-1234567890", department=department)
    broken = await seed.mailbox("pw-1234567890", department=department)
    original = engine_backup.backup_mailbox

    async def refusing(*, mailbox_id: uuid.UUID, **rest: object):  # type: ignore[no-untyped-def]
        if mailbox_id == broken.id:
            raise ImapProtocolError("LOGIN refused")
        return await original(mailbox_id=mailbox_id, **rest)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_backup, "backup_mailbox", refusing)
    async with unit_of_work() as session:
        run = await service.create_run(
            session, scope=BackupScope.DEPARTMENT, department_id=department.id
        )
    assert await service.execute_backup_run(run.id, storage) == "failed"
    async with unit_of_work() as session:
        ended = await repository.backup_run(session, run.id)
    assert ended is not None and ended.reason is not None
    assert f"1 of 2 mailboxes failed: {broken.address}: ImapProtocolError: LOGIN refused" in (
        ended.reason
    )
    assert fine.address not in ended.reason


async def test_a_verify_reports_its_progress_page_by_page(
    seed, storage, corpus, monkeypatch
) -> None:
    await helpers.backed_up(seed, storage, {"INBOX": corpus(3, seed=131)})
    monkeypatch.setattr(service, "VERIFY_PAGE", 1)
    async with unit_of_work() as session:
        run = VerifyRun(status=JobStatus.QUEUED.value, fraction=1.0)
        session.add(run)
        await session.flush()
        verify_id = run.id
    shown: list[int] = []
    page = repository.blob_page

    async def watched(session, *arguments):  # type: ignore[no-untyped-def]
        async with unit_of_work() as follower:  # what `mailops backup verify` reads
            row = await repository.verify_run(follower, verify_id)
            assert row is not None
            shown.append(row.blobs_checked)
        return await page(session, *arguments)

    monkeypatch.setattr(repository, "blob_page", watched)
    await service.execute_verify(verify_id, storage)
    assert shown[:4] == [0, 0, 1, 2], "committed a page behind the one being read"


def test_a_new_store_directory_and_pack_survive_a_crash_and_only_the_service_reads_them(
    tmp_path, monkeypatch
) -> None:
    """Each directory the first pack needs is fsynced into its parent, the pack's own entry
    too; the store is the service's alone (0700 directories, 0600 packs)."""
    from services.backup.engine import storage as store

    synced: list[str] = []
    monkeypatch.setattr(store, "_fsync_directory", lambda path: synced.append(str(path)))
    monkeypatch.setattr(store, "_DURABLE_DIRECTORIES", set())
    state = tmp_path / "state"
    state.mkdir()
    writer = LocalPackStorage(state / "backup" / "packs").create()
    writer.close()
    pack = LocalPackStorage(state / "backup" / "packs").path(writer.pack_id)
    prefix = pack.parent
    assert synced == [
        str(state),
        str(state / "backup"),
        str(state / "backup" / "packs"),
        str(prefix),
    ]
    assert [oct(p.stat().st_mode & 0o777) for p in (state / "backup", prefix, pack)] == [
        "0o700",
        "0o700",
        "0o600",
    ]


async def test_a_verify_lists_the_first_damaged_blobs_and_counts_the_rest(
    seed, storage, corpus, monkeypatch
) -> None:
    mailbox, _ = await helpers.backed_up(seed, storage, {"INBOX": corpus(3, seed=132)})
    blob = await helpers.message_blob(mailbox.id)
    monkeypatch.setattr(service, "DAMAGE_LISTED", 1)
    path = storage.path(blob.pack_id)
    aside = path.with_suffix(".aside")
    path.rename(aside)  # the pack lost: all three messages damaged
    try:
        damaged = await verify(storage)
    finally:
        aside.rename(path)
    assert damaged.status == "failed" and damaged.blobs_damaged >= 3
    assert len(damaged.damage) == 1
    assert damaged.reason == f"{damaged.blobs_damaged} damaged blobs (the first 1 listed)"
