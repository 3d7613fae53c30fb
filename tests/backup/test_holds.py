"""Holds: a held snapshot outlives its retention until an admin releases it; placing one
needs an operator, releasing one an admin, and both are in the audit log."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select

from services.backup import repository, service
from services.backup import schemas as s
from services.backup.engine.backup import backup_mailbox
from shared.auth import Principal
from shared.db import unit_of_work
from shared.models import AuditEvent, Role
from tests.backup import helpers
from tests.backup.helpers import auth, problem_field

pytestmark = pytest.mark.usefixtures("mail_stack")


async def test_a_held_snapshot_outlives_its_retention_until_an_admin_releases_it(
    api,
    api_key_for,
    seed,
    storage,
    corpus,
) -> None:
    _, mailbox, _, second = await helpers.mostly_expired(
        seed, storage, corpus(4, seed=64), deleted_uids="1:2"
    )
    operator, admin = await api_key_for("operator"), await api_key_for("admin")
    listed = await api.get(f"/v1/snapshots?mailbox_id={mailbox.id}", headers=auth(operator))
    first = next(x for x in listed.json() if x["id"] != str(second.id))
    assert first["held_at"] is None

    held = await api.put(
        f"/v1/snapshots/{first['id']}/hold",
        json={"reason": "  legal request 2026-117 "},
        headers=auth(operator),
    )
    assert held.status_code == 200
    assert (held.json()["hold_reason"], held.json()["held_at"] is not None) == (
        "legal request 2026-117",
        True,
    )
    again = await api.put(
        f"/v1/snapshots/{first['id']}/hold",
        json={"reason": "legal request 2026-117, extended"},
        headers=auth(operator),
    )
    assert again.json()["held_at"] == held.json()["held_at"], "held since the first time"
    only_held = await api.get(
        f"/v1/snapshots?mailbox_id={mailbox.id}&held=true", headers=auth(operator)
    )
    assert [x["id"] for x in only_held.json()] == [first["id"]]

    await service.prune(storage)
    kept = await api.get(f"/v1/snapshots?mailbox_id={mailbox.id}", headers=auth(operator))
    assert {x["id"] for x in kept.json()} == {first["id"], str(second.id)}

    refused = await api.delete(f"/v1/snapshots/{first['id']}/hold", headers=auth(operator))
    assert refused.status_code == 403
    released = await api.delete(f"/v1/snapshots/{first['id']}/hold", headers=auth(admin))
    assert released.status_code == 204
    await service.prune(storage)
    left = await api.get(f"/v1/snapshots?mailbox_id={mailbox.id}", headers=auth(operator))
    assert [x["id"] for x in left.json()] == [str(second.id)]

    async with unit_of_work() as session:
        events = await session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.target_id == first["id"])
            .order_by(AuditEvent.id)
        )
        assert list(events) == ["snapshot.hold", "snapshot.hold", "snapshot.release"]


async def test_a_hold_needs_an_operator_a_known_snapshot_and_a_reason(
    api,
    api_key_for,
    seed,
    storage,
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    url = f"/v1/snapshots/{snapshot.id}/hold"
    support = await api_key_for("support")
    operator = await api_key_for("operator")

    denied = await api.put(url, json={"reason": "x"}, headers=auth(support))
    assert denied.status_code == 403
    blank = await api.put(url, json={"reason": "   "}, headers=auth(operator))
    assert (blank.status_code, problem_field(blank)) == (422, "reason")
    unknown = await api.put(
        f"/v1/snapshots/{uuid.uuid4()}/hold", json={"reason": "x"}, headers=auth(operator)
    )
    assert (unknown.status_code, problem_field(unknown)) == (404, "snapshot_id")
    never_held = await api.delete(url, headers=auth(await api_key_for("admin")))
    assert never_held.status_code == 204


async def test_a_hold_committed_while_prune_deletes_the_snapshot_keeps_it(seed, storage) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    operator = Principal(id=uuid.uuid4(), name="legal", role=Role.OPERATOR)

    async with unit_of_work() as holding:  # the hold locks the row before prune's delete
        await service.hold_snapshot(
            holding, actor=operator, snapshot_id=snapshot.id, data=s.HoldIn(reason="case 9")
        )

        async def prune_deletes_it() -> int:
            async with unit_of_work() as session:
                return await repository.delete_snapshots(session, [snapshot.id])

        deleting = asyncio.create_task(prune_deletes_it())
        await asyncio.sleep(0.3)
        assert not deleting.done(), "the delete waits for the hold's transaction"
    assert await deleting == 0
    async with unit_of_work() as session:
        kept = await repository.snapshot(session, snapshot.id)
    assert kept is not None and kept.hold_reason == "case 9"
