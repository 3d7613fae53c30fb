"""A restore meets the target mailbox's quota: refused up front when it can never fit, and
a clear failure, losing nothing, when the mailbox lacks the room today."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from services.backup.engine.backup import backup_mailbox
from shared.db import unit_of_work
from shared.models import Department, Mailbox
from shared.models.backup import Snapshot
from tests.backup import helpers
from tests.conftest import service_client

pytestmark = pytest.mark.usefixtures("mail_stack")


def filler(size: int) -> bytes:
    header = b"From: a@example.test\r\nSubject: filler\r\n\r\n"
    return header + b"x" * (size - len(header) - 2) + b"\r\n"


@dataclass
class BackedUp:
    """A mailbox of eight messages, backed up: its department, snapshot and size."""

    department: Department
    source: Mailbox
    snapshot: Snapshot
    needed: int


@pytest.fixture
async def backed_up(seed, storage, corpus) -> BackedUp:
    department = await seed.department()
    source = await seed.mailbox("pw-1234567890", department=department)
    messages = corpus(8)
    await helpers.append(source.address, "INBOX", messages)
    snapshot, _ = await backup_mailbox(mailbox_id=source.id, run_id=None, storage=storage)
    return BackedUp(department, source, snapshot, sum(len(data) for data, _, _ in messages))


async def test_a_restore_larger_than_the_target_quota_is_refused_up_front(
    api_key_for, seed, backed_up
) -> None:
    source, snapshot, needed = backed_up.source, backed_up.snapshot, backed_up.needed
    small = await seed.mailbox(
        "pw-1234567890", department=backed_up.department, quota_bytes=needed - 1
    )
    key = await api_key_for("operator")

    async with service_client("backup") as api:
        refused = await api.post(
            "/v1/restores",
            json={
                "mailbox_id": str(source.id),
                "snapshot_id": str(snapshot.id),
                "target": {"mode": "mailbox", "mailbox_id": str(small.id)},
            },
            headers={"Authorization": f"Bearer {key}"},
        )

    assert refused.status_code == 422
    problem = refused.json()
    assert problem["errors"][0]["field"] == "target.mailbox_id"
    assert f"needs {needed} bytes" in problem["detail"]
    assert f"quota of {needed - 1} bytes" in problem["detail"]


async def test_a_restore_into_a_mailbox_too_full_for_it_fails_saying_so_then_succeeds_with_room(
    seed, backed_up
) -> None:
    source, snapshot, needed = backed_up.source, backed_up.snapshot, backed_up.needed
    target = await seed.mailbox(
        "pw-1234567890", department=backed_up.department, quota_bytes=needed + 1000
    )
    # What the mailbox holds already leaves room for about half of the restore.
    await helpers.append(target.address, "INBOX", [(filler(needed // 2), [], datetime.now(UTC))])
    before = await helpers.state(target.address)

    full = await helpers.restore(
        source.id, snapshot.id, {"mode": "mailbox", "mailbox_id": target.id}
    )

    assert full.status == "failed"
    assert "the target mailbox is over its quota" in (full.reason or "")
    assert "raise the mailbox's quota" in (full.reason or "")
    assert (full.total, full.done, full.restored) == (8, 0, 0)
    assert await helpers.state(target.address) == before

    async with unit_of_work() as session:
        await session.execute(
            update(Mailbox).where(Mailbox.id == target.id).values(quota_bytes=2 * needed)
        )
    again = await helpers.restore(
        source.id, snapshot.id, {"mode": "mailbox", "mailbox_id": target.id}
    )

    assert (again.status, again.restored) == ("succeeded", 8)
    restored = await helpers.state(target.address)
    assert len(restored["INBOX"]) == 9
    assert set(restored["INBOX"]) >= set((await helpers.state(source.address))["INBOX"])
