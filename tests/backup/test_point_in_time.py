"""Restoring `at` a point in time gives exactly the snapshot of that time."""

from __future__ import annotations

import pytest

from services.backup import repository, service
from services.backup.engine.backup import backup_mailbox
from shared.db import unit_of_work
from tests.backup import helpers

pytestmark = pytest.mark.usefixtures("mail_stack")


async def test_restore_at_snapshot_one_gives_exactly_its_messages(seed, storage, corpus) -> None:
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    await helpers.append(mailbox.address, "INBOX", corpus(10))
    await helpers.append(mailbox.address, "Kunden/Zürich", corpus(4, seed=8))
    at_one = await helpers.state(mailbox.address)
    first, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    await helpers.delete_messages(mailbox.address, "INBOX", uids="1:3")
    await helpers.store_flags(mailbox.address, "Kunden/Zürich", "1", "+FLAGS (\\Answered)")
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await helpers.append(mailbox.address, "INBOX", corpus(5, seed=21))
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    fresh = await seed.mailbox("pw-1234567890", department=department)
    job = await helpers.restore(
        mailbox.id, target={"mode": "mailbox", "mailbox_id": fresh.id}, at=first.completed_at
    )
    assert (job.snapshot_id, job.status) == (first.id, "succeeded")
    assert await helpers.state(fresh.address) == at_one


async def test_a_restore_of_a_snapshot_pruned_meanwhile_fails_saying_so(
    seed, storage, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(2))
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    job_id = await helpers.request_restore(
        mailbox.id, snapshot.id, {"mode": "folder", "folder": "Zurück"}
    )
    async with unit_of_work() as session:
        await repository.delete_snapshots(session, [snapshot.id])

    assert await service.execute_restore(job_id, storage) == "failed"
    async with unit_of_work() as session:
        ended = await service.get_restore(session, restore_id=job_id)
    assert ended.status == "failed"
    assert f"snapshot {snapshot.id} no longer exists" in (ended.reason or "")
