"""Backup queries: the only place this service talks SQL."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVarTuple, cast

from sqlalchemy import (
    BigInteger,
    Select,
    Table,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, TEXT, TIMESTAMP, UUID, distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TableValuedAlias

from services.backup.engine.storage import Sealed, StoredBlob
from shared.models import Department, Mailbox, MailboxStatus
from shared.models.backup import (
    BackupBlob,
    BackupFolder,
    BackupMessage,
    BackupPack,
    BackupPolicy,
    BackupRun,
    BackupScope,
    JobStatus,
    RestoreJob,
    Snapshot,
    SnapshotStatus,
    VerifyRun,
)

# Core statements on the tables for bulk inserts: the ORM's bulk path costs far more CPU.
_MESSAGES = cast(Table, BackupMessage.__table__)
_BLOBS = cast(Table, BackupBlob.__table__)
_HEADER_BLOBS = _BLOBS.alias("header_blobs")

# Mailboxes whose mail Dovecot still serves to the master user, so they can be backed up.
BACKED_UP_STATUSES = (
    MailboxStatus.ACTIVE.value,
    MailboxStatus.SUSPENDED.value,
    MailboxStatus.DELETING.value,
)
# Mailboxes a restore may write into: not one being deleted, whose purge would remove what
# the restore brings back (its final backup may be taken already).
RESTORABLE_STATUSES = (MailboxStatus.ACTIVE.value, MailboxStatus.SUSPENDED.value)


def in_snapshot(model: type[BackupMessage] | type[BackupFolder], seq: int) -> ColumnElement[bool]:
    """Rows valid at snapshot `seq` of their mailbox."""
    return and_(model.since_seq <= seq, or_(model.until_seq.is_(None), model.until_seq > seq))


# ---------------------------------------------------------------- mailboxes and policies


async def addresses(
    session: AsyncSession, mailbox_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    rows = await session.execute(
        select(Mailbox.id, Mailbox.address).where(Mailbox.id == _any(mailbox_ids, UUID))
    )
    return {mailbox_id: address for mailbox_id, address in rows}


async def mailbox(session: AsyncSession, mailbox_id: uuid.UUID) -> Mailbox | None:
    return await session.get(Mailbox, mailbox_id)


async def department(session: AsyncSession, department_id: uuid.UUID) -> Department | None:
    return await session.get(Department, department_id)


async def backed_up_mailbox_ids(
    session: AsyncSession, *, department_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    query = select(Mailbox.id).where(Mailbox.status.in_(BACKED_UP_STATUSES))
    if department_id is not None:
        query = query.where(Mailbox.department_id == department_id)
    return list((await session.scalars(query.order_by(Mailbox.address))).all())


async def put_policy(
    session: AsyncSession, department_id: uuid.UUID, values: Mapping[str, int]
) -> dict[str, int] | None:
    """Set the department's policy; the values it had before, None if it had none. The
    department's row is locked first: two PUTs at once (a client's retry) take turns, and
    the second sees what the first set."""
    await session.execute(
        select(Department.id).where(Department.id == department_id).with_for_update()
    )
    before = await session.scalar(
        select(BackupPolicy).where(BackupPolicy.department_id == department_id)
    )
    old = {name: int(getattr(before, name)) for name in values} if before else None
    await session.execute(
        pg_insert(BackupPolicy)
        .values(department_id=department_id, **values)
        .on_conflict_do_update(index_elements=[BackupPolicy.department_id], set_=dict(values))
    )
    return old


async def policies(session: AsyncSession) -> list[BackupPolicy]:
    return list((await session.scalars(select(BackupPolicy))).all())


async def mailbox_schedule(
    session: AsyncSession, *, department_id: uuid.UUID | None = None
) -> list[tuple[uuid.UUID, uuid.UUID, datetime | None]]:
    """Each backed-up mailbox (of one department if given) with its department and when
    its latest committed snapshot was begun: for a scheduled run the schedule's tick that
    made it (a run that waited for a free worker does not push the next one back), for
    another run its start (one time for all the mailboxes of a department's run), else the
    snapshot's own start."""
    run_began = case(
        (BackupRun.scope == BackupScope.SCHEDULED.value, BackupRun.created_at),
        else_=BackupRun.started_at,
    )
    begun = func.coalesce(run_began, Snapshot.created_at)
    latest = (
        select(Snapshot.mailbox_id, func.max(begun).label("last"))
        .outerjoin(BackupRun, BackupRun.id == Snapshot.run_id)
        .where(Snapshot.status == SnapshotStatus.COMMITTED.value)
        .group_by(Snapshot.mailbox_id)
        .subquery()
    )
    query = (
        select(Mailbox.id, Mailbox.department_id, latest.c.last)
        .outerjoin(latest, latest.c.mailbox_id == Mailbox.id)
        .where(Mailbox.status.in_(BACKED_UP_STATUSES))
    )
    if department_id is not None:
        query = query.where(Mailbox.department_id == department_id)
    return [(r[0], r[1], r[2]) for r in await session.execute(query.order_by(Mailbox.address))]


async def departments_with_open_scheduled_runs(session: AsyncSession) -> set[uuid.UUID]:
    rows = await session.scalars(
        select(BackupRun.department_id).where(
            BackupRun.scope == BackupScope.SCHEDULED.value,
            BackupRun.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)),
            BackupRun.department_id.is_not(None),
        )
    )
    return {r for r in rows if r is not None}


# ---------------------------------------------------------------- runs, restores, verifies


async def backup_run(
    session: AsyncSession, run_id: uuid.UUID, *, lock: bool = False
) -> BackupRun | None:
    query = select(BackupRun).where(BackupRun.id == run_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def open_final_run(session: AsyncSession, mailbox_id: uuid.UUID) -> BackupRun | None:
    return await session.scalar(
        select(BackupRun)
        .where(
            BackupRun.mailbox_id == mailbox_id,
            BackupRun.scope == "final",
            BackupRun.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)),
        )
        .order_by(BackupRun.created_at.desc())
        .limit(1)
    )


async def open_jobs(session: AsyncSession) -> list[BackupRun | RestoreJob | VerifyRun]:
    """Queued and running backup runs, restores and verifies, locked; rows a worker holds
    locked right now are skipped (that worker is alive)."""
    rows: list[BackupRun | RestoreJob | VerifyRun] = []
    for model in (BackupRun, RestoreJob, VerifyRun):
        query = (
            select(model)
            .where(model.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)))
            .with_for_update(skip_locked=True)
        )
        rows.extend(await session.scalars(query))
    return rows


async def snapshots_being_restored(
    session: AsyncSession, snapshot_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Those of the snapshots that queued and running restores read."""
    rows = await session.scalars(
        select(RestoreJob.snapshot_id).where(
            RestoreJob.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)),
            RestoreJob.snapshot_id.in_(list(snapshot_ids)),
        )
    )
    return set(rows.all())


async def restore_job(
    session: AsyncSession, job_id: uuid.UUID, *, lock: bool = False
) -> RestoreJob | None:
    query = select(RestoreJob).where(RestoreJob.id == job_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def verify_run(
    session: AsyncSession, run_id: uuid.UUID, *, lock: bool = False
) -> VerifyRun | None:
    query = select(VerifyRun).where(VerifyRun.id == run_id)
    return await session.scalar(query.with_for_update() if lock else query)


# ---------------------------------------------------------------- snapshots


async def snapshot(
    session: AsyncSession, snapshot_id: uuid.UUID, *, lock: bool = False
) -> Snapshot | None:
    return await session.get(Snapshot, snapshot_id, with_for_update=lock)


async def snapshots(
    session: AsyncSession,
    *,
    mailbox_id: uuid.UUID | None,
    held: bool | None,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[Snapshot]:
    """Committed snapshots, newest first (ties by id): a page of `limit`, after the one
    completed at `before` (its time and id)."""
    query = select(Snapshot).where(Snapshot.status == SnapshotStatus.COMMITTED.value)
    if mailbox_id is not None:
        query = query.where(Snapshot.mailbox_id == mailbox_id)
    if held is not None:
        query = query.where(Snapshot.held_at.is_not(None) if held else Snapshot.held_at.is_(None))
    if before is not None:
        query = query.where(tuple_(Snapshot.completed_at, Snapshot.id) < tuple_(*before))
    query = query.order_by(Snapshot.completed_at.desc(), Snapshot.id.desc()).limit(limit)
    return list((await session.scalars(query)).all())


async def snapshot_at(
    session: AsyncSession, mailbox_id: uuid.UUID, at: datetime
) -> Snapshot | None:
    """The mailbox's latest committed snapshot completed no later than `at`."""
    return await session.scalar(
        select(Snapshot)
        .where(
            Snapshot.mailbox_id == mailbox_id,
            Snapshot.status == SnapshotStatus.COMMITTED.value,
            Snapshot.completed_at <= at,
        )
        .order_by(Snapshot.completed_at.desc(), Snapshot.seq.desc())
        .limit(1)
    )


async def committed_snapshots(session: AsyncSession, mailbox_id: uuid.UUID) -> list[Snapshot]:
    return list(
        (
            await session.scalars(
                select(Snapshot)
                .where(
                    Snapshot.mailbox_id == mailbox_id,
                    Snapshot.status == SnapshotStatus.COMMITTED.value,
                )
                .order_by(Snapshot.seq)
            )
        ).all()
    )


async def snapshot_folder_names(session: AsyncSession, snap: Snapshot) -> set[str]:
    """The names of the snapshot's folders (without `snapshot_folders`' counts)."""
    rows = await session.scalars(
        select(BackupFolder.name).where(
            BackupFolder.mailbox_id == snap.mailbox_id, in_snapshot(BackupFolder, snap.seq)
        )
    )
    return set(rows.all())


async def snapshot_folders(session: AsyncSession, snap: Snapshot) -> list[dict[str, Any]]:
    """The snapshot's folders with message counts and sizes."""
    counts = (
        select(
            BackupMessage.folder_id,
            func.count().label("messages"),
            func.coalesce(func.sum(BackupMessage.size), 0).label("bytes"),
        )
        .where(BackupMessage.mailbox_id == snap.mailbox_id, in_snapshot(BackupMessage, snap.seq))
        .group_by(BackupMessage.folder_id)
        .subquery()
    )
    rows = await session.execute(
        select(BackupFolder.name, BackupFolder.uidvalidity, counts.c.messages, counts.c.bytes)
        .outerjoin(counts, counts.c.folder_id == BackupFolder.id)
        .where(BackupFolder.mailbox_id == snap.mailbox_id, in_snapshot(BackupFolder, snap.seq))
        .order_by(BackupFolder.name)
    )
    return [
        {"name": r[0], "uidvalidity": r[1], "messages": r[2] or 0, "bytes": r[3] or 0} for r in rows
    ]


async def snapshot_messages(
    session: AsyncSession,
    snap: Snapshot,
    *,
    folders: Sequence[str] | None = None,
    message_ids: Sequence[int] | None = None,
    q: str | None = None,
    sender: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: tuple[str, int] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[tuple[BackupMessage, str]]:
    """Messages of a snapshot with their folder names, filtered like a catalog search, in
    (folder, UID) order; `after` (a folder and UID) starts a page after that message."""
    query = _of_snapshot(select(BackupMessage, BackupFolder.name), snap, folders, message_ids)
    if q:
        pattern = f"%{_escape_like(q)}%"
        query = query.where(
            or_(
                BackupMessage.subject.ilike(pattern, escape="\\"),
                BackupMessage.from_addr.ilike(pattern, escape="\\"),
                BackupMessage.to_addr.ilike(pattern, escape="\\"),
                BackupMessage.message_id.ilike(pattern, escape="\\"),
            )
        )
    if sender:
        query = query.where(BackupMessage.from_addr.ilike(f"%{_escape_like(sender)}%", escape="\\"))
    if since is not None:
        query = query.where(BackupMessage.internal_date >= since)
    if until is not None:
        query = query.where(BackupMessage.internal_date < until)
    if after is not None:
        query = query.where(tuple_(BackupFolder.name, BackupMessage.uid) > tuple_(*after))
    query = query.order_by(BackupFolder.name, BackupMessage.uid).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return [(row[0], row[1]) for row in await session.execute(query)]


async def snapshot_message_counts(
    session: AsyncSession,
    snap: Snapshot,
    *,
    folders: Sequence[str] | None = None,
    message_ids: Sequence[int] | None = None,
) -> dict[str, int]:
    """How many of the snapshot's messages (of these folders, with these ids) each folder
    has, in folder order; folders with none are left out."""
    query = _of_snapshot(select(BackupFolder.name, func.count()), snap, folders, message_ids)
    rows = await session.execute(query.group_by(BackupFolder.name).order_by(BackupFolder.name))
    return {str(name): int(count) for name, count in rows}


async def snapshot_message_bytes(
    session: AsyncSession,
    snap: Snapshot,
    *,
    folders: Sequence[str] | None = None,
    message_ids: Sequence[int] | None = None,
) -> int:
    """The total size of the snapshot's messages (of these folders, with these ids)."""
    query = _of_snapshot(
        select(func.coalesce(func.sum(BackupMessage.size), 0)), snap, folders, message_ids
    )
    return int(await session.scalar(query) or 0)


_Columns = TypeVarTuple("_Columns")


def _of_snapshot(
    query: Select[*_Columns],
    snap: Snapshot,
    folders: Sequence[str] | None,
    message_ids: Sequence[int] | None,
) -> Select[*_Columns]:
    """`query` over the snapshot's messages joined to their folders, of these folders and
    with these catalog ids if given."""
    query = (
        query.select_from(BackupMessage)
        .join(BackupFolder, BackupFolder.id == BackupMessage.folder_id)
        .where(BackupMessage.mailbox_id == snap.mailbox_id, in_snapshot(BackupMessage, snap.seq))
    )
    if folders:
        query = query.where(BackupFolder.name.in_(list(folders)))
    if message_ids:
        query = query.where(BackupMessage.id == _any(message_ids, BigInteger))
    return query


def _any(values: Sequence[Any], item: Any) -> ColumnElement[Any]:
    """`= ANY(:values)` with the values as one array parameter, for a list of any length:
    `IN` takes a parameter each, and PostgreSQL's protocol allows 32,767 at most."""
    return any_(literal(list(values), ARRAY(item)))


async def snapshot_message_ids(
    session: AsyncSession,
    snap: Snapshot,
    *,
    folders: Sequence[str] | None = None,
    message_ids: Sequence[int] | None = None,
) -> set[int]:
    """The catalog ids of the snapshot's messages (of these folders, with these ids)."""
    query = _of_snapshot(select(BackupMessage.id), snap, folders, message_ids)
    return set((await session.scalars(query)).all())


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# ---------------------------------------------------------------- the engine's catalog work


async def discard_pending_snapshots(session: AsyncSession, mailbox_id: uuid.UUID) -> int:
    """Undo what an interrupted backup of the mailbox wrote to the catalog (not its blobs)."""
    pending = list(
        (
            await session.scalars(
                select(Snapshot.seq).where(
                    Snapshot.mailbox_id == mailbox_id,
                    Snapshot.status == SnapshotStatus.PENDING.value,
                )
            )
        ).all()
    )
    for seq in pending:
        await session.execute(
            delete(BackupMessage).where(
                BackupMessage.mailbox_id == mailbox_id, BackupMessage.since_seq == seq
            )
        )
        await session.execute(
            delete(BackupFolder).where(
                BackupFolder.mailbox_id == mailbox_id, BackupFolder.since_seq == seq
            )
        )
        await session.execute(
            update(BackupMessage)
            .where(BackupMessage.mailbox_id == mailbox_id, BackupMessage.until_seq == seq)
            .values(until_seq=None)
        )
        await session.execute(
            update(BackupFolder)
            .where(BackupFolder.mailbox_id == mailbox_id, BackupFolder.until_seq == seq)
            .values(until_seq=None)
        )
        await session.execute(
            delete(Snapshot).where(Snapshot.mailbox_id == mailbox_id, Snapshot.seq == seq)
        )
    return len(pending)


async def next_seq(session: AsyncSession, mailbox_id: uuid.UUID) -> int:
    current = await session.scalar(
        select(func.max(Snapshot.seq)).where(Snapshot.mailbox_id == mailbox_id)
    )
    return int(current or 0) + 1


async def has_messages(session: AsyncSession, mailbox_id: uuid.UUID) -> bool:
    """Whether the catalog has any message of the mailbox, in any snapshot."""
    return bool(
        await session.scalar(select(exists().where(BackupMessage.mailbox_id == mailbox_id)))
    )


async def current_folders(session: AsyncSession, mailbox_id: uuid.UUID) -> list[BackupFolder]:
    return list(
        (
            await session.scalars(
                select(BackupFolder).where(
                    BackupFolder.mailbox_id == mailbox_id, BackupFolder.until_seq.is_(None)
                )
            )
        ).all()
    )


async def close_folder(session: AsyncSession, folder_id: int, seq: int) -> None:
    """The folder (and every message in it) ends before snapshot `seq`."""
    await session.execute(
        update(BackupMessage)
        .where(BackupMessage.folder_id == folder_id, BackupMessage.until_seq.is_(None))
        .values(until_seq=seq)
    )
    await session.execute(
        update(BackupFolder).where(BackupFolder.id == folder_id).values(until_seq=seq)
    )


async def add_folder(
    session: AsyncSession, *, mailbox_id: uuid.UUID, name: str, uidvalidity: int, seq: int
) -> int:
    folder_id = await session.scalar(
        insert(BackupFolder)
        .values(
            mailbox_id=mailbox_id,
            name=name,
            uidvalidity=uidvalidity,
            uidnext=0,
            highestmodseq=0,
            since_seq=seq,
        )
        .returning(BackupFolder.id)
    )
    assert folder_id is not None
    return int(folder_id)


async def set_folder_state(
    session: AsyncSession, folder_id: int, *, uidnext: int, highestmodseq: int
) -> None:
    await session.execute(
        update(BackupFolder)
        .where(BackupFolder.id == folder_id)
        .values(uidnext=uidnext, highestmodseq=highestmodseq)
    )


async def close_messages(
    session: AsyncSession, folder_id: int, uids: Sequence[int], seq: int
) -> list[BackupMessage]:
    """End the current rows of these UIDs before snapshot `seq`; return what they were."""
    if not uids:
        return []
    uid = _uid_list(uids)
    rows = await session.scalars(
        update(BackupMessage)
        .where(
            BackupMessage.folder_id == folder_id,
            BackupMessage.uid == uid.c.uid,
            BackupMessage.until_seq.is_(None),
        )
        .values(until_seq=seq)
        .returning(BackupMessage)
    )
    return list(rows.all())


async def current_uid_windows(
    session: AsyncSession, folder_id: int, size: int
) -> list[tuple[int, int]]:
    """The folder's current UIDs in the catalog as ranges of `size` UIDs each (the last
    fewer), lowest first: what a sync asks the server about a window at a time."""
    numbered = (
        select(
            BackupMessage.uid,
            ((func.row_number().over(order_by=BackupMessage.uid) - 1) / size).label("window"),
        )
        .where(BackupMessage.folder_id == folder_id, BackupMessage.until_seq.is_(None))
        .subquery()
    )
    rows = await session.execute(
        select(func.min(numbered.c.uid), func.max(numbered.c.uid))
        .group_by(numbered.c.window)
        .order_by(func.min(numbered.c.uid))
    )
    return [(int(low), int(high)) for low, high in rows]


async def current_flags(
    session: AsyncSession, folder_id: int, uids: Sequence[int]
) -> dict[int, list[str]]:
    uid = _uid_list(uids)
    rows = await session.execute(
        select(BackupMessage.uid, BackupMessage.flags)
        .join(uid, BackupMessage.uid == uid.c.uid)
        .where(BackupMessage.folder_id == folder_id, BackupMessage.until_seq.is_(None))
    )
    return {int(r[0]): list(r[1]) for r in rows}


def _uid_list(uids: Sequence[int]) -> TableValuedAlias:
    """UIDs as a table to join (`unnest`), not an IN list: joined, each UID is one probe of
    the (folder, UID) index whatever the planner's statistics say. With `IN` and no
    statistics yet, it read every current row of the folder per batch of UIDs instead."""
    return func.unnest(literal(list(uids), ARRAY(BigInteger))).table_valued("uid").render_derived()


MESSAGE_COPY_FIELDS = (
    "mailbox_id",
    "folder_id",
    "uid",
    "blob_hash",
    "flags",
    "internal_date",
    "size",
    "sent_at",
    "from_addr",
    "to_addr",
    "subject",
    "message_id",
)


async def insert_messages(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """A Core executemany on the table (the ORM's bulk path costs ~10x the CPU per row);
    every row must carry the same keys."""
    if rows:
        await session.execute(insert(_MESSAGES), list(rows))


# What identifies a message seen before without its bytes: INTERNALDATE, size and the
# envelope. The copies of one delivery agree on all of them; two different messages agree on
# them only if sent and delivered in the same second under the same header fields.
IDENTITY_FIELDS = (
    "internal_date",
    "size",
    "message_id",
    "sent_at",
    "from_addr",
    "to_addr",
    "subject",
)


async def known_by_identity(
    session: AsyncSession,
    mailbox_id: uuid.UUID,
    *,
    message_ids: Sequence[str],
    internal_dates: Sequence[datetime],
) -> dict[tuple[Any, ...], BackupMessage]:
    """Catalog rows of the mailbox that may be these messages (one of the Message-IDs and
    one of the INTERNALDATEs), by their IDENTITY_FIELDS: a message seen again (moved, or
    after a UIDVALIDITY change) needs no second download."""
    rows = await session.scalars(
        select(BackupMessage).where(
            BackupMessage.mailbox_id == mailbox_id,
            BackupMessage.message_id == _any(sorted(set(message_ids)), TEXT),
            BackupMessage.internal_date
            == _any(sorted(set(internal_dates)), TIMESTAMP(timezone=True)),
        )
    )
    return {tuple(getattr(r, name) for name in IDENTITY_FIELDS): r for r in rows}


async def existing_blobs(session: AsyncSession, hashes: Sequence[bytes]) -> set[bytes]:
    if not hashes:
        return set()
    rows = await session.scalars(
        select(BackupBlob.hash).where(BackupBlob.hash.in_(list(set(hashes))))
    )
    return {bytes(h) for h in rows}


async def record_pack(session: AsyncSession, pack_id: uuid.UUID, size: int) -> None:
    await session.execute(
        pg_insert(BackupPack)
        .values(id=pack_id, size=size)
        .on_conflict_do_update(index_elements=[BackupPack.id], set_={"size": size})
    )


async def insert_blobs(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(
            pg_insert(_BLOBS).on_conflict_do_nothing(index_elements=[BackupBlob.hash]),
            list(rows),
        )


async def commit_snapshot(session: AsyncSession, snapshot_id: uuid.UUID, seq: int) -> Snapshot:
    snap = await session.get(Snapshot, snapshot_id)
    assert snap is not None
    messages = (
        select(func.count(), func.coalesce(func.sum(BackupMessage.size), 0))
        .where(BackupMessage.mailbox_id == snap.mailbox_id, BackupMessage.until_seq.is_(None))
        .subquery()
    )
    folders = (
        select(func.count())
        .select_from(BackupFolder)
        .where(BackupFolder.mailbox_id == snap.mailbox_id, BackupFolder.until_seq.is_(None))
        .scalar_subquery()
    )
    # One round trip for the counts and the clock.
    row = (await session.execute(select(messages, folders, func.clock_timestamp()))).one()
    snap.message_count, snap.total_bytes = int(row[0]), int(row[1])
    snap.folder_count = int(row[2] or 0)
    snap.status = SnapshotStatus.COMMITTED.value
    snap.completed_at = row[3]
    return snap


# ---------------------------------------------------------------- blobs for restore and verify


async def blobs(session: AsyncSession, hashes: Sequence[bytes]) -> dict[bytes, StoredBlob]:
    """The blobs with these hashes, each with its sealed parts in reading order."""
    found = await session.scalars(select(BackupBlob).where(BackupBlob.hash.in_(list(set(hashes)))))
    stored = await _with_bodies(session, list(found))
    return {blob.hash: blob for blob in stored}


async def sealed_under(session: AsyncSession, key_id: str, limit: int) -> list[Sealed]:
    """Where a few of the blobs sealed under `key_id` lie, each in a pack of its own: damage
    to one pack cannot pass for a secret that opens none of them."""
    rows = await session.scalars(
        select(BackupBlob)
        .where(BackupBlob.key_id == key_id)
        .ext(distinct_on(BackupBlob.pack_id))
        .order_by(BackupBlob.pack_id)
        .limit(limit)
    )
    return [_sealed(row) for row in rows]


def _sealed(row: BackupBlob) -> Sealed:
    """Where the blob's own sealed bytes lie."""
    return Sealed(bytes(row.hash), row.pack_id, int(row.offset), int(row.length), row.key_id)


async def _with_bodies(session: AsyncSession, blobs: list[BackupBlob]) -> list[StoredBlob]:
    """The rows as StoredBlobs, after reading the body blobs their header blobs name."""
    rows = {bytes(r.hash): r for r in blobs}
    asked = set(rows)
    while wanted := {bytes(r.body_hash) for r in rows.values() if r.body_hash} - asked:
        asked |= wanted
        found = await session.scalars(select(BackupBlob).where(BackupBlob.hash.in_(list(wanted))))
        rows.update((bytes(r.hash), r) for r in found)
    return [_stored(blob, rows) for blob in blobs]


def _stored(blob: BackupBlob, rows: Mapping[bytes, BackupBlob]) -> StoredBlob:
    """A catalog row as a StoredBlob; a missing body leaves it short, and reading it then
    reports the damage."""
    parts: list[Sealed] = []
    current: BackupBlob | None = blob
    while current is not None and len(parts) <= len(rows):
        parts.append(_sealed(current))
        current = rows.get(bytes(current.body_hash)) if current.body_hash else None
    return StoredBlob(bytes(blob.hash), int(blob.size), tuple(parts))


async def blob_page(
    session: AsyncSession, after: bytes, limit: int, fraction: float, start: int = 0
) -> list[StoredBlob]:
    """The next `limit` blobs after the hash `after`; with a `fraction` under 1, only those
    whose 16-bit hash prefix lies in that share of the prefixes from `start` on (wrapping
    round): a uniform sample, at least one prefix wide, which another `start` moves."""
    query = select(BackupBlob).where(BackupBlob.hash > after)
    if fraction < 1.0:
        prefix = func.get_byte(BackupBlob.hash, 0) * 256 + func.get_byte(BackupBlob.hash, 1)
        width = max(1, round(fraction * 65536))
        query = query.where((prefix - start + 65536) % 65536 < width)
    page = await session.scalars(query.order_by(BackupBlob.hash).limit(limit))
    return await _with_bodies(session, list(page))


async def damage_owners(session: AsyncSession, blob_hash: bytes) -> list[dict[str, Any]]:
    """The mailboxes and committed snapshots whose messages need this blob."""
    rows = await session.execute(
        select(Snapshot.mailbox_id, Snapshot.id, Mailbox.address)
        .join(Mailbox, Mailbox.id == Snapshot.mailbox_id)
        .where(
            Snapshot.status == SnapshotStatus.COMMITTED.value,
            exists().where(
                or_(
                    BackupMessage.blob_hash == blob_hash,
                    BackupMessage.blob_hash.in_(
                        select(BackupBlob.hash).where(BackupBlob.body_hash == blob_hash)
                    ),
                ),
                BackupMessage.mailbox_id == Snapshot.mailbox_id,
                BackupMessage.since_seq <= Snapshot.seq,
                or_(BackupMessage.until_seq.is_(None), BackupMessage.until_seq > Snapshot.seq),
            ),
        )
        .order_by(Snapshot.mailbox_id, Snapshot.seq)
    )
    owners: dict[uuid.UUID, dict[str, Any]] = {}
    for mailbox_id, snapshot_id, address in rows:
        entry = owners.setdefault(
            mailbox_id, {"mailbox_id": str(mailbox_id), "address": address, "snapshot_ids": []}
        )
        entry["snapshot_ids"].append(str(snapshot_id))
    return list(owners.values())


# ---------------------------------------------------------------- prune


async def mailboxes_with_snapshots(session: AsyncSession) -> dict[uuid.UUID, uuid.UUID]:
    """Each mailbox with snapshots, whatever its status (a purged one's are kept by its
    department's policy too), with its department."""
    with_snapshots = select(Snapshot.mailbox_id).distinct().subquery()
    rows = await session.execute(
        select(Mailbox.id, Mailbox.department_id).join(
            with_snapshots, with_snapshots.c.mailbox_id == Mailbox.id
        )
    )
    return {r[0]: r[1] for r in rows}


async def delete_snapshots(session: AsyncSession, snapshot_ids: Sequence[uuid.UUID]) -> int:
    """Delete those of the snapshots no hold keeps, a hold committed meanwhile included;
    how many were deleted."""
    if not snapshot_ids:
        return 0
    result = await session.execute(
        delete(Snapshot).where(Snapshot.id.in_(list(snapshot_ids)), Snapshot.held_at.is_(None))
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_unreferenced_rows(session: AsyncSession, mailbox_id: uuid.UUID) -> int:
    """Closed catalog rows that no remaining committed snapshot of the mailbox contains."""
    deleted = 0
    for model in (BackupMessage, BackupFolder):
        snap = select(Snapshot.id).where(
            Snapshot.mailbox_id == mailbox_id,
            Snapshot.seq >= model.since_seq,
            Snapshot.seq < model.until_seq,
        )
        query = delete(model).where(
            model.mailbox_id == mailbox_id, model.until_seq.is_not(None), ~snap.exists()
        )
        if model is BackupFolder:
            query = query.where(
                ~select(BackupMessage.id).where(BackupMessage.folder_id == BackupFolder.id).exists()
            )
        result = await session.execute(query)
        deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


async def delete_unreferenced_blobs(session: AsyncSession) -> int:
    """Blobs no message needs: first those no message names, then the bodies they held."""
    deleted = 0
    while True:
        result = await session.execute(
            delete(BackupBlob).where(
                ~select(BackupMessage.id)
                .where(BackupMessage.blob_hash == BackupBlob.hash)
                .exists(),
                ~select(_HEADER_BLOBS.c.hash)
                .where(_HEADER_BLOBS.c.body_hash == BackupBlob.hash)
                .exists(),
            )
        )
        count = int(getattr(result, "rowcount", 0) or 0)
        if not count:
            return deleted
        deleted += count


async def empty_packs(session: AsyncSession, retired_before: datetime) -> list[uuid.UUID]:
    """Packs no blob is in: at once if prune emptied them by deleting blobs, after the
    grace period if it retired them by moving their blobs."""
    rows = await session.scalars(
        select(BackupPack.id).where(
            ~select(BackupBlob.hash).where(BackupBlob.pack_id == BackupPack.id).exists(),
            or_(BackupPack.retired_at.is_(None), BackupPack.retired_at < retired_before),
        )
    )
    return list(rows.all())


@dataclass(frozen=True)
class PackToRewrite:
    id: uuid.UUID
    size: int
    live: int  # bytes of the blobs still in it


async def packs_to_rewrite(
    session: AsyncSession, unused_share: float, created_before: datetime, key_id: str
) -> list[PackToRewrite]:
    """Packs in use, older than `created_before`, of which more than `unused_share` of the
    bytes belong to no blob any more, or that hold a blob sealed under a key other than
    `key_id` (the current one)."""
    live = func.sum(BackupBlob.length)  # an inner join: every group has a blob
    rows = await session.execute(
        select(BackupPack.id, BackupPack.size, live)
        .join(BackupBlob, BackupBlob.pack_id == BackupPack.id)
        .where(BackupPack.retired_at.is_(None), BackupPack.created_at < created_before)
        .group_by(BackupPack.id)
        .having(
            or_(
                BackupPack.size - live > unused_share * BackupPack.size,
                func.bool_or(BackupBlob.key_id != key_id),
            )
        )
        .order_by(BackupPack.created_at)
    )
    return [PackToRewrite(pack_id, int(size), int(used)) for pack_id, size, used in rows]


async def pack_blobs(session: AsyncSession, pack_id: uuid.UUID) -> list[Sealed]:
    """The blobs in a pack, in the order they lie."""
    rows = await session.execute(
        select(BackupBlob.hash, BackupBlob.offset, BackupBlob.length, BackupBlob.key_id)
        .where(BackupBlob.pack_id == pack_id)
        .order_by(BackupBlob.offset)
    )
    return [Sealed(bytes(h), pack_id, int(at), int(length), key) for h, at, length, key in rows]


async def move_blobs(
    session: AsyncSession, old_pack: uuid.UUID, copies: Sequence[Sealed], retired_at: datetime
) -> None:
    """Point the blobs at their `copies` and retire `old_pack`, as of now (or `retired_at`,
    if later): a prune that ran for hours must not date it back to its own start, which
    would shorten the old file's grace. A blob deleted meanwhile matches no row: its copy
    is unused bytes."""
    if copies:
        await session.execute(
            update(_BLOBS)
            .where(_BLOBS.c.hash == bindparam("moved"), _BLOBS.c.pack_id == old_pack)
            .values(
                pack_id=bindparam("to"),
                offset=bindparam("at"),
                length=bindparam("sealed_length"),
                key_id=bindparam("sealed_key"),
            ),
            [
                {
                    "moved": c.blob_hash,
                    "to": c.pack_id,
                    "at": c.offset,
                    "sealed_length": c.length,
                    "sealed_key": c.key_id,
                }
                for c in copies
            ],
        )
    await session.execute(
        update(BackupPack)
        .where(BackupPack.id == old_pack)
        .values(retired_at=func.greatest(literal(retired_at), func.clock_timestamp()))
    )


async def blobs_under_other_keys(session: AsyncSession, key_id: str) -> int:
    """Blobs sealed under a key other than `key_id`: until none are, an older key is needed."""
    count = await session.scalar(
        select(func.count()).select_from(BackupBlob).where(BackupBlob.key_id != key_id)
    )
    return int(count or 0)


async def unknown_packs(session: AsyncSession, pack_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Those of `pack_ids` that no catalog row names (every pack file of a large store: one
    array parameter, however many)."""
    known = set(
        await session.scalars(select(BackupPack.id).where(BackupPack.id == _any(pack_ids, UUID)))
    )
    return [p for p in pack_ids if p not in known]


async def delete_packs(session: AsyncSession, pack_ids: Sequence[uuid.UUID]) -> None:
    if pack_ids:
        await session.execute(delete(BackupPack).where(BackupPack.id == _any(pack_ids, UUID)))


@dataclass(frozen=True)
class CatalogState:
    """What the catalog holds for a mailbox's next backup: its latest snapshot and the
    open folders' sync state by name, (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ)."""

    address: str
    status: str
    latest_seq: int | None
    pending: bool
    folders: dict[str, tuple[int, int, int]] = field(default_factory=dict)


async def fast_path_candidates(
    session: AsyncSession, mailbox_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """Those of the mailboxes that are backed up, have a committed snapshot and no pending
    one (an interrupted run's)."""
    committed = exists().where(
        Snapshot.mailbox_id == Mailbox.id, Snapshot.status == SnapshotStatus.COMMITTED.value
    )
    pending = exists().where(
        Snapshot.mailbox_id == Mailbox.id, Snapshot.status == SnapshotStatus.PENDING.value
    )
    rows = await session.scalars(
        select(Mailbox.id).where(
            Mailbox.id == _any(mailbox_ids, UUID),
            Mailbox.status.in_(BACKED_UP_STATUSES),
            committed,
            ~pending,
        )
    )
    return list(rows.all())


async def catalog_states(
    session: AsyncSession, mailbox_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, CatalogState]:
    """The catalog state of many mailboxes in one query (absent ids are unknown mailboxes)."""
    if not mailbox_ids:
        return {}
    latest = (
        select(
            func.max(Snapshot.seq).label("seq"),
            func.coalesce(
                func.bool_or(Snapshot.status == SnapshotStatus.PENDING.value), False
            ).label("pending"),
        )
        .where(Snapshot.mailbox_id == Mailbox.id)
        .lateral("latest")
    )
    rows = await session.execute(
        select(
            Mailbox.id,
            Mailbox.address,
            Mailbox.status,
            latest.c.seq,
            latest.c.pending,
            BackupFolder.name,
            BackupFolder.uidvalidity,
            BackupFolder.uidnext,
            BackupFolder.highestmodseq,
        )
        .select_from(Mailbox)
        .join(latest, true())
        .outerjoin(
            BackupFolder,
            and_(BackupFolder.mailbox_id == Mailbox.id, BackupFolder.until_seq.is_(None)),
        )
        .where(Mailbox.id == _any(mailbox_ids, UUID))
    )
    states: dict[uuid.UUID, CatalogState] = {}
    for mailbox_id, address, status, seq, pending, name, uidvalidity, uidnext, modseq in rows:
        state = states.get(mailbox_id)
        if state is None:
            state = states[mailbox_id] = CatalogState(
                address, status, None if seq is None else int(seq), bool(pending)
            )
        if name is not None:
            state.folders[name] = (int(uidvalidity), int(uidnext), int(modseq))
    return states


async def try_lock_all(session: AsyncSession, keys: Sequence[str]) -> set[str]:
    """Take, in one statement, those of the advisory locks named by `keys` that are free,
    until the end of this transaction; return the keys taken. Never waits."""
    if not keys:
        return set()
    key = func.unnest(literal(list(keys), ARRAY(TEXT))).table_valued("key").render_derived()
    rows = await session.scalars(
        select(key.c.key).where(func.pg_try_advisory_xact_lock(func.hashtext(key.c.key)))
    )
    return set(rows.all())


async def add_unchanged_snapshots(
    session: AsyncSession, latest: Mapping[uuid.UUID, int], run_id: uuid.UUID | None
) -> list[Snapshot]:
    """Commit, in one statement, a snapshot after each mailbox's committed snapshot `latest`
    with the same content: its catalog rows are open-ended, so they belong to the new one too.
    Only for mailboxes whose catalog and server are known unchanged since, under their lock."""
    if not latest:
        return []
    previous = (
        select(
            Snapshot.mailbox_id,
            Mailbox.department_id,  # where the mailbox is now, as a new backup records it
            literal(run_id, Snapshot.run_id.type),
            Snapshot.seq + 1,
            literal(SnapshotStatus.COMMITTED.value),
            func.clock_timestamp(),
            Snapshot.folder_count,
            Snapshot.message_count,
            Snapshot.total_bytes,
        )
        .join(Mailbox, Mailbox.id == Snapshot.mailbox_id)
        .where(
            tuple_(Snapshot.mailbox_id, Snapshot.seq).in_(list(latest.items())),
            Snapshot.status == SnapshotStatus.COMMITTED.value,
        )
    )
    rows = await session.scalars(
        insert(Snapshot)
        .from_select(
            [
                "mailbox_id",
                "department_id",
                "run_id",
                "seq",
                "status",
                "completed_at",
                "folder_count",
                "message_count",
                "total_bytes",
            ],
            previous,
        )
        .returning(Snapshot)
    )
    return list(rows.all())


async def catalog_size(session: AsyncSession) -> int:
    """The planner's estimate of the catalog's message rows (0 before any ANALYZE)."""
    estimate = await session.scalar(
        text("SELECT reltuples FROM pg_class WHERE oid = 'backup_messages'::regclass")
    )
    return max(0, int(estimate or 0))


async def analyze_catalog(connection: AsyncConnection) -> None:
    await connection.execute(text("ANALYZE backup_messages, backup_blobs"))
    await connection.commit()


# A backup in progress may have found a blob stored and be about to reference it; prune
# deletes the blobs nothing references. So each mailbox backup holds a share of this lock,
# and prune holds it alone while it deletes. PostgreSQL queues a share asked for after a
# waiting prune behind it: prune waits for the backups in progress, not for a quiet moment.
STORE_LOCK = "backup-store"

# What PostgreSQL raises when lock_timeout ends a wait.
LOCK_NOT_AVAILABLE = "55P03"


def _lock_id(key: str) -> ColumnElement[int]:
    return func.hashtext(key)


async def lock_for_backup(connection: AsyncConnection, key: str) -> None:
    """Block until this connection holds the mailbox's advisory lock named by `key` and a
    share of the store lock (session locks: they outlive the transaction, so the caller
    commits, and later calls `unlock_after_backup`)."""
    await connection.execute(
        select(
            func.pg_advisory_lock(_lock_id(key)),
            func.pg_advisory_lock_shared(_lock_id(STORE_LOCK)),
        )
    )


async def unlock_after_backup(connection: AsyncConnection, key: str) -> None:
    await connection.execute(
        select(
            func.pg_advisory_unlock_shared(_lock_id(STORE_LOCK)),
            func.pg_advisory_unlock(_lock_id(key)),
        )
    )


# Restores into one mailbox run one at a time: each lists what its target folders hold
# before it appends, and two at once would both find a message missing and both append it.
def _restore_target_lock(function: Any, mailbox_id: uuid.UUID) -> Select[Any]:
    return select(function(_lock_id(f"restore:{mailbox_id}")))


async def lock_restore_target(connection: AsyncConnection, mailbox_id: uuid.UUID) -> None:
    """Block until this connection holds the target mailbox's restore lock (a session lock)."""
    await connection.execute(_restore_target_lock(func.pg_advisory_lock, mailbox_id))


async def unlock_restore_target(connection: AsyncConnection, mailbox_id: uuid.UUID) -> None:
    await connection.execute(_restore_target_lock(func.pg_advisory_unlock, mailbox_id))


# A snapshot an export is streaming, or a restore is being requested for, is pinned: the
# reader holds a share of the snapshot's lock, and prune deletes only the expired snapshots
# whose lock it can take alone. A pin asked for while prune deletes the snapshot waits for
# prune's commit, then finds it gone.
def _snapshot_key(snapshot_id: uuid.UUID) -> str:
    return f"snapshot:{snapshot_id}"


def _on_snapshot_lock(function: Any, snapshot_id: uuid.UUID) -> Select[Any]:
    return select(function(_lock_id(_snapshot_key(snapshot_id))))


async def pin_snapshot(connection: AsyncConnection, snapshot_id: uuid.UUID) -> None:
    """Block until this connection holds a share of the snapshot's lock (a session lock)."""
    await connection.execute(_on_snapshot_lock(func.pg_advisory_lock_shared, snapshot_id))


async def pin_snapshot_for_transaction(session: AsyncSession, snapshot_id: uuid.UUID) -> None:
    """Block until this transaction holds a share of the snapshot's lock, until it ends."""
    await session.execute(_on_snapshot_lock(func.pg_advisory_xact_lock_shared, snapshot_id))


async def unpin_snapshot(connection: AsyncConnection, snapshot_id: uuid.UUID) -> None:
    await connection.execute(_on_snapshot_lock(func.pg_advisory_unlock_shared, snapshot_id))


async def unpinned(session: AsyncSession, snapshot_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Those of the snapshots no export has pinned, each locked against new pins until the
    end of this transaction."""
    keys = {_snapshot_key(x): x for x in snapshot_ids}
    return [keys[k] for k in await try_lock_all(session, list(keys))]


async def lock_store(connection: AsyncConnection, wait: timedelta) -> bool:
    """Take the store lock alone, as a session lock, waiting at most `wait` for the backups
    in progress to release their shares; False, holding nothing, if they did not. Commits."""
    milliseconds = max(1, int(wait.total_seconds() * 1000))
    try:
        await connection.execute(select(func.set_config("lock_timeout", f"{milliseconds}ms", True)))
        await connection.execute(select(func.pg_advisory_lock(_lock_id(STORE_LOCK))))
    except DBAPIError as exc:
        await connection.rollback()
        if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return False
        raise
    await connection.commit()  # ends the lock_timeout set for this transaction only
    return True


async def unlock_store(connection: AsyncConnection) -> None:
    await connection.execute(select(func.pg_advisory_unlock(_lock_id(STORE_LOCK))))
    await connection.commit()


# One prune at a time: a second one, between the first's deletions and its repack, would
# find the pack the first is writing empty of blobs and delete it under the writer.
PRUNE_LOCK = "backup-prune"


async def try_lock_prune(connection: AsyncConnection) -> bool:
    """Take the prune lock (a session lock) if no other prune holds it. Commits."""
    taken = await connection.scalar(select(func.pg_try_advisory_lock(_lock_id(PRUNE_LOCK))))
    await connection.commit()
    return bool(taken)


async def unlock_prune(connection: AsyncConnection) -> None:
    await connection.execute(select(func.pg_advisory_unlock(_lock_id(PRUNE_LOCK))))
    await connection.commit()
