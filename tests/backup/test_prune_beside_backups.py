"""Prune beside backups and verify: its deletions wait for the mailbox backups in progress,
and backups that start meanwhile wait for it, so that no backup references a blob it
deletes and no stream of backups keeps it from running; verify does not take a blob that
prune deleted or moved while it ran for damage; a snapshot a restore will read outlives
its retention until the restore has ended (from the moment it is requested), and one an
export streams until the stream has; each prune is recorded."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import pytest
from sqlalchemy import select, text

from services.backup import repository, service
from services.backup import schemas as s
from services.backup.engine.backup import backup_mailbox, mailbox_lock
from services.backup.engine.storage import BlobDamaged, LocalPackStorage, StoredBlob, check_blob
from shared.db import MAX_OVERFLOW, POOL_SIZE, get_engine, unit_of_work
from shared.errors import NotFound, Unprocessable
from shared.models.backup import (
    BackupMessage,
    BackupPack,
    JobStatus,
    PruneRun,
    Snapshot,
    VerifyRun,
)
from tests.backup import helpers

pytestmark = pytest.mark.usefixtures("mail_stack")


async def _last_prune() -> PruneRun:
    async with unit_of_work() as session:
        last = await session.scalar(
            select(PruneRun).order_by(PruneRun.finished_at.desc(), PruneRun.started_at.desc())
        )
    assert last is not None
    return last


async def test_prune_waits_for_the_backups_in_progress_and_backups_started_meanwhile_wait_for_it(
    seed, storage, corpus
) -> None:
    department = await seed.department()
    busy, other = [await seed.mailbox("pw-1234567890", department=department) for _ in "ab"]
    await helpers.append(other.address, "INBOX", corpus(2, seed=61))

    async with mailbox_lock(busy.id):  # as a backup of `busy` in progress holds it
        short = await service.prune(storage, lock_wait=timedelta(milliseconds=200))
        assert short.skipped == "mailbox backups in progress held the store for over 0.2 s"
        assert (short.snapshots, short.blobs, short.repacked) == (0, 0, 0)
        recorded = await _last_prune()
        assert (recorded.status, recorded.reason) == ("skipped", short.skipped)

        pruning = asyncio.create_task(service.prune(storage, lock_wait=timedelta(seconds=60)))
        await helpers.until_lock_waits("ExclusiveLock")
        backing_up = asyncio.create_task(
            backup_mailbox(mailbox_id=other.id, run_id=None, storage=storage)
        )
        # Only shares are held, yet the new backup queues behind the waiting prune.
        await helpers.until_lock_waits("ShareLock")
        assert not pruning.done() and not backing_up.done()

    pruned = await pruning
    assert pruned.skipped is None
    recorded = await _last_prune()
    assert (recorded.status, recorded.reason) == ("succeeded", None)
    assert recorded.counts["snapshots"] == pruned.snapshots and "skipped" not in recorded.counts
    snapshot, counters = await backing_up
    assert (snapshot.status, snapshot.message_count, counters.messages_fetched) == (
        "committed",
        2,
        2,
    )


async def test_prune_ends_while_the_backups_waiting_behind_it_hold_every_pooled_connection(
    storage,
) -> None:
    async with mailbox_lock(uuid.uuid4()):  # a backup in progress
        pruning = asyncio.create_task(service.prune(storage, lock_wait=timedelta(seconds=60)))
        await helpers.until_lock_waits("ExclusiveLock")
        # As many backups as the pool has connections start behind it: the pool is empty.
        waiting = [
            asyncio.create_task(_backup_in_progress(uuid.uuid4()))
            for _ in range(POOL_SIZE + MAX_OVERFLOW)
        ]
        await helpers.until_lock_waits("ShareLock")
    try:
        assert (await asyncio.wait_for(pruning, 20)).skipped is None
        await asyncio.wait_for(asyncio.gather(*waiting), 20)
    finally:
        for task in waiting:
            task.cancel()


async def _backup_in_progress(mailbox_id: uuid.UUID) -> None:
    async with mailbox_lock(mailbox_id):
        pass


async def test_a_pack_a_backup_writes_while_prune_runs_is_kept_while_no_blob_is_in_it_yet(
    storage, monkeypatch
) -> None:
    # The backup starts once prune's deletions are over; all of its first batch turned out
    # stored meanwhile by another mailbox's backup, so its pack has a row and no blob yet.
    repack, pack = service._repack, storage.create()
    async with contextlib.AsyncExitStack() as backup:

        async def a_backup_starts_meanwhile(*args: object) -> None:
            await backup.enter_async_context(mailbox_lock(uuid.uuid4()))
            await asyncio.to_thread(pack.append, b"sealed blob that lost the race")
            await asyncio.to_thread(pack.sync)
            async with unit_of_work() as session:
                await repository.record_pack(session, pack.pack_id, pack.size)
            await repack(*args)

        monkeypatch.setattr(service, "_repack", a_backup_starts_meanwhile)
        assert (await asyncio.wait_for(service.prune(storage), 30)).skipped is None
        monkeypatch.undo()
        assert storage.path(pack.pack_id).exists()
        async with unit_of_work() as session:
            assert await session.get(BackupPack, pack.pack_id) is not None
    pack.close()


async def test_verify_does_not_report_blobs_prune_deleted_or_moved_since_it_read_them(
    seed, storage, corpus, monkeypatch
) -> None:
    department, mailbox, _, second = await helpers.mostly_expired(
        seed, storage, corpus(10, seed=62), deleted_uids="1:8"
    )
    kept = await helpers.state(mailbox.address)
    async with unit_of_work() as session:
        hashes = (
            await session.scalars(
                select(BackupMessage.blob_hash).where(BackupMessage.mailbox_id == mailbox.id)
            )
        ).all()
        read_before_prune = await repository.blobs(session, [bytes(h) for h in hashes])
    stale: list[StoredBlob] = sorted(read_before_prune.values(), key=lambda b: b.hash)
    calls = 0

    async def page_then_prune(*_: object) -> list[StoredBlob]:
        """Verify's first page is the mailbox's blobs as they were; before it reads them,
        prune expires 8 of them and moves the other 2 into a new pack, and a later prune
        deletes the old pack's file. There is no second page."""
        nonlocal calls
        calls += 1
        if calls > 1:
            return []
        later = helpers.past_pack_grace()
        first = await service.prune(storage, now=later)
        assert first.blobs >= 8 and first.repacked >= 1
        await service.prune(storage, now=helpers.past_pack_grace(later))
        for blob in stale:  # none reads back where the page says it is
            with pytest.raises(BlobDamaged):
                check_blob(storage, blob)
        return stale

    monkeypatch.setattr(repository, "blob_page", page_then_prune)
    async with unit_of_work() as session:
        run = VerifyRun(status=JobStatus.QUEUED.value, fraction=1.0)
        session.add(run)
    assert await service.execute_verify(run.id, storage) == "succeeded"
    async with unit_of_work() as session:
        done = await session.get(VerifyRun, run.id)
    assert done is not None
    assert (done.blobs_checked, done.blobs_damaged, done.damage) == (len(stale), 0, [])
    fresh = await seed.mailbox("pw-1234567890", department=department)
    job = await helpers.restore(mailbox.id, second.id, {"mode": "mailbox", "mailbox_id": fresh.id})
    assert job.status == "succeeded" and await helpers.state(fresh.address) == kept


async def _snapshots(mailbox_id) -> list[Snapshot]:
    async with unit_of_work() as session:
        query = select(Snapshot).where(Snapshot.mailbox_id == mailbox_id).order_by(Snapshot.seq)
        return list((await session.scalars(query)).all())


async def test_a_snapshot_a_queued_restore_will_read_outlives_its_retention_until_it_ends(
    seed, storage, corpus
) -> None:
    messages = corpus(6, seed=63)
    department, mailbox, first, second = await helpers.mostly_expired(
        seed, storage, messages, deleted_uids="1:4"
    )
    fresh = await seed.mailbox("pw-1234567890", department=department)
    job_id = await helpers.request_restore(
        mailbox.id, first.id, {"mode": "mailbox", "mailbox_id": fresh.id}
    )

    await service.prune(storage)
    assert [x.id for x in await _snapshots(mailbox.id)] == [first.id, second.id]
    assert await service.execute_restore(job_id, storage) == "succeeded"
    assert sum(len(found) for found in (await helpers.state(fresh.address)).values()) == 6

    assert (await service.prune(storage)).snapshots >= 1
    assert [x.id for x in await _snapshots(mailbox.id)] == [second.id]


async def test_a_snapshot_a_restore_is_being_requested_for_outlives_a_prune_before_it_commits(
    seed, storage, corpus
) -> None:
    department, mailbox, first, second = await helpers.mostly_expired(
        seed, storage, corpus(4, seed=68), deleted_uids="1:2"
    )
    fresh = await seed.mailbox("pw-1234567890", department=department)
    async with unit_of_work() as session:
        job = await service.request_restore(
            session, actor=helpers.OPERATOR, data=_restore_at(mailbox.id, first, fresh.id)
        )
        await service.prune(storage)  # the request not committed yet: no queued job to see
    assert job.snapshot_id == first.id
    assert [x.id for x in await _snapshots(mailbox.id)] == [first.id, second.id]
    assert await service.execute_restore(job.id, storage) == "succeeded"


async def test_a_restore_requested_while_prune_deletes_its_snapshot_waits_then_finds_none(
    seed, storage, corpus
) -> None:
    department, mailbox, first, _ = await helpers.mostly_expired(
        seed, storage, corpus(3, seed=69), deleted_uids="1"
    )
    fresh = await seed.mailbox("pw-1234567890", department=department)

    async def request() -> None:
        async with unit_of_work() as session:
            data = _restore_at(mailbox.id, first, fresh.id)
            await service.request_restore(session, actor=helpers.OPERATOR, data=data)

    async with _prune_deleting(first.id):
        requested = asyncio.create_task(request())
        await helpers.until_lock_waits("ShareLock", f"snapshot:{first.id}")
    with pytest.raises(Unprocessable) as refused:  # none left at or before that time
        await requested
    assert refused.value.field == "at"


@asynccontextmanager
async def _prune_deleting(snapshot_id: uuid.UUID) -> AsyncIterator[None]:
    """What prune's deletion of the snapshot does, its commit held back until the block ends."""
    async with unit_of_work() as session:
        assert await repository.unpinned(session, [snapshot_id]) == [snapshot_id]
        assert await repository.delete_snapshots(session, [snapshot_id]) == 1
        yield


def _restore_at(mailbox_id: uuid.UUID, snap: Snapshot, target: uuid.UUID) -> s.RestoreRequest:
    """A restore of the mailbox as it was at the snapshot, into the mailbox `target`."""
    return s.RestoreRequest(
        mailbox_id=mailbox_id,
        at=snap.completed_at,
        target=s.RestoreTarget(mode="mailbox", mailbox_id=target),
    )


async def test_a_snapshot_an_export_streams_outlives_its_retention_until_the_stream_ends(
    seed, storage, corpus, monkeypatch
) -> None:
    monkeypatch.setattr(service, "EXPORT_PAGE", 1)  # each message a page: a query each
    messages = corpus(6, seed=65)
    _, mailbox, first, second = await helpers.mostly_expired(
        seed, storage, messages, deleted_uids="1:4"
    )
    stream = service.export_mbox(first.id, None, storage, actor=helpers.OPERATOR)
    assert await anext(stream) == b""  # pinned and found
    head = await anext(stream)  # a message begun; the client reads the rest slowly

    await service.prune(storage)
    assert [x.id for x in await _snapshots(mailbox.id)] == [first.id, second.id]
    mbox = head + b"".join([chunk async for chunk in stream])
    assert sum(line.startswith(b"From MAILER-DAEMON ") for line in mbox.split(b"\n")) == 6

    assert (await service.prune(storage)).snapshots == 1
    assert [x.id for x in await _snapshots(mailbox.id)] == [second.id]


async def test_an_export_asked_for_while_prune_deletes_its_snapshot_waits_then_finds_it_gone(
    seed, storage, corpus
) -> None:
    _, _, first, _ = await helpers.mostly_expired(
        seed, storage, corpus(3, seed=66), deleted_uids="1"
    )
    async with _prune_deleting(first.id):
        export = asyncio.create_task(
            anext(service.export_mbox(first.id, None, storage, actor=helpers.OPERATOR))
        )
        await helpers.until_lock_waits("ShareLock", f"snapshot:{first.id}")
    with pytest.raises(NotFound):
        await export


async def test_an_export_cancelled_mid_stream_unpins_its_snapshot(
    seed, storage, corpus, monkeypatch
) -> None:
    monkeypatch.setattr(service, "EXPORT_PAGE", 1)
    _, _, first, _ = await helpers.mostly_expired(
        seed, storage, corpus(4, seed=67), deleted_uids="1"
    )
    reading = asyncio.Event()

    async def slow_read(storage, blob):  # type: ignore[no-untyped-def]
        reading.set()
        await asyncio.to_thread(time.sleep, 0.2)  # a frame read in a worker thread
        yield b"x"

    monkeypatch.setattr(service, "blob_chunks_in_thread", slow_read)

    async def consume() -> None:
        async for _ in service.export_mbox(first.id, None, storage, actor=helpers.OPERATOR):
            pass

    await get_engine().dispose()  # no idle connection but the one the export will take
    backend = await _backend_pid()
    async with anyio.create_task_group() as group:  # as Starlette streams a response
        group.start_soon(consume)
        await reading.wait()
        group.cancel_scope.cancel()  # the client went away
    async with unit_of_work() as session:
        pins = await session.execute(helpers.LOCK_REQUESTS, {"key": f"snapshot:{first.id}"})
        assert pins.all() == []
    # It was unlocked, not dropped by the pool for a release cut short: it serves on.
    assert await _backend_pid() == backend


async def _backend_pid() -> int:
    async with unit_of_work() as session:
        return int(await session.scalar(text("SELECT pg_backend_pid()")))


async def test_a_prune_that_fails_is_recorded_with_the_reason(storage) -> None:
    class Unlistable(LocalPackStorage):
        def written_before(self, when):  # type: ignore[no-untyped-def]
            raise OSError("the backup volume is gone")

    assert isinstance(storage, LocalPackStorage)
    with pytest.raises(OSError):
        await service.prune(Unlistable(storage.root))
    recorded = await _last_prune()
    assert (recorded.status, recorded.reason) == ("failed", "OSError: the backup volume is gone")


async def test_a_prune_while_another_runs_is_skipped_saying_so(storage) -> None:
    """A second prune between the first's deletions and its repack would take the pack the
    first is writing, empty of blobs yet, for one to delete."""
    async with get_engine().connect() as first:
        assert await repository.try_lock_prune(first)
        try:
            result = await service.prune(storage)
        finally:
            await repository.unlock_prune(first)
    assert result.skipped == "another prune is running"
    assert ((await _last_prune()).status, (await _last_prune()).reason) == (
        "skipped",
        "another prune is running",
    )


async def test_a_prune_stopped_before_a_mailboxs_catalog_rows_go_keeps_its_snapshots(
    seed, storage, corpus, monkeypatch
) -> None:
    """Its expired snapshots and the rows only they needed go in one transaction: a prune
    stopped in between would leave rows no later prune of the mailbox looks at."""
    department = await seed.department()
    await seed.backup_policy(department)  # keeps the last snapshot only
    mailbox, first = await helpers.backed_up(
        seed, storage, {"INBOX": corpus(2, seed=118)}, department=department
    )
    await helpers.delete_messages(mailbox.address, "INBOX")
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    reached: list[uuid.UUID] = []
    delete_rows = repository.delete_unreferenced_rows

    async def stopped(session, mailbox_id):  # type: ignore[no-untyped-def]
        if mailbox_id != mailbox.id:  # other tests' mailboxes go as ever
            return await delete_rows(session, mailbox_id)
        reached.append(mailbox_id)
        raise ConnectionError("the database went away")

    monkeypatch.setattr(repository, "delete_unreferenced_rows", stopped)
    with pytest.raises(ConnectionError):
        await service.prune(storage)
    assert reached == [mailbox.id]
    async with unit_of_work() as session:
        assert await session.get(Snapshot, first.id) is not None
