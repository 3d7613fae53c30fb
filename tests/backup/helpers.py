"""Helpers for backup tests: fill a mailbox on the real Dovecot, read back its exact state,
empty it; read a snapshot's content from the catalog; request and carry out a restore."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from services.backup import repository, service
from services.backup import schemas as s
from services.backup.engine import utf7
from services.backup.engine.backup import backup_mailbox
from services.backup.engine.imap import (
    AppendItem,
    fetch_items,
    master_connection,
    parse_internaldate,
    quote,
)
from services.backup.engine.storage import LocalPackStorage, PackStorage
from shared.auth import Principal
from shared.db import unit_of_work
from shared.models import Department, Mailbox, Role
from shared.models.backup import BackupBlob, BackupMessage, BackupRun, RestoreJob, Snapshot
from shared.settings import get_settings

DEFAULT_FOLDERS = {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
OPERATOR = Principal(id=uuid.uuid4(), name="test-operator", role=Role.OPERATOR)

# folder -> sorted [(sha256 hex, sorted flags, INTERNALDATE)]
MailboxState = dict[str, list[tuple[str, tuple[str, ...], datetime]]]
# folder -> sorted [(sha256 hex, sorted flags)]: what a snapshot records of a mailbox
SnapshotContent = dict[str, list[tuple[str, tuple[str, ...]]]]


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def append(
    address: str,
    folder: str,
    messages: Sequence[tuple[bytes, Sequence[str], datetime]],
) -> None:
    """APPEND (bytes, flags, INTERNALDATE) messages to a folder, creating it if needed."""
    encoded = utf7.encode(folder)
    async with master_connection(address) as imap:
        await imap.command(b"CREATE " + quote(encoded), check=False)
        for start in range(0, len(messages), 50):
            answers = await imap.append_many(
                encoded,
                [
                    AppendItem(flags=flags, internal_date=when, size=len(data), chunks=once(data))
                    for data, flags, when in messages[start : start + 50]
                ],
            )
            assert all(a.status == "OK" for a in answers), [a.text for a in answers]


async def backed_up(
    seed: Any,
    storage: PackStorage,
    folders: Mapping[str, Sequence[tuple[bytes, Sequence[str], datetime]]],
    **mailbox: Any,
) -> tuple[Mailbox, Snapshot]:
    """A new mailbox (`seed.mailbox` fields), these messages appended to these folders, and
    its first snapshot."""
    made = await seed.mailbox("pw-1234567890", **mailbox)
    for folder, messages in folders.items():
        await append(made.address, folder, messages)
    snapshot, _ = await backup_mailbox(mailbox_id=made.id, run_id=None, storage=storage)
    return made, snapshot


async def state(address: str, *, skip_empty: bool = True) -> MailboxState:
    """Every folder's messages as (SHA-256, flags, INTERNALDATE), read from the server."""
    result: MailboxState = {}
    async with master_connection(address) as imap:
        listing = await imap.command(b'LIST "" "*"')
        names = [
            r.data[2]
            for r in listing.of("LIST")
            if "\\noselect" not in {bytes(a).decode().lower() for a in r.data[0]}
        ]
        for raw in names:
            name = utf7.decode(bytes(raw).decode())
            examined = await imap.command(b"EXAMINE " + quote(bytes(raw)), check=False)
            if examined.status != "OK":
                continue
            exists = next((u.number or 0 for u in examined.of("EXISTS")), 0)
            rows = []
            if exists:
                answer = await imap.command(b"UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])")
                for response in answer.of("FETCH"):
                    items = fetch_items(response)
                    flags = tuple(
                        sorted(
                            bytes(f).decode()
                            for f in items["FLAGS"]
                            if bytes(f).decode() != "\\Recent"
                        )
                    )
                    rows.append(
                        (
                            hashlib.sha256(bytes(items["BODY[]"])).hexdigest(),
                            flags,
                            parse_internaldate(bytes(items["INTERNALDATE"]).decode()),
                        )
                    )
            if rows or not skip_empty:
                result[name] = sorted(rows)
    return result


async def delete_messages(address: str, folder: str, *, uids: str = "1:*") -> None:
    """Flag messages \\Deleted and expunge them."""
    async with master_connection(address) as imap:
        answer = await imap.command(b"SELECT " + quote(utf7.encode(folder)), check=False)
        if answer.status == "OK" and next((u.number or 0 for u in answer.of("EXISTS")), 0):
            await imap.command(b"UID STORE " + uids.encode() + b" +FLAGS.SILENT (\\Deleted)")
            await imap.command(b"EXPUNGE")


async def delete_folder(address: str, folder: str) -> None:
    async with master_connection(address) as imap:
        await imap.command(b"DELETE " + quote(utf7.encode(folder)))


async def empty(address: str) -> None:
    """Delete every message, and every folder but the default ones."""
    async with master_connection(address) as imap:
        listing = await imap.command(b'LIST "" "*"')
        names = [bytes(r.data[2]).decode() for r in listing.of("LIST")]
    for raw in names:
        await delete_messages(address, utf7.decode(raw))
    async with master_connection(address) as imap:
        for raw in sorted(names, reverse=True):
            if utf7.decode(raw) not in DEFAULT_FOLDERS:
                await imap.command(b"DELETE " + quote(raw), check=False)


async def store_flags(address: str, folder: str, uids: str, flags: str) -> None:
    async with master_connection(address) as imap:
        await imap.command(b"SELECT " + quote(utf7.encode(folder)))
        await imap.command(b"UID STORE " + uids.encode() + b" " + flags.encode())


async def server_content(address: str) -> SnapshotContent:
    """What a snapshot of the mailbox taken now would record."""
    return content(await state(address))


def content(server: MailboxState) -> SnapshotContent:
    """A mailbox state as a snapshot records it (INTERNALDATE left out)."""
    return {folder: sorted((h, f) for h, f, _ in found) for folder, found in server.items()}


async def snapshot_state(snapshot: Snapshot) -> SnapshotContent:
    """The snapshot's messages as the catalog has them."""
    async with unit_of_work() as session:
        snap = await session.get(Snapshot, snapshot.id)
        assert snap is not None
        rows = await repository.snapshot_messages(session, snap)
    out: SnapshotContent = {}
    for message, folder in rows:
        out.setdefault(folder, []).append(
            (bytes(message.blob_hash).hex(), tuple(sorted(message.flags)))
        )
    return {k: sorted(v) for k, v in out.items()}


async def catalog_rows(*mailbox_ids: uuid.UUID) -> int:
    """How many catalog message rows the mailboxes have, in every snapshot."""
    async with unit_of_work() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(BackupMessage)
                .where(BackupMessage.mailbox_id.in_(mailbox_ids))
            )
            or 0
        )


async def restore(
    mailbox_id: uuid.UUID,
    snapshot_id: uuid.UUID | None = None,
    target: dict[str, Any] | None = None,
    *,
    at: datetime | None = None,
    folders: list[str] | None = None,
    storage: PackStorage | None = None,
) -> RestoreJob:
    """Request a restore of the snapshot (or the one `at` a time; of these folders) as an
    operator, carry it out, and return the job as it ended."""
    job_id = await request_restore(mailbox_id, snapshot_id, target, at=at, folders=folders)
    await service.execute_restore(job_id, storage)
    async with unit_of_work() as session:
        return await service.get_restore(session, restore_id=job_id)


async def request_restore(
    mailbox_id: uuid.UUID,
    snapshot_id: uuid.UUID | None = None,
    target: dict[str, Any] | None = None,
    *,
    at: datetime | None = None,
    folders: list[str] | None = None,
) -> uuid.UUID:
    """Request a restore as an operator (it waits, queued, to be carried out); its id."""
    async with unit_of_work() as session:
        job = await service.request_restore(
            session,
            actor=OPERATOR,
            data=s.RestoreRequest(
                mailbox_id=mailbox_id,
                snapshot_id=snapshot_id,
                at=at,
                folders=folders,
                target=s.RestoreTarget(**(target or {"mode": "original"})),
            ),
        )
        return job.id


async def message_blob(mailbox_id: uuid.UUID) -> BackupBlob:
    """The blob of one of the mailbox's backed-up messages."""
    async with unit_of_work() as session:
        blob = await session.scalar(
            select(BackupBlob)
            .join(BackupMessage, BackupMessage.blob_hash == BackupBlob.hash)
            .where(BackupMessage.mailbox_id == mailbox_id)
            .limit(1)
        )
    assert blob is not None
    return blob


@contextmanager
def corrupted(storage: PackStorage, blob: BackupBlob) -> Iterator[None]:
    """One byte in the middle of the blob's stored bytes flipped, then put back."""
    assert isinstance(storage, LocalPackStorage)
    path = storage.path(blob.pack_id)
    at = blob.offset + blob.length // 2
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        yield
    finally:
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))


@contextmanager
def truncated(storage: PackStorage, blob: BackupBlob) -> Iterator[None]:
    """The blob's pack cut short inside its last byte (a disk that lost the pack's end),
    then made whole again."""
    assert isinstance(storage, LocalPackStorage)
    path = storage.path(blob.pack_id)
    data = path.read_bytes()
    path.write_bytes(data[: blob.offset + blob.length - 1])
    try:
        yield
    finally:
        path.write_bytes(data)


async def scheduled_runs(department_ids: set[uuid.UUID]) -> list[BackupRun]:
    async with unit_of_work() as session:
        runs = (
            await session.scalars(select(BackupRun).where(BackupRun.scope == "scheduled"))
        ).all()
    return [r for r in runs if r.department_id in department_ids]


async def set_aside_other_scheduled_runs(department_ids: set[uuid.UUID]) -> None:
    """Other tests' mailboxes are due too: their runs end as no-ops if a worker meets them."""
    async with unit_of_work() as session:
        queued = select(BackupRun).where(
            BackupRun.scope == "scheduled", BackupRun.status == "queued"
        )
        for run in await session.scalars(queued):
            if run.department_id not in department_ids:
                run.status, run.reason = "failed", "set aside by a test"


async def mostly_expired(
    seed: Any,
    storage: PackStorage,
    messages: Sequence[tuple[bytes, Sequence[str], datetime]],
    *,
    deleted_uids: str,
) -> tuple[Department, Mailbox, Snapshot, Snapshot]:
    """A mailbox whose department keeps only its last snapshot, backed up with `messages`
    and again once the `deleted_uids` of its INBOX were deleted: its department, and the
    first and second snapshots. The first and the mail only it holds are prune's to expire.
    The messages must be ones no other test stores (a corpus seed of its own): a blob
    stored before lies in another test's pack."""
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    await seed.backup_policy(department)
    await append(mailbox.address, "INBOX", messages)
    first, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    await delete_messages(mailbox.address, "INBOX", uids=deleted_uids)
    second, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    return department, mailbox, first, second


def past_pack_grace(after: datetime | None = None) -> datetime:
    """A clock for prune past the grace that packs get, from now or from `after`."""
    return (after or datetime.now(UTC)) + service.PACK_GRACE + timedelta(minutes=1)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def problem_field(response: Any) -> str:
    """The field a problem+json response names."""
    assert response.headers["content-type"].startswith("application/problem+json")
    return str(response.json()["errors"][0]["field"])


# An advisory lock's requests, as PostgreSQL's lock table has them: (mode, granted).
LOCK_REQUESTS = text(
    "SELECT mode, granted FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
    " AND ((classid::bigint << 32) | objid::bigint) = hashtext(:key)::bigint"
)


async def until_lock_waits(mode: str, key: str = repository.STORE_LOCK) -> None:
    """Return once a request for the advisory lock `key` (the store lock unless named) in
    `mode` is waiting. Looks on a connection of its own: the pool may have none left."""
    observer = create_async_engine(get_settings().database_url, poolclass=NullPool)
    try:
        async with observer.connect() as connection:
            for _ in range(500):
                rows = await connection.execute(LOCK_REQUESTS, {"key": key})
                await connection.rollback()
                if (mode, False) in {tuple(row) for row in rows}:
                    return
                await asyncio.sleep(0.01)
    finally:
        await observer.dispose()
    raise AssertionError(f"no {mode} request for the lock {key!r} is waiting")
