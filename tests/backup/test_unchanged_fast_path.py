"""A run over many mailboxes snapshots the unchanged ones together, exactly as the full path
would: no body fetched, no catalog row added, point-in-time restores unchanged."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from services.backup import repository, service
from services.backup.engine import backup as engine
from services.backup.engine.backup import (
    backup_mailboxes,
    backup_unchanged,
    mailbox_lock,
)
from shared.db import unit_of_work
from shared.models.backup import (
    BackupRun,
    BackupScope,
    JobStatus,
    Snapshot,
    SnapshotStatus,
    backup_lock_key,
)
from tests.backup import helpers

pytestmark = pytest.mark.usefixtures("mail_stack")


async def three_backed_up_mailboxes(seed, storage, corpus):
    department = await seed.department()
    mailboxes = [await seed.mailbox("pw-1234567890", department=department) for _ in range(3)]
    for index, mailbox in enumerate(mailboxes):
        await helpers.append(mailbox.address, "INBOX", corpus(5, seed=30 + index))
        await helpers.append(mailbox.address, "Projekte/Überblick", corpus(3, seed=40 + index))
    ids = [m.id for m in mailboxes]
    first = await backup_mailboxes(mailbox_ids=ids, run_id=None, storage=storage)
    assert all(o.error is None for o in first) and len(first) == 3
    return department, mailboxes


def full_path_calls(monkeypatch) -> list:  # type: ignore[type-arg]
    """The mailboxes `backup_mailbox` (the full path) is called for from now on: an
    unchanged one must not be (the fast path's failure falls back to it, quietly)."""
    called = []
    full = engine.backup_mailbox

    async def watched(*, mailbox_id, **rest):  # type: ignore[no-untyped-def]
        called.append(mailbox_id)
        return await full(mailbox_id=mailbox_id, **rest)

    monkeypatch.setattr(engine, "backup_mailbox", watched)
    return called


async def test_unchanged_mailboxes_get_new_snapshots_together_without_bodies_or_rows(
    seed, storage, corpus, monkeypatch
) -> None:
    _, mailboxes = await three_backed_up_mailboxes(seed, storage, corpus)
    ids = [m.id for m in mailboxes]
    rows = await helpers.catalog_rows(*ids)
    full_path = full_path_calls(monkeypatch)

    fast = await backup_unchanged(mailbox_ids=ids, run_id=None)
    assert set(fast) == set(ids)
    assert {snap.seq for snap in fast.values()} == {2}
    assert all(snap.status == SnapshotStatus.COMMITTED.value for snap in fast.values())
    assert {snap.message_count for snap in fast.values()} == {8}

    again = await backup_mailboxes(mailbox_ids=ids, run_id=None, storage=storage)
    assert full_path == [], "every mailbox is unchanged: none takes the full path"
    assert sorted(o.snapshot.seq for o in again if o.snapshot) == [3, 3, 3]
    assert sum(o.counters.messages_fetched + o.counters.bytes_stored for o in again) == 0
    assert await helpers.catalog_rows(*ids) == rows
    for outcome in again:
        assert outcome.snapshot is not None
        server = await helpers.state(
            next(m.address for m in mailboxes if m.id == outcome.mailbox_id)
        )
        assert await helpers.snapshot_state(outcome.snapshot) == helpers.content(server)


async def test_restore_at_a_fast_path_snapshot_gives_exactly_its_messages(
    seed, storage, corpus
) -> None:
    department, mailboxes = await three_backed_up_mailboxes(seed, storage, corpus)
    mailbox = mailboxes[0]
    before = await helpers.state(mailbox.address)
    fast = await backup_unchanged(mailbox_ids=[m.id for m in mailboxes], run_id=None)
    at = fast[mailbox.id].completed_at

    await helpers.delete_messages(mailbox.address, "INBOX", uids="1:2")
    await helpers.store_flags(mailbox.address, "Projekte/Überblick", "1", "+FLAGS (\\Answered)")
    await helpers.append(mailbox.address, "INBOX", corpus(2, seed=77))
    later = await backup_mailboxes(
        mailbox_ids=[m.id for m in mailboxes], run_id=None, storage=storage
    )
    assert {o.mailbox_id: o.counters.messages_fetched for o in later}[mailbox.id] == 2

    fresh = await seed.mailbox("pw-1234567890", department=department)
    job = await helpers.restore(
        mailbox.id, target={"mode": "mailbox", "mailbox_id": fresh.id}, at=at
    )
    assert (job.snapshot_id, job.status) == (fast[mailbox.id].id, "succeeded")
    assert await helpers.state(fresh.address) == before


async def test_a_mailbox_changed_between_runs_gets_its_changes_and_the_others_the_fast_path(
    seed, storage, corpus
) -> None:
    _, mailboxes = await three_backed_up_mailboxes(seed, storage, corpus)
    changed, others = mailboxes[1], [mailboxes[0], mailboxes[2]]
    await helpers.append(changed.address, "INBOX", corpus(4, seed=99))
    await helpers.delete_messages(changed.address, "Projekte/Überblick", uids="2")
    await helpers.store_flags(changed.address, "INBOX", "1", "+FLAGS ($Done)")
    ids = [m.id for m in mailboxes]

    assert set(await backup_unchanged(mailbox_ids=ids, run_id=None)) == {m.id for m in others}
    outcomes = {
        o.mailbox_id: o
        for o in await backup_mailboxes(mailbox_ids=ids, run_id=None, storage=storage)
    }
    assert outcomes[changed.id].counters.messages_fetched == 4
    assert all(outcomes[m.id].counters.messages_fetched == 0 for m in others)
    snap = outcomes[changed.id].snapshot
    assert snap is not None and snap.message_count == 8 + 4 - 1
    server = await helpers.state(changed.address)
    assert await helpers.snapshot_state(snap) == helpers.content(server)


async def test_a_mailbox_locked_by_a_run_in_progress_is_left_to_the_full_path(
    seed, storage, corpus
) -> None:
    _, mailboxes = await three_backed_up_mailboxes(seed, storage, corpus)
    busy = mailboxes[0]
    ids = [m.id for m in mailboxes]
    async with mailbox_lock(busy.id):
        fast = await backup_unchanged(mailbox_ids=ids, run_id=None)
        assert set(fast) == {m.id for m in mailboxes[1:]}
        # The full path waits for the lock rather than snapshotting beside the holder.
        waiting = asyncio.create_task(
            backup_mailboxes(mailbox_ids=[busy.id], run_id=None, storage=storage)
        )
        await helpers.until_lock_waits("ExclusiveLock", backup_lock_key(busy.id))
        assert not waiting.done()
    (outcome,) = await waiting
    assert outcome.error is None and outcome.snapshot is not None
    assert outcome.snapshot.seq == 2


async def test_a_mailbox_with_an_interrupted_snapshot_is_left_to_the_full_path(
    seed, storage, corpus
) -> None:
    _, mailboxes = await three_backed_up_mailboxes(seed, storage, corpus)
    interrupted = mailboxes[2]
    async with unit_of_work() as session:
        session.add(Snapshot(mailbox_id=interrupted.id, seq=2, status=SnapshotStatus.PENDING.value))
    ids = [m.id for m in mailboxes]
    assert set(await backup_unchanged(mailbox_ids=ids, run_id=None)) == {
        m.id for m in mailboxes[:2]
    }
    outcomes = await backup_mailboxes(mailbox_ids=ids, run_id=None, storage=storage)
    by_id = {o.mailbox_id: o.snapshot for o in outcomes}
    assert by_id[interrupted.id] is not None and by_id[interrupted.id].seq == 2
    assert by_id[interrupted.id].message_count == 8


async def test_a_department_run_reports_every_mailbox_of_the_fast_path(
    seed, storage, corpus, monkeypatch
) -> None:
    department, mailboxes = await three_backed_up_mailboxes(seed, storage, corpus)
    full_path = full_path_calls(monkeypatch)
    async with unit_of_work() as session:
        run = BackupRun(
            status=JobStatus.QUEUED.value,
            scope=BackupScope.DEPARTMENT.value,
            department_id=department.id,
        )
        session.add(run)
        await session.flush()
        run_id = run.id
    assert await service.execute_backup_run(run_id, storage) == "succeeded"
    async with unit_of_work() as session:
        row = await service.get_run(session, run_id=run_id)
        assert (row.mailboxes_total, row.mailboxes_done, row.mailboxes_failed) == (3, 3, 0)
        assert row.messages_fetched == 0
        snaps = (await session.scalars(select(Snapshot).where(Snapshot.run_id == run_id))).all()
        assert sorted(x.mailbox_id for x in snaps) == sorted(m.id for m in mailboxes)
    assert full_path == []


async def test_the_fast_path_commits_many_mailboxes_a_chunk_at_a_time(
    seed, storage, corpus, monkeypatch
) -> None:
    _, mailboxes = await three_backed_up_mailboxes(seed, storage, corpus)
    monkeypatch.setattr(engine, "FAST_PATH_CHUNK", 2)
    chunks: list[int] = []
    try_lock_all = repository.try_lock_all

    async def watched(session, keys):  # type: ignore[no-untyped-def]
        chunks.append(len(keys))
        return await try_lock_all(session, keys)

    monkeypatch.setattr(repository, "try_lock_all", watched)
    fast = await backup_unchanged(mailbox_ids=[m.id for m in mailboxes], run_id=None)
    assert chunks == [2, 1], "a transaction (and its locks) per chunk"
    assert set(fast) == {m.id for m in mailboxes}
    assert {snap.seq for snap in fast.values()} == {2}
