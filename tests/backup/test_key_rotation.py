"""A new backup key takes over while older blobs stay readable; prune re-seals them under it,
after which the old key can go."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import SecretStr
from sqlalchemy import or_, select

from services.backup import service
from services.backup.engine.backup import backup_mailbox
from services.backup.engine.storage import LocalPackStorage
from shared.db import unit_of_work
from shared.models.backup import BackupBlob, BackupMessage, BackupRun, BackupScope
from tests.backup import helpers

pytestmark = pytest.mark.usefixtures("mail_stack")


KeyChange = Callable[..., None]


@pytest.fixture
async def use_key(monkeypatch, settings, storage) -> AsyncIterator[KeyChange]:
    """`use_key(key_id, previous={id: secret})`: make `key_id` the current backup key (its
    secret named after it), keeping `previous` for reading. Key ids of these tests' own, so
    that no other test's blob is shared with their mail. Afterwards the suite's key is made
    current again and everything these tests sealed is re-sealed under it, for the tests
    that verify the whole store."""
    suite_key, used = settings.backup_key_id, set()

    def change(key_id: str, *, previous: dict[str, str] | None = None) -> None:
        used.add(key_id)
        monkeypatch.setattr(settings, "backup_key_id", key_id)
        monkeypatch.setattr(settings, "backup_key", SecretStr(f"secret of {key_id}"))
        monkeypatch.setattr(
            settings,
            "backup_previous_keys",
            {k: SecretStr(secret) for k, secret in (previous or {}).items()},
        )

    yield change
    monkeypatch.undo()
    monkeypatch.setattr(
        settings, "backup_previous_keys", {k: SecretStr(f"secret of {k}") for k in used}
    )
    result = await service.prune(storage, now=helpers.past_pack_grace(helpers.past_pack_grace()))
    assert settings.backup_key_id == suite_key and result.resealed


async def blobs_of(mailbox_id: uuid.UUID) -> list[BackupBlob]:
    """Every blob the mailbox's catalog rows need: their own and the bodies they continue with."""
    async with unit_of_work() as session:
        hashes = select(BackupMessage.blob_hash).where(BackupMessage.mailbox_id == mailbox_id)
        bodies = select(BackupBlob.body_hash).where(BackupBlob.hash.in_(hashes))
        rows = await session.scalars(
            select(BackupBlob).where(or_(BackupBlob.hash.in_(hashes), BackupBlob.hash.in_(bodies)))
        )
        return list(rows)


async def test_blobs_under_the_old_key_restore_and_prune_reseals_them_so_it_can_go(
    use_key, seed, storage, corpus
) -> None:
    assert isinstance(storage, LocalPackStorage)
    use_key("rotation-a")
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    await helpers.append(mailbox.address, "INBOX", corpus(8, seed=51))
    first, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    use_key("rotation-b", previous={"rotation-a": "secret of rotation-a"})
    await helpers.append(mailbox.address, "Archiv", corpus(4, seed=52))
    second, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    assert {b.key_id for b in await blobs_of(mailbox.id)} == {"rotation-a", "rotation-b"}
    everything = await helpers.state(mailbox.address)
    fresh = await seed.mailbox("pw-1234567890", department=department)
    job = await helpers.restore(mailbox.id, second.id, {"mode": "mailbox", "mailbox_id": fresh.id})
    assert job.status == "succeeded" and await helpers.state(fresh.address) == everything

    under_a = [b for b in await blobs_of(mailbox.id) if b.key_id == "rotation-a"]
    old_packs = {b.pack_id for b in under_a}
    later = helpers.past_pack_grace()
    result = await service.prune(storage, now=later)
    assert result.resealed >= len(under_a)
    assert {b.key_id for b in await blobs_of(mailbox.id)} == {"rotation-b"}

    use_key("rotation-b")  # the old key is gone
    again = await seed.mailbox("pw-1234567890", department=department)
    job = await helpers.restore(mailbox.id, second.id, {"mode": "mailbox", "mailbox_id": again.id})
    assert job.status == "succeeded" and await helpers.state(again.address) == everything
    inbox_only = await seed.mailbox("pw-1234567890", department=department)
    job = await helpers.restore(
        mailbox.id, first.id, {"mode": "mailbox", "mailbox_id": inbox_only.id}
    )
    assert job.status == "succeeded"
    assert await helpers.state(inbox_only.address) == {"INBOX": everything["INBOX"]}

    # What was sealed under the old key is deleted once the retired packs' grace is over.
    await service.prune(storage, now=helpers.past_pack_grace(later))
    assert not any(storage.path(pack).exists() for pack in old_packs)


async def test_mail_under_a_key_no_longer_configured_fails_to_restore_naming_it_and_stays(
    use_key, seed, storage, corpus
) -> None:
    use_key("rotation-c")
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    await helpers.append(mailbox.address, "INBOX", corpus(3, seed=53))
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    kept = await helpers.state(mailbox.address)

    use_key("rotation-d")  # the old key forgotten, not kept
    result = await service.prune(storage, now=helpers.past_pack_grace())
    assert result.older_key_blobs >= len(await blobs_of(mailbox.id))
    assert {b.key_id for b in await blobs_of(mailbox.id)} == {"rotation-c"}
    target = await seed.mailbox("pw-1234567890", department=department)
    job = await helpers.restore(
        mailbox.id, snapshot.id, {"mode": "mailbox", "mailbox_id": target.id}
    )
    assert job.status == "failed"
    assert "no key with id 'rotation-c' is configured" in (job.reason or ""), job.reason

    use_key("rotation-d", previous={"rotation-c": "secret of rotation-c"})
    job = await helpers.restore(
        mailbox.id, snapshot.id, {"mode": "mailbox", "mailbox_id": target.id}
    )
    assert job.status == "succeeded" and await helpers.state(target.address) == kept


async def test_a_damaged_frame_under_the_old_key_is_not_resealed_but_left_for_verify(
    use_key, seed, storage, corpus
) -> None:
    use_key("rotation-e")
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(2, seed=54))
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    blob = await helpers.message_blob(mailbox.id)

    use_key("rotation-f", previous={"rotation-e": "secret of rotation-e"})
    with helpers.corrupted(storage, blob):
        await service.prune(storage, now=helpers.past_pack_grace())
        async with unit_of_work() as session:
            row = await session.get(BackupBlob, blob.hash)
        assert row is not None and (row.pack_id, row.key_id) == (blob.pack_id, "rotation-e")


async def test_a_backup_refuses_a_key_id_whose_secret_was_changed_under_it(
    seed, storage, corpus, use_key, monkeypatch, settings
) -> None:
    use_key("rotation-f")
    mailbox, _ = await helpers.backed_up(seed, storage, {"INBOX": corpus(2, seed=111)})
    await helpers.append(mailbox.address, "INBOX", corpus(1, seed=112))

    async def run_backup() -> BackupRun:
        async with unit_of_work() as session:
            run = await service.create_run(
                session, scope=BackupScope.MAILBOX, mailbox_id=mailbox.id
            )
        await service.execute_backup_run(run.id, storage)
        async with unit_of_work() as session:
            ended = await session.get(BackupRun, run.id)
            assert ended is not None
            return ended

    monkeypatch.setattr(settings, "backup_key", SecretStr("a new secret, same id"))
    refused = await run_backup()
    assert refused.status == "failed" and refused.messages_fetched == 0
    assert refused.reason is not None and "changed without a new id" in refused.reason
    use_key("rotation-f")  # the secret set back
    assert (await run_backup()).status == "succeeded"


async def test_prune_refuses_to_reseal_under_a_key_id_whose_secret_was_changed_under_it(
    seed, storage, corpus, use_key, monkeypatch, settings
) -> None:
    use_key("rotation-g")
    older, _ = await helpers.backed_up(seed, storage, {"INBOX": corpus(2, seed=113)})
    use_key("rotation-h", previous={"rotation-g": "secret of rotation-g"})
    await helpers.backed_up(seed, storage, {"INBOX": corpus(2, seed=114)})
    before = {(b.hash, b.pack_id, b.key_id) for b in await blobs_of(older.id)}

    monkeypatch.setattr(settings, "backup_key", SecretStr("a new secret, same id"))
    with pytest.raises(RuntimeError, match="changed without a new id"):
        await service.prune(storage, now=helpers.past_pack_grace())
    assert {(b.hash, b.pack_id, b.key_id) for b in await blobs_of(older.id)} == before


async def test_a_pack_damaged_throughout_does_not_pass_for_a_changed_secret(
    seed, storage, corpus, use_key
) -> None:
    """The key check opens blobs of different packs: one pack's damage is verify's to report,
    and backups go on."""
    use_key("rotation-i")
    damaged, _ = await helpers.backed_up(seed, storage, {"INBOX": corpus(4, seed=115)})
    mailbox, _ = await helpers.backed_up(seed, storage, {"INBOX": corpus(2, seed=116)})
    await helpers.append(mailbox.address, "INBOX", corpus(1, seed=117))
    with contextlib.ExitStack() as stack:
        for blob in await blobs_of(damaged.id):
            stack.enter_context(helpers.corrupted(storage, blob))
        async with unit_of_work() as session:
            run = await service.create_run(
                session, scope=BackupScope.MAILBOX, mailbox_id=mailbox.id
            )
        assert await service.execute_backup_run(run.id, storage) == "succeeded"
