"""Retention keeps the last N and the newest per day/week/month; prune frees unused data."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services.backup import repository, service
from services.backup.engine.backup import backup_mailbox
from services.backup.engine.storage import LocalPackStorage
from shared.db import unit_of_work
from shared.models import Mailbox, MailboxStatus
from shared.models.backup import (
    BackupBlob,
    BackupMessage,
    BackupPack,
    BackupRun,
    BackupScope,
    Snapshot,
)
from tests.backup import helpers


def snap(when: datetime) -> Snapshot:
    return Snapshot(id=uuid.uuid4(), completed_at=when)


def test_policy_keeps_last_n_and_newest_of_each_day_week_and_month() -> None:
    now = datetime(2024, 6, 30, 23, 0, tzinfo=UTC)
    hourly = [snap(now - timedelta(hours=h)) for h in range(24 * 70)]
    policy = service.Policy(
        3600, keep_last=5, keep_daily=3, keep_weekly=2, keep_monthly=3, is_default=False
    )
    kept = service.retained(hourly, policy)
    kept_times = sorted((s.completed_at for s in hourly if s.id in kept), reverse=True)
    assert kept_times[:5] == [now - timedelta(hours=h) for h in range(5)]
    days = {t.date() for t in kept_times}
    assert {now.date() - timedelta(days=d) for d in range(3)} <= days
    assert len(kept) == 5 + 2 + 1 + 2  # 2 more days, 1 more week (Sunday's is a day), 2 months


@pytest.mark.usefixtures("mail_stack")
async def test_prune_removes_expired_snapshots_and_then_unreferenced_blobs(
    seed, storage, corpus
) -> None:
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    await seed.backup_policy(department)
    only_old = corpus(3, seed=31)
    await helpers.append(mailbox.address, "INBOX", only_old)
    first, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.delete_messages(mailbox.address, "INBOX")
    await helpers.append(mailbox.address, "INBOX", corpus(2, seed=32))
    second, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    result = await service.prune()
    assert result.snapshots >= 1 and result.blobs >= 3
    async with unit_of_work() as session:
        left = (
            await session.scalars(select(Snapshot.id).where(Snapshot.mailbox_id == mailbox.id))
        ).all()
        old_blobs = await session.scalar(
            select(func.count())
            .select_from(BackupBlob)
            .where(BackupBlob.hash.in_([hashlib.sha256(m[0]).digest() for m in only_old]))
        )
    assert list(left) == [second.id] and old_blobs == 0
    assert first.id not in left


@pytest.mark.usefixtures("mail_stack")
async def test_a_purged_mailboxs_snapshots_are_kept_by_its_departments_policy(
    seed, storage, corpus
) -> None:
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    await seed.backup_policy(department, keep_last=3)
    await helpers.append(mailbox.address, "INBOX", corpus(1, seed=94))
    for _ in range(4):
        await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    async with unit_of_work() as session:
        purged = await session.get(Mailbox, mailbox.id)
        assert purged is not None
        purged.status = MailboxStatus.PURGED.value

    await service.prune(storage)
    async with unit_of_work() as session:
        left = await session.scalar(
            select(func.count()).select_from(Snapshot).where(Snapshot.mailbox_id == mailbox.id)
        )
    assert left == 3  # not what the default policy keeps (all four)


@pytest.mark.usefixtures("mail_stack")
async def test_prune_expires_snapshots_beyond_one_transactions_chunk(
    seed, storage, corpus, monkeypatch
) -> None:
    monkeypatch.setattr(service, "EXPIRE_CHUNK", 2)
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    await seed.backup_policy(department)
    await helpers.append(mailbox.address, "INBOX", corpus(2, seed=33))
    for _ in range(5):
        last, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    assert (await service.prune(storage)).snapshots >= 4
    async with unit_of_work() as session:
        left = await session.scalars(select(Snapshot.id).where(Snapshot.mailbox_id == mailbox.id))
        assert list(left) == [last.id]


@pytest.mark.usefixtures("mail_stack")
async def test_the_schedule_backs_up_each_departments_due_mailboxes_in_one_run(
    seed, storage
) -> None:
    hourly = await seed.department()
    daily = await seed.department()
    await seed.backup_policy(hourly, keep_last=5)
    fresh, due_1, due_2 = [await seed.mailbox("pw-1234567890", department=hourly) for _ in "abc"]
    never = await seed.mailbox("pw-1234567890", department=daily)
    await backup_mailbox(mailbox_id=fresh.id, run_id=None, storage=storage)
    ours = {hourly.id, daily.id}

    assert await service.schedule_due_backups() >= 2
    await helpers.set_aside_other_scheduled_runs(ours)
    runs = {r.department_id: r for r in await helpers.scheduled_runs(ours)}
    assert set(runs) == ours and all(r.status == "queued" for r in runs.values())
    await service.schedule_due_backups()  # open runs: nothing new for these departments
    assert len(await helpers.scheduled_runs(ours)) == 2

    for run in runs.values():
        assert await service.execute_backup_run(run.id, storage) == "succeeded"
    assert await _backed_up_by(runs[hourly.id].id) == {due_1.id, due_2.id}  # not `fresh`
    assert await _backed_up_by(runs[daily.id].id) == {never.id}
    await service.schedule_due_backups()
    await helpers.set_aside_other_scheduled_runs(ours)
    assert len(await helpers.scheduled_runs(ours)) == 2, "nothing of theirs is due right after"


@pytest.mark.usefixtures("mail_stack")
async def test_an_hourly_departments_backups_come_due_an_hour_after_their_run_began(
    seed, storage
) -> None:
    hourly = await seed.department()
    await seed.backup_policy(hourly, keep_last=5)
    mailboxes = {(await seed.mailbox("pw-1234567890", department=hourly)).id for _ in "ab"}
    async with unit_of_work() as session:
        run = await service.create_run(
            session, scope=BackupScope.DEPARTMENT, department_id=hourly.id
        )
    outcome = await service.execute_backup_run(run.id, storage)
    async with unit_of_work() as session:
        assert outcome == "succeeded", (await session.get(BackupRun, run.id)).reason
        began = (await session.get(BackupRun, run.id)).started_at

        async def due(after: timedelta) -> set[uuid.UUID]:
            found = await service._due_mailboxes(session, began + after, hourly.id)
            return set(found.get(hourly.id, []))

        # A tick of the schedule from half a tick before the hour on takes both, together,
        # however long the run took; one a whole tick before it neither (a scheduled run
        # counts from its tick: the tick 55 minutes after it must not take it, whatever
        # the cron's jitter).
        assert await due(timedelta(minutes=60) - service.SCHEDULE_TICK / 2) == mailboxes
        assert await due(timedelta(minutes=60) - service.SCHEDULE_TICK) == set()


@pytest.mark.usefixtures("mail_stack")
async def test_a_scheduled_run_that_waited_for_a_worker_does_not_push_the_next_one_back(
    seed, storage
) -> None:
    hourly = await seed.department()
    await seed.backup_policy(hourly, keep_last=5)
    mailbox = await seed.mailbox("pw-1234567890", department=hourly)
    await service.schedule_due_backups()
    await helpers.set_aside_other_scheduled_runs({hourly.id})
    (run,) = await helpers.scheduled_runs({hourly.id})
    async with unit_of_work() as session:  # every worker was busy for ten minutes
        waited = await session.get(BackupRun, run.id)
        assert waited is not None
        waited.created_at -= timedelta(minutes=10)
        ticked = waited.created_at
    assert await service.execute_backup_run(run.id, storage) == "succeeded"
    async with unit_of_work() as session:
        found = await service._due_mailboxes(session, ticked + timedelta(minutes=60), hourly.id)
    assert found == {hourly.id: [mailbox.id]}


async def _backed_up_by(run_id: uuid.UUID) -> set[uuid.UUID]:
    async with unit_of_work() as session:
        run = await session.get(BackupRun, run_id)
        assert run is not None and run.mailboxes_failed == 0
        snapshots = await session.scalars(
            select(Snapshot.mailbox_id).where(Snapshot.run_id == run_id)
        )
        mailboxes = set(snapshots)
        assert run.mailboxes_done == len(mailboxes)
        return mailboxes


async def _pack_of(mailbox_id: uuid.UUID) -> uuid.UUID:
    return (await helpers.message_blob(mailbox_id)).pack_id


@pytest.mark.usefixtures("mail_stack")
async def test_prune_rewrites_a_pack_mostly_of_expired_mail_and_what_it_keeps_still_restores(
    seed, storage, corpus
) -> None:
    assert isinstance(storage, LocalPackStorage)
    department, mailbox, _, second = await helpers.mostly_expired(
        seed, storage, corpus(10, seed=45), deleted_uids="1:8"
    )
    kept = await helpers.state(mailbox.address)
    old_pack = await _pack_of(mailbox.id)
    old_file = storage.path(old_pack)

    later = helpers.past_pack_grace()
    result = await service.prune(storage, now=later)

    assert result.repacked >= 1 and result.freed_bytes > 0
    new_pack = await _pack_of(mailbox.id)
    assert new_pack != old_pack
    assert old_file.exists(), "a retired pack's file outlives its retirement by the grace"
    fresh = await seed.mailbox("pw-1234567890", department=department)
    job = await helpers.restore(mailbox.id, second.id, {"mode": "mailbox", "mailbox_id": fresh.id})
    assert job.status == "succeeded" and await helpers.state(fresh.address) == kept

    await service.prune(storage, now=helpers.past_pack_grace(later))
    assert not old_file.exists()
    async with unit_of_work() as session:
        assert await session.get(BackupPack, old_pack) is None
    again = await seed.mailbox("pw-1234567890", department=department)
    job = await helpers.restore(mailbox.id, second.id, {"mode": "mailbox", "mailbox_id": again.id})
    assert job.status == "succeeded" and await helpers.state(again.address) == kept


@pytest.mark.usefixtures("mail_stack")
@pytest.mark.parametrize("damage", [helpers.truncated, helpers.corrupted])
async def test_prune_leaves_in_place_a_pack_that_does_not_read_back_whole(
    seed, storage, corpus, damage
) -> None:
    """Cut short, or one byte flipped: the damage stays where verify reports it, and is not
    copied into a new pack as if it were good while the old one is deleted."""
    _, mailbox, _, _ = await helpers.mostly_expired(
        seed, storage, corpus(10, seed=46), deleted_uids="2:10"
    )
    async with unit_of_work() as session:  # the one message still in the mailbox
        blob = await session.scalar(
            select(BackupBlob)
            .join(BackupMessage, BackupMessage.blob_hash == BackupBlob.hash)
            .where(BackupMessage.mailbox_id == mailbox.id, BackupMessage.until_seq.is_(None))
        )
    assert blob is not None
    with damage(storage, blob):  # on the one message still needed
        await service.prune(storage, now=helpers.past_pack_grace())

    async with unit_of_work() as session:
        pack = await session.get(BackupPack, blob.pack_id)
        assert pack is not None and pack.retired_at is None
    assert (await helpers.message_blob(mailbox.id)).pack_id == blob.pack_id


@pytest.mark.usefixtures("mail_stack")
async def test_prune_deletes_a_pack_file_no_catalog_row_names_once_it_is_old(storage) -> None:
    assert isinstance(storage, LocalPackStorage)
    writer = storage.create()  # as a backup killed before its first batch commit leaves it
    writer.append(b"sealed bytes no row names")
    writer.sync()
    writer.close()
    left = storage.path(writer.pack_id)

    await service.prune(storage)
    assert left.exists(), "a young file may be a backup's pack before its first row"
    later = helpers.past_pack_grace()
    assert (await service.prune(storage, now=later)).orphans >= 1
    assert not left.exists()


async def test_prune_looks_up_more_pack_files_than_one_statement_takes_parameters(
    storage,
) -> None:
    # A 2 TB store has over 32,767 packs of 64 MB: more than PostgreSQL takes parameters.
    writer = storage.create()
    writer.append(b"sealed bytes")
    writer.sync()
    writer.close()
    async with unit_of_work() as session:
        await repository.record_pack(session, writer.pack_id, writer.size)
    files = [writer.pack_id, *(uuid.uuid4() for _ in range(40_000))]
    async with unit_of_work() as session:
        unknown = await repository.unknown_packs(session, files)
        assert unknown == files[1:]
        await repository.delete_packs(session, files)
        assert await session.get(BackupPack, writer.pack_id) is None
