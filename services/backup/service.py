"""The backup service's rules: who may request what, and how runs, restores, verifies and
prunes are carried out. Services never commit; whoever owns the unit of work does."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeGuard, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.backup import repository
from services.backup import schemas as s
from services.backup.engine.backup import PACK_TARGET_BYTES, MailboxOutcome, backup_mailboxes
from services.backup.engine.restore import (
    ItemPages,
    RestoreItem,
    RestoreProgress,
    restore_messages,
)
from services.backup.engine.storage import (
    FRAME_PLAINTEXT_BYTES,
    BlobDamaged,
    PackStorage,
    PackWriter,
    Sealed,
    StoredBlob,
    blob_chunks_in_thread,
    check_blob,
    copy_sealed,
    default_storage,
    opens,
)
from shared import audit
from shared.auth import Principal
from shared.db import connection_holding, get_engine, transaction_on, unit_of_work
from shared.errors import Forbidden, NotFound, Unavailable, Unprocessable
from shared.models import Mailbox, Role
from shared.models.backup import (
    BackupPolicy,
    BackupRun,
    BackupScope,
    JobStatus,
    PruneRun,
    PruneStatus,
    RestoreJob,
    RestoreMode,
    Snapshot,
    SnapshotStatus,
    VerifyRun,
)
from shared.queue import enqueue_after_commit, final_backup_job_id, job_state
from shared.settings import get_settings

log = logging.getLogger("mailops.backup")

# ---------------------------------------------------------------- policies


@dataclass(frozen=True)
class Policy:
    interval_seconds: int
    keep_last: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    is_default: bool


def default_policy() -> Policy:
    settings = get_settings()
    return Policy(
        interval_seconds=settings.backup_interval_seconds,
        keep_last=settings.backup_keep_last,
        keep_daily=settings.backup_keep_daily,
        keep_weekly=settings.backup_keep_weekly,
        keep_monthly=settings.backup_keep_monthly,
        is_default=True,
    )


def _policy(row: BackupPolicy | None) -> Policy:
    if row is None:
        return default_policy()
    return Policy(
        row.interval_seconds,
        row.keep_last,
        row.keep_daily,
        row.keep_weekly,
        row.keep_monthly,
        False,
    )


async def set_policy(
    session: AsyncSession, *, actor: Principal, department_id: uuid.UUID, data: s.PolicyIn
) -> bool:
    """Set the department's backup policy, in the audit trail (a shorter retention deletes
    snapshots at the next prune); True if the department had none before."""
    if await repository.department(session, department_id) is None:
        raise NotFound(f"no department {department_id}", field="department_id")
    after = data.model_dump()
    before = await repository.put_policy(session, department_id, after)
    audit.record(
        session,
        actor=actor,
        action="backup_policy.set",
        target_type="department",
        target_id=department_id,
        before=before,
        after=after,
    )
    return before is None


def policy_out(department_id: uuid.UUID | None, policy: Policy) -> s.PolicyOut:
    return s.PolicyOut(department_id=department_id, **policy.__dict__)


async def list_policies(session: AsyncSession) -> list[s.PolicyOut]:
    out = [policy_out(None, default_policy())]
    out += [policy_out(p.department_id, _policy(p)) for p in await repository.policies(session)]
    return out


# ---------------------------------------------------------------- job rows

Job = BackupRun | RestoreJob | VerifyRun
AnyJob = TypeVar("AnyJob", BackupRun, RestoreJob, VerifyRun)


def _begin(row: AnyJob | None) -> TypeGuard[AnyJob]:
    """Mark a job's row running; False if it is gone or has ended (arq ran it again after it
    finished, or the reaper ended it). A rerun after a crash keeps its first start time."""
    if row is None or row.status in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value):
        return False
    row.status = JobStatus.RUNNING.value
    row.started_at = row.started_at or datetime.now(UTC)
    return True


def _end_failed(row: Job, reason: str) -> None:
    row.status, row.reason = JobStatus.FAILED.value, reason[:2000]
    row.finished_at = datetime.now(UTC)


@dataclass(frozen=True)
class _JobKind:
    """How a kind of job row is carried out and looked up."""

    function: str  # the worker's task (services/backup/tasks.py)
    argument: str  # the task's argument naming the row
    ids: str  # the arq job id's prefix
    path: str  # the API's collection


_JOB_KINDS: dict[type, _JobKind] = {
    BackupRun: _JobKind("run_backup", "run_id", "backup-run", "backups"),
    RestoreJob: _JobKind("run_restore", "restore_id", "restore", "restores"),
    VerifyRun: _JobKind("run_verify", "verify_id", "verify", "verify"),
}


def job_location(row: Job) -> str:
    """Where the API answers a job's status."""
    return f"/v1/{_JOB_KINDS[type(row)].path}/{row.id}"


def queue_job_id(row: Job) -> str:
    """The arq job id that carries out a row: one per row, so enqueueing it twice is one job."""
    if (
        isinstance(row, BackupRun)
        and row.scope == BackupScope.FINAL.value
        and row.mailbox_id is not None
    ):
        return final_backup_job_id(row.mailbox_id)
    return f"{_JOB_KINDS[type(row)].ids}:{row.id}"


def _enqueue(session: AsyncSession, row: Job) -> None:
    """Queue the row's job once the session commits (the row flushed: it has its id)."""
    kind = _JOB_KINDS[type(row)]
    enqueue_after_commit(
        session,
        "backup",
        kind.function,
        job_id=queue_job_id(row),
        location=job_location(row),
        **{kind.argument: str(row.id)},
    )


# ---------------------------------------------------------------- requests


async def _mailbox(session: AsyncSession, mailbox_id: uuid.UUID, field: str) -> Mailbox:
    mailbox = await repository.mailbox(session, mailbox_id)
    if mailbox is None:
        raise NotFound(f"no mailbox {mailbox_id}", field=field)
    return mailbox


async def request_backup(
    session: AsyncSession, *, actor: Principal, data: s.BackupRequest
) -> BackupRun:
    if data.mailbox_id is not None:
        mailbox = await _mailbox(session, data.mailbox_id, "mailbox_id")
        if mailbox.status not in repository.BACKED_UP_STATUSES:
            raise Unprocessable(
                f"mailbox {mailbox.id} is {mailbox.status}; it cannot be backed up",
                field="mailbox_id",
            )
        scope = BackupScope.MAILBOX
    elif data.department_id is not None:
        if await repository.department(session, data.department_id) is None:
            raise NotFound(f"no department {data.department_id}", field="department_id")
        scope = BackupScope.DEPARTMENT
    else:
        scope = BackupScope.ALL
    return await create_run(
        session,
        scope=scope,
        mailbox_id=data.mailbox_id,
        department_id=data.department_id,
        requested_by=actor.name,
    )


async def create_run(
    session: AsyncSession,
    *,
    scope: BackupScope,
    mailbox_id: uuid.UUID | None = None,
    department_id: uuid.UUID | None = None,
    requested_by: str = "",
) -> BackupRun:
    run = BackupRun(
        status=JobStatus.QUEUED.value,
        scope=scope.value,
        mailbox_id=mailbox_id,
        department_id=department_id,
        requested_by=requested_by,
    )
    session.add(run)
    await session.flush()
    _enqueue(session, run)
    return run


def run_out(run: BackupRun) -> s.BackupRunOut:
    duration = (
        (run.finished_at - run.started_at).total_seconds()
        if run.finished_at and run.started_at
        else None
    )
    return s.BackupRunOut(
        id=run.id,
        status=run.status,
        reason=run.reason,
        scope=run.scope,
        mailbox_id=run.mailbox_id,
        department_id=run.department_id,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        duration_seconds=duration,
        mailboxes_total=run.mailboxes_total,
        mailboxes_done=run.mailboxes_done,
        mailboxes_failed=run.mailboxes_failed,
        messages_fetched=run.messages_fetched,
        bytes_read=run.bytes_read,
        bytes_stored=run.bytes_stored,
    )


async def get_run(session: AsyncSession, *, run_id: uuid.UUID) -> BackupRun:
    run = await repository.backup_run(session, run_id)
    if run is None:
        raise NotFound(f"no backup {run_id}", field="run_id")
    return run


async def get_snapshot(
    session: AsyncSession, *, snapshot_id: uuid.UUID, lock: bool = False
) -> Snapshot:
    snap = await repository.snapshot(session, snapshot_id, lock=lock)
    if snap is None or snap.status != SnapshotStatus.COMMITTED.value:
        raise NotFound(f"no snapshot {snapshot_id}", field="snapshot_id")
    return snap


async def hold_snapshot(
    session: AsyncSession, *, actor: Principal, snapshot_id: uuid.UUID, data: s.HoldIn
) -> Snapshot:
    """Keep the snapshot from prune until the hold is released; holding it again replaces
    the reason and keeps the time it was first held. Locked: a prune deleting it meanwhile
    makes this a 404, and one that comes after it sees the hold."""
    snap = await get_snapshot(session, snapshot_id=snapshot_id, lock=True)
    before = _hold(snap)
    snap.held_at = snap.held_at or datetime.now(UTC)
    snap.held_by, snap.hold_reason = actor.name, data.reason
    audit.record(
        session,
        actor=actor,
        action="snapshot.hold",
        target_type="snapshot",
        target_id=snap.id,
        before=before,
        after=_hold(snap),
    )
    await session.flush()
    return snap


async def release_snapshot(
    session: AsyncSession, *, actor: Principal, snapshot_id: uuid.UUID
) -> None:
    """End the snapshot's hold (if it has one): retention applies to it again."""
    snap = await get_snapshot(session, snapshot_id=snapshot_id, lock=True)
    if snap.held_at is None:
        return
    audit.record(
        session,
        actor=actor,
        action="snapshot.release",
        target_type="snapshot",
        target_id=snap.id,
        before=_hold(snap),
    )
    snap.held_at = snap.held_by = snap.hold_reason = None


def _hold(snap: Snapshot) -> dict[str, str] | None:
    if snap.held_at is None:
        return None
    return {
        "at": snap.held_at.isoformat(),
        "by": str(snap.held_by),
        "reason": str(snap.hold_reason),
    }


async def request_restore(
    session: AsyncSession, *, actor: Principal, data: s.RestoreRequest
) -> RestoreJob:
    source = await _mailbox(session, data.mailbox_id, "mailbox_id")
    # The snapshot is pinned until the job is committed, from then on kept for it: prune
    # does not delete it under a queued job, and a prune deleting it now is waited for.
    if data.snapshot_id is not None:
        await repository.pin_snapshot_for_transaction(session, data.snapshot_id)
        snap = await get_snapshot(session, snapshot_id=data.snapshot_id)
        if snap.mailbox_id != source.id:
            raise Unprocessable(
                f"snapshot {snap.id} is not a snapshot of mailbox {source.id}",
                field="snapshot_id",
            )
    else:
        assert data.at is not None
        found = await _pinned_snapshot_at(session, source.id, data.at)
        if found is None:
            raise Unprocessable(
                f"mailbox {source.id} has no snapshot at or before {data.at.isoformat()}",
                field="at",
            )
        snap = found
    target, target_field = source, "mailbox_id"
    if data.target.mode is RestoreMode.MAILBOX:
        assert data.target.mailbox_id is not None
        target_field = "target.mailbox_id"
        target = await _mailbox(session, data.target.mailbox_id, target_field)
    if target.status not in repository.RESTORABLE_STATUSES:
        raise Unprocessable(
            f"mailbox {target.id} is {target.status}; it cannot receive mail (a deleted "
            "mailbox's mail restores into another mailbox: target mode mailbox)",
            field=target_field,
        )
    _authorise_restore(actor, data, snap, source, target)
    names: set[str] = set()
    if data.folders or data.target.folder is not None:
        names = await repository.snapshot_folder_names(session, snap)
        check_folders(names, data.folders, "folders")
    if data.message_ids:
        found_ids = await repository.snapshot_message_ids(
            session, snap, folders=data.folders, message_ids=data.message_ids
        )
        missing = sorted(set(data.message_ids) - found_ids)
        if missing:
            where = f"the folders {data.folders} of " if data.folders else ""
            raise Unprocessable(
                f"messages not in {where}snapshot {snap.id}: {missing[:10]}",
                field="message_ids",
            )
    if data.target.folder is not None:  # only the folders the restore will make
        chosen = data.folders
        if data.message_ids and not chosen:
            chosen = list(
                await repository.snapshot_message_counts(
                    session, snap, message_ids=data.message_ids
                )
            )
        _check_target_folders(names, chosen, data.target.folder)
    # A selection larger than the whole quota can never fit: say so now, not after a
    # failed job. One that fits the quota but not the room left fails saying so (TargetFull).
    needed = await repository.snapshot_message_bytes(
        session, snap, folders=data.folders, message_ids=data.message_ids
    )
    if needed > target.quota_bytes:
        raise Unprocessable(
            f"the restore needs {needed} bytes and mailbox {target.id} has a quota of "
            f"{target.quota_bytes} bytes: raise its quota, or restore fewer folders or messages",
            field=target_field,
        )
    job = RestoreJob(
        status=JobStatus.QUEUED.value,
        mailbox_id=source.id,
        snapshot_id=snap.id,
        target_mode=data.target.mode.value,
        target_mailbox_id=target.id,
        target_folder=data.target.folder,
        folders=data.folders,
        message_ids=data.message_ids,
        requested_by=actor.name,
    )
    session.add(job)
    await session.flush()
    audit.record(
        session,
        actor=actor,
        action="restore.request",
        target_type="mailbox",
        target_id=source.id,
        after={
            "restore_id": str(job.id),
            "snapshot_id": str(snap.id),
            "target": data.target.mode.value,
            "target_mailbox_id": str(target.id),
            "target_folder": data.target.folder,
            "folders": data.folders or "all",
            "messages": len(data.message_ids) if data.message_ids else "all",
        },
    )
    _enqueue(session, job)
    return job


def check_folders(names: set[str], folders: list[str] | None, field: str = "folder") -> None:
    """Unprocessable, naming `field`, if one of the folders is not among the snapshot's
    folder `names`."""
    for name in folders or ():
        if name not in names:
            raise Unprocessable(f"the snapshot has no folder {name!r}", field=field)


def _check_target_folders(names: set[str], folders: list[str] | None, under: str) -> None:
    """Unprocessable, naming `target.folder`, if a snapshot folder (of `names`, those of
    `folders` if given) restored under `under` would get a name the server refuses (too
    long, most likely), before any message is restored."""
    for folder in sorted(set(folders or names)):
        name = f"{under}/{folder}"
        try:
            s.check_folder_name(name)
        except ValueError as exc:
            raise Unprocessable(
                f"restored under {under!r}, the folder {folder!r} would be {name!r}: "
                f"{exc}; choose a shorter target folder",
                field="target.folder",
            ) from exc


async def _pinned_snapshot_at(
    session: AsyncSession, mailbox_id: uuid.UUID, at: datetime
) -> Snapshot | None:
    """The mailbox's snapshot at `at`, pinned for this transaction. If prune deleted the one
    found while the pin waited for it, the one at `at` after the deletion is taken."""
    pinned = None
    while (found := await repository.snapshot_at(session, mailbox_id, at)) is not None:
        if found.id == pinned:
            return found
        await repository.pin_snapshot_for_transaction(session, found.id)
        pinned = found.id
    return None


def _authorise_restore(
    actor: Principal, data: s.RestoreRequest, snap: Snapshot, source: Mailbox, target: Mailbox
) -> None:
    """Mail goes back to its own mailbox, or to a mailbox of the department it belongs to
    (the one its mailbox was in when backed up); anywhere else only an admin may send it."""
    department = snap.department_id or source.department_id
    elsewhere = target.id != source.id and target.department_id != department
    if elsewhere and actor.role is not Role.ADMIN:
        raise Forbidden(
            "restoring one department's mail into another department's mailbox needs admin",
            field="target.mailbox_id",
        )
    if actor.role is Role.SUPPORT and data.target.mode is not RestoreMode.FOLDER:
        raise Forbidden(
            "support may restore only into a folder of the same mailbox", field="target.mode"
        )


async def get_restore(session: AsyncSession, *, restore_id: uuid.UUID) -> RestoreJob:
    job = await repository.restore_job(session, restore_id)
    if job is None:
        raise NotFound(f"no restore {restore_id}", field="restore_id")
    return job


async def request_verify(
    session: AsyncSession, *, actor: Principal, data: s.VerifyRequest
) -> VerifyRun:
    run = VerifyRun(status=JobStatus.QUEUED.value, fraction=data.fraction, requested_by=actor.name)
    session.add(run)
    await session.flush()
    _enqueue(session, run)
    return run


async def get_verify(session: AsyncSession, *, verify_id: uuid.UUID) -> VerifyRun:
    run = await repository.verify_run(session, verify_id)
    if run is None:
        raise NotFound(f"no verify run {verify_id}", field="verify_id")
    return run


# ---------------------------------------------------------------- carrying out a backup run


async def _mailboxes_of(run: BackupRun) -> list[uuid.UUID]:
    if run.mailbox_id is not None:
        return [run.mailbox_id]
    async with unit_of_work() as session:
        if run.scope == BackupScope.SCHEDULED and run.department_id is not None:
            # Those still due when the run starts (a manual backup meanwhile counts).
            due = await _due_mailboxes(session, datetime.now(UTC), run.department_id)
            return due.get(run.department_id, [])
        return await repository.backed_up_mailbox_ids(session, department_id=run.department_id)


# Blobs sealed under the current key id a backup run decrypts a frame of before it seals more.
KEY_SAMPLES = 3
# The (key id, secret fingerprint) pairs this process found consistent: a process reads its
# settings once, so its first run checks for all the others (the sample query scans the
# blobs when none is under the key yet, as after a rotation).
_keys_checked: set[tuple[str, bytes]] = set()


class BackupKeyMismatch(RuntimeError):
    """The configured backup secret does not open what is sealed under its key id."""


async def _check_backup_key(storage: PackStorage) -> None:
    """Refuse to back up under a key id whose configured secret no longer opens what was
    sealed under it: a secret changed without a new id. Blobs sealed under both secrets
    with one id could never all be read again, by any configuration."""
    settings = get_settings()
    key_id = settings.backup_key_id
    checked = (key_id, hashlib.sha256(settings.backup_key.get_secret_value().encode()).digest())
    if checked in _keys_checked:
        return
    async with unit_of_work() as session:
        parts = await repository.sealed_under(session, key_id, KEY_SAMPLES)
    opened = [await asyncio.to_thread(opens, storage, part) for part in parts]
    if False not in opened or True in opened:  # one damaged blob is verify's to report
        _keys_checked.add(checked)
    else:
        raise BackupKeyMismatch(
            f"MAILOPS_BACKUP_KEY does not open the blobs sealed under key id {key_id!r}: the "
            "secret was changed without a new id. Set the secret back, or give the new secret "
            "a new MAILOPS_BACKUP_KEY_ID and the old one in MAILOPS_BACKUP_PREVIOUS_KEYS"
        )


async def execute_backup_run(run_id: uuid.UUID, storage: PackStorage | None = None) -> str:
    """Back up every mailbox of the run, several at once; idempotent if rerun after a crash.
    A mailbox's failure is counted and the others go on; an error outside any one mailbox
    (the database gone for a moment, say) ends the run `failed` with the reason."""
    storage = storage or default_storage()
    async with unit_of_work() as session:
        run = await repository.backup_run(session, run_id, lock=True)
        if not _begin(run):
            return "nothing to do"
        run.mailboxes_done = run.mailboxes_failed = 0
        run.messages_fetched = run.bytes_read = run.bytes_stored = 0
    failures: dict[uuid.UUID, str] = {}

    async def record(outcomes: list[MailboxOutcome]) -> None:
        async with unit_of_work() as session:
            row = await repository.backup_run(session, run_id, lock=True)
            assert row is not None
            for outcome in outcomes:
                if outcome.error is not None:
                    failures[outcome.mailbox_id] = outcome.error
                    row.mailboxes_failed += 1
                else:
                    row.mailboxes_done += 1
                    row.messages_fetched += outcome.counters.messages_fetched
                    row.bytes_read += outcome.counters.bytes_read
                    row.bytes_stored += outcome.counters.bytes_stored

    stopped: str | None = None
    try:
        await _check_backup_key(storage)
        mailbox_ids = await _mailboxes_of(run)
        async with unit_of_work() as session:
            locked = await repository.backup_run(session, run_id, lock=True)
            assert locked is not None
            locked.mailboxes_total = len(mailbox_ids)
        await backup_mailboxes(
            mailbox_ids=mailbox_ids, run_id=run_id, storage=storage, on_done=record
        )
    except Exception as exc:
        log.warning("backup run stopped", extra={"run_id": str(run_id)}, exc_info=True)
        stopped = f"{type(exc).__name__}: {exc}"
    async with unit_of_work() as session:
        row = await repository.backup_run(session, run_id, lock=True)
        assert row is not None
        reasons = []
        if stopped is not None:
            reasons.append(
                f"the run stopped after backing up {row.mailboxes_done} mailboxes: {stopped}"
            )
        if failures:
            named = await repository.addresses(session, list(failures)[:5])
            reasons.append(
                f"{len(failures)} of {row.mailboxes_total} mailboxes failed: "
                + "; ".join(f"{named.get(m, m)}: {why}" for m, why in list(failures.items())[:5])
            )
        if reasons:
            _end_failed(row, "; ".join(reasons))
        else:
            row.status, row.finished_at = JobStatus.SUCCEEDED.value, datetime.now(UTC)
        return row.status


async def final_backup_run(mailbox_id: uuid.UUID) -> uuid.UUID | None:
    """The run for a mailbox's last backup before deletion (reused if one is open)."""
    async with unit_of_work() as session:
        mailbox = await repository.mailbox(session, mailbox_id)
        if mailbox is None or mailbox.status not in repository.BACKED_UP_STATUSES:
            return None
        run = await repository.open_final_run(session, mailbox_id)
        if run is None:
            run = BackupRun(
                status=JobStatus.QUEUED.value,
                scope=BackupScope.FINAL.value,
                mailbox_id=mailbox_id,
                requested_by="provisioning",
            )
            session.add(run)
            await session.flush()
        return run.id


async def _due_mailboxes(
    session: AsyncSession, now: datetime, department_id: uuid.UUID | None = None
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """By department, the mailboxes whose department's policy interval has passed since
    their latest committed snapshot was begun (or that have none), from half a tick of the
    schedule before: an hourly backup then runs every hour, not every hour and five minutes
    (nor every 55 minutes)."""
    policies = {p.department_id: _policy(p) for p in await repository.policies(session)}
    fallback = default_policy()
    due: dict[uuid.UUID, list[uuid.UUID]] = {}
    for mailbox_id, department, last in await repository.mailbox_schedule(
        session, department_id=department_id
    ):
        interval = timedelta(seconds=policies.get(department, fallback).interval_seconds)
        # Half a tick short of the interval: the tick after it, whatever the cron's jitter
        # (a run counts from its tick, its row made a few milliseconds after `now`).
        if last is None or now - last >= interval - SCHEDULE_TICK / 2:
            due.setdefault(department, []).append(mailbox_id)
    return due


# How often the backup worker's cron looks for due backups.
SCHEDULE_TICK = timedelta(minutes=5)


async def schedule_due_backups(now: datetime | None = None) -> int:
    """Create a scheduled run for each department with mailboxes due for a backup.

    One run per department, not per mailbox: its unchanged mailboxes then share one fast
    path (`backup_unchanged`). A department whose scheduled run is still open gets none.
    """
    now = now or datetime.now(UTC)
    async with unit_of_work() as session:
        busy = await repository.departments_with_open_scheduled_runs(session)
        departments = [d for d in await _due_mailboxes(session, now) if d not in busy]
        for department_id in departments:
            await create_run(
                session,
                scope=BackupScope.SCHEDULED,
                department_id=department_id,
                requested_by="schedule",
            )
    return len(departments)


# ---------------------------------------------------------------- restore


RESTORE_PAGE = 1000


async def _restore_pages(
    snapshot_id: uuid.UUID, message_ids: list[int] | None, folder: str
) -> AsyncIterator[list[RestoreItem]]:
    """A snapshot folder's messages to restore, RESTORE_PAGE at a time in UID order, each
    page read in a transaction of its own: memory holds a page, not the folder."""
    after: tuple[str, int] | None = None
    while True:
        async with unit_of_work() as session:
            snap = await get_snapshot(session, snapshot_id=snapshot_id)
            page = await repository.snapshot_messages(
                session,
                snap,
                folders=[folder],
                message_ids=message_ids,
                after=after,
                limit=RESTORE_PAGE,
            )
            blobs = await repository.blobs(session, [m.blob_hash for m, _ in page])
        if not page:
            return
        after = (folder, page[-1][0].uid)
        yield [
            RestoreItem(m.id, blobs[bytes(m.blob_hash)], m.flags, m.internal_date) for m, _ in page
        ]


async def execute_restore(restore_id: uuid.UUID, storage: PackStorage | None = None) -> str:
    """Carry out a restore job; rerunning it adds nothing already restored. Whatever stops
    it, from its first query on, ends the job `failed` with the reason."""
    storage = storage or default_storage()
    progress = RestoreProgress()

    async def report() -> None:
        async with unit_of_work() as session:
            row = await repository.restore_job(session, restore_id, lock=True)
            assert row is not None
            _record_progress(row, progress)

    try:
        started = await _start_restore(restore_id)
        if started is None:
            return "nothing to do"
        target_id, folders = started
        async with connection_holding(
            functools.partial(repository.lock_restore_target, mailbox_id=target_id),
            functools.partial(repository.unlock_restore_target, mailbox_id=target_id),
        ):
            await restore_messages(
                mailbox_id=target_id,
                folders=folders,
                storage=storage,
                progress=progress,
                on_progress=report,
            )
        if progress.damaged:  # all the rest is restored: the job still did not do it all
            raise LookupError(
                f"{len(progress.damaged)} messages do not read from the backup store and were "
                f"not restored, the {progress.restored + progress.skipped} others were: "
                + "; ".join(list(progress.damaged.values())[:5])
                + ". A verify reports the damage by mailbox and snapshot"
            )
    except Exception as exc:
        reason = _reason(exc)
        async with unit_of_work() as session:
            row = await repository.restore_job(session, restore_id, lock=True)
            assert row is not None
            _record_progress(row, progress)
            _end_failed(row, reason)
            mode = row.target_mode
        log.warning("restore failed", extra={"restore_id": str(restore_id), "mode": mode})
        return "failed"
    async with unit_of_work() as session:
        row = await repository.restore_job(session, restore_id, lock=True)
        assert row is not None
        row.status = JobStatus.SUCCEEDED.value
        _record_progress(row, progress)
        row.finished_at = datetime.now(UTC)
    return "succeeded"


async def _start_restore(restore_id: uuid.UUID) -> tuple[uuid.UUID, dict[str, ItemPages]] | None:
    """Mark the job running with its total; the target mailbox and, by target folder, the
    pages of messages to restore there. None if the job has ended."""
    async with unit_of_work() as session:
        job = await repository.restore_job(session, restore_id, lock=True)
        if not _begin(job):
            return None
        snap = await repository.snapshot(session, job.snapshot_id)
        if snap is None:
            raise LookupError(
                f"snapshot {job.snapshot_id} no longer exists: retention pruned it after the "
                "restore was requested; request a restore of a snapshot that is still kept"
            )
        target = await repository.mailbox(session, job.target_mailbox_id)
        assert target is not None  # a foreign key: the mailbox row outlives its jobs
        if target.status not in repository.RESTORABLE_STATUSES:
            raise LookupError(
                f"mailbox {target.id} is {target.status} since the restore was requested; "
                "it cannot receive mail"
            )
        if job.message_ids is None:  # whole folders: each comes back, an empty one too
            counts = {
                str(f["name"]): int(f["messages"])
                for f in await repository.snapshot_folders(session, snap)
                if not job.folders or f["name"] in job.folders
            }
        else:
            counts = await repository.snapshot_message_counts(
                session, snap, folders=job.folders, message_ids=job.message_ids
            )
        job.total, job.done, job.restored, job.skipped = sum(counts.values()), 0, 0, 0
        prefix = f"{job.target_folder}/" if job.target_folder else ""
        folders: dict[str, ItemPages] = {
            prefix + name: functools.partial(_restore_pages, job.snapshot_id, job.message_ids, name)
            for name in counts
        }
        if job.target_folder:  # the folder the restore goes under is made a folder too
            folders[job.target_folder] = _no_messages
        return target.id, folders


async def _no_messages() -> AsyncIterator[list[RestoreItem]]:
    """The pages of a folder that is only created."""
    for _ in ():
        yield []


def _record_progress(job: RestoreJob, progress: RestoreProgress) -> None:
    job.done, job.restored, job.skipped = progress.done, progress.restored, progress.skipped


def _reason(exc: BaseException) -> str:
    """What a failed job says: each error's message, or its type where it has none."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in exc.exceptions)
    return str(exc).strip() or type(exc).__name__


# ---------------------------------------------------------------- export


EXPORT_PAGE = 200
# Exports a process streams at once: each holds a pooled connection (the one pinning its
# snapshot) until its client has read the last byte, and the pool serves the API too.
EXPORTS_AT_ONCE = 4
_exports = asyncio.Semaphore(EXPORTS_AT_ONCE)


async def export_mbox(
    snapshot_id: uuid.UUID,
    folders: list[str] | None,
    storage: PackStorage | None = None,
    *,
    actor: Principal,
    audited: bool = True,
) -> AsyncGenerator[bytes, None]:
    """The snapshot as an mboxrd stream, a page of messages at a time, the snapshot pinned
    against prune until the stream ends. The first chunk, empty, comes once it is pinned
    and found (NotFound if it is not, Unprocessable if it lacks one of the folders,
    Unavailable if EXPORTS_AT_ONCE are streaming), and the export is in the audit trail
    (someone's mail leaves the platform whole) unless not `audited` (a HEAD, which reads no
    mail): a caller awaiting it before it answers can still answer with the error."""
    storage = storage or default_storage()
    if _exports.locked():
        raise Unavailable(
            f"{EXPORTS_AT_ONCE} exports are streaming from this service already; "
            "ask again once one has ended",
            code="exports_busy",
            retry_after=60,
        )
    async with (
        _exports,
        connection_holding(
            functools.partial(repository.pin_snapshot, snapshot_id=snapshot_id),
            functools.partial(repository.unpin_snapshot, snapshot_id=snapshot_id),
        ) as connection,
    ):
        async with transaction_on(connection) as session:
            snap = await get_snapshot(session, snapshot_id=snapshot_id)
            if folders:
                check_folders(
                    await repository.snapshot_folder_names(session, snap), folders, "folder"
                )
            if audited:
                audit.record(
                    session,
                    actor=actor,
                    action="snapshot.export",
                    target_type="snapshot",
                    target_id=snap.id,
                    after={"mailbox_id": str(snap.mailbox_id), "folders": folders or "all"},
                )
        yield b""
        after: tuple[str, int] | None = None
        while True:  # the snapshot pinned: each page reads it as found
            async with transaction_on(connection) as session:
                page = await repository.snapshot_messages(
                    session, snap, folders=folders, after=after, limit=EXPORT_PAGE
                )
                blobs = await repository.blobs(session, [m.blob_hash for m, _ in page])
            if not page:
                return
            after = (page[-1][1], page[-1][0].uid)
            for message, folder in page:
                mbox = MboxrdEntry(message.internal_date, folder, message.flags)
                # A frame at a time: a 50 MB message is never held whole, and a small one
                # goes out as one chunk.
                entry = mbox.start()
                async for chunk in blob_chunks_in_thread(storage, blobs[bytes(message.blob_hash)]):
                    entry += mbox.feed(chunk)
                    if len(entry) >= FRAME_PLAINTEXT_BYTES:
                        yield entry
                        entry = b""
                yield entry + mbox.end()


class MboxrdEntry:
    """One message as an mboxrd entry, its bytes given a chunk at a time: the `From ` line
    and the folder and flags headers, each line LF-ended, a line that starts with `From `
    after any `>`s quoted with one more `>`, and a blank line after it. Between chunks only
    what is not yet decided is held back: the start of a line that may still become a
    `From ` line, or a CR that may be a CRLF's. A message of one 50 MB line streams too."""

    def __init__(self, when: datetime, folder: str, flags: list[str]) -> None:
        self._when, self._folder, self._flags = when, folder, flags
        self._rest = b""
        self._inside = False  # whether the start of the current line has been given out

    def start(self) -> bytes:
        stamp = self._when.astimezone(UTC).strftime("%a %b %e %H:%M:%S %Y")
        return (
            b"From MAILER-DAEMON " + stamp.encode() + b"\n"
            b"X-Mailops-Folder: " + self._folder.encode() + b"\n"
            b"X-Mailops-Flags: " + " ".join(self._flags).encode() + b"\n"
        )

    def feed(self, chunk: bytes) -> bytes:
        *lines, partial = (self._rest + chunk).split(b"\n")
        self._rest = b""
        out = bytearray()
        for line in lines:
            out += self._quote(line) + line.removesuffix(b"\r") + b"\n"
            self._inside = False
        if not self._inside and _may_become_from(partial):
            self._rest = partial
            return bytes(out)
        if partial.endswith(b"\r"):
            partial, self._rest = partial[:-1], b"\r"
        if partial:
            out += self._quote(partial) + partial
            self._inside = True
        return bytes(out)

    def end(self) -> bytes:
        tail, self._rest = self._rest, b""
        last = b""
        if tail or self._inside:  # a message whose last line has no line end
            last = self._quote(tail) + tail.removesuffix(b"\r") + b"\n"
        self._inside = False
        return last + b"\n"

    def _quote(self, line: bytes) -> bytes:
        """The `>` a line's start takes: one more if it is a `From ` line after any `>`s."""
        starts = not self._inside and line.lstrip(b">").startswith(b"From ")
        return b">" if starts else b""


def _may_become_from(start: bytes) -> bool:
    """Whether the start of a line, as far as it has come, may still be a `From ` line."""
    rest = start.lstrip(b">")
    return len(rest) < 5 and b"From "[: len(rest)] == rest


# ---------------------------------------------------------------- jobs the worker left open

# Long enough for `enqueue_after_commit` to have sent a job its row committed.
ENQUEUE_GRACE = timedelta(minutes=2)


async def fail_abandoned_jobs(now: datetime | None = None) -> int:
    """End `failed`, with the reason, each queued or running job whose arq job is gone.

    A job arq stopped (its timeout, or a crash more times than its retries allow) or that
    never reached the queue would otherwise stay open for ever: an open scheduled run keeps
    its department from being scheduled again. A worker that merely died leaves its job on
    the queue, and another runs it again once its claim lapses (`job_lease_seconds`): that
    one is alive and left alone. Returns how many were ended.
    """
    now = now or datetime.now(UTC)
    ended = 0
    async with unit_of_work() as session:
        for row in await repository.open_jobs(session):
            state = await job_state("backup", queue_job_id(row))
            if state.alive or (state.error is None and row.created_at > now - ENQUEUE_GRACE):
                continue
            how = f"its job ended with {state.error}" if state.error else "its job is gone"
            _end_failed(row, f"abandoned while {row.status}: {how}; request it again")
            ended += 1
    if ended:
        log.warning("abandoned jobs ended failed", extra={"count": ended})
    return ended


# ---------------------------------------------------------------- verify and prune


VERIFY_PAGE = 200  # blobs a verify reads a page of, and reports its progress after
# Damaged blobs a verify lists with the mailboxes and snapshots that need them; the rest it
# counts. A lost pack directory can damage a million blobs, and each report names every
# snapshot through which its message was kept: listed whole, and rewritten every page, the
# report would outgrow the row (and the run) before it ended.
DAMAGE_LISTED = 100


async def execute_verify(verify_id: uuid.UUID, storage: PackStorage | None = None) -> str:
    """Re-read stored blobs (all, or a fraction) and report damage by mailbox and snapshot."""
    storage = storage or default_storage()
    async with unit_of_work() as session:
        run = await repository.verify_run(session, verify_id, lock=True)
        if not _begin(run):
            return "nothing to do"
        fraction = run.fraction
    checked = 0
    damage: list[dict[str, object]] = []
    reported: set[str] = set()
    after = b""
    # A sample starts at a random hash prefix: repeated runs of a fraction read other blobs.
    start = secrets.randbelow(65536)
    while True:
        async with unit_of_work() as session:
            if checked:  # the progress a follower (`mailops backup verify`) shows
                row = await repository.verify_run(session, verify_id)
                assert row is not None
                row.blobs_checked, row.blobs_damaged, row.damage = checked, len(reported), damage
            page = await repository.blob_page(session, after, VERIFY_PAGE, fraction, start)
        if not page:
            break
        after = page[-1].hash
        for blob in page:
            checked += 1
            try:
                await asyncio.to_thread(check_blob, storage, blob)
            except BlobDamaged as first:
                exc = await _recheck(storage, blob, first)
                if exc is None:
                    continue
                # A shared body that is damaged is one report naming every mailbox that
                # needs it, not one more per message that continues with it.
                bad = exc.blob_hash or blob.hash
                if bad.hex() in reported:
                    continue
                reported.add(bad.hex())
                if len(damage) < DAMAGE_LISTED:
                    async with unit_of_work() as session:
                        owners = await repository.damage_owners(session, bad)
                    damage.append({"blob": bad.hex(), "error": str(exc), "mailboxes": owners})
    async with unit_of_work() as session:
        row = await repository.verify_run(session, verify_id)
        assert row is not None
        damaged = len(reported)
        row.blobs_checked, row.blobs_damaged, row.damage = checked, damaged, damage
        row.status = JobStatus.SUCCEEDED.value if not damaged else JobStatus.FAILED.value
        row.reason = None
        if damaged:
            listed = f" (the first {len(damage)} listed)" if damaged > len(damage) else ""
            row.reason = f"{damaged} damaged blobs{listed}"
        row.finished_at = datetime.now(UTC)
        return row.status


async def _recheck(
    storage: PackStorage, blob: StoredBlob, damage: BlobDamaged
) -> BlobDamaged | None:
    """The damage of a blob that did not read back, or None if it is not damage: prune may
    have deleted it since its page was read (nothing needs it) or moved it to a new pack
    (it is read there)."""
    async with unit_of_work() as session:
        now = (await repository.blobs(session, [blob.hash])).get(blob.hash)
    if now is None:
        return None
    if now == blob:
        return damage
    try:
        await asyncio.to_thread(check_blob, storage, now)
    except BlobDamaged as exc:
        return exc
    return None


def retained(snapshots: list[Snapshot], policy: Policy) -> set[uuid.UUID]:
    """The snapshots a policy keeps: the last N, and the newest of each recent day/week/month."""
    ordered = sorted(
        (x for x in snapshots if x.completed_at is not None),
        key=lambda x: x.completed_at,  # type: ignore[arg-type,return-value]
        reverse=True,
    )
    keep = {x.id for x in ordered[: policy.keep_last]}
    for count, bucket in (
        (policy.keep_daily, lambda d: d.strftime("%Y-%m-%d")),
        (policy.keep_weekly, lambda d: f"{d.isocalendar()[0]}-W{d.isocalendar()[1]:02d}"),
        (policy.keep_monthly, lambda d: d.strftime("%Y-%m")),
    ):
        seen: set[str] = set()
        for snap in ordered:
            assert snap.completed_at is not None
            key = bucket(snap.completed_at.astimezone(UTC))
            if key in seen:
                continue
            if len(seen) >= count:
                break
            seen.add(key)
            keep.add(snap.id)
    return keep


# A pack more than this share unused is rewritten by prune: its live blobs copied into a new
# pack, the old one retired. Rewriting costs reading and writing what stays, so a pack a
# little unused is left as it is (restic's default is 5%; its packs are far smaller).
REPACK_UNUSED_SHARE = 0.25
# How long a retired pack's file outlives its retirement, and how old a pack must be before
# it is rewritten or, if no row names it, deleted: far longer than any reader holds a blob's
# place between reading its row and its bytes (one page of a restore, export or verify),
# or than a backup writes to a pack before its first row names it.
PACK_GRACE = timedelta(hours=6)


@dataclass
class PruneResult:
    snapshots: int = 0
    rows: int = 0
    blobs: int = 0
    packs: int = 0
    repacked: int = 0
    freed_bytes: int = 0
    orphans: int = 0
    resealed: int = 0  # blobs moved from an older key to the current one
    older_key_blobs: int = 0  # blobs still under an older key: it must stay configured
    skipped: str | None = None  # why nothing was done


# Called as each pack to rewrite is done, with how many are done and how many there are.
PackProgress = Callable[[int, int], None]


# How long prune waits for the mailbox backups in progress to finish before it gives up
# for this time; backups that start meanwhile wait behind it.
PRUNE_LOCK_WAIT = timedelta(minutes=5)


async def prune(
    storage: PackStorage | None = None,
    now: datetime | None = None,
    progress: PackProgress | None = None,
    lock_wait: timedelta = PRUNE_LOCK_WAIT,
) -> PruneResult:
    """Remove snapshots the policies no longer keep, then catalog rows and blobs that nothing
    references any more; rewrite packs mostly unused, so that the space of pruned mail comes
    back, and packs holding blobs under an older key, so that the key can be retired; delete
    packs no blob is in, and pack files no catalog row names. Each prune is recorded, as
    succeeded, skipped or failed (`PruneRun`).

    The deletions wait for the mailbox backups in progress, and hold new ones back while
    they run (`repository.STORE_LOCK`); rewriting packs runs beside backups."""
    started = datetime.now(UTC)
    result = PruneResult()
    try:
        await _prune(result, storage or default_storage(), now or started, progress, lock_wait)
    except Exception as exc:
        await _record_prune(started, result, PruneStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    status = PruneStatus.SKIPPED if result.skipped else PruneStatus.SUCCEEDED
    await _record_prune(started, result, status, result.skipped)
    return result


async def _record_prune(
    started: datetime, result: PruneResult, status: PruneStatus, reason: str | None
) -> None:
    counts = {k: v for k, v in result.__dict__.items() if isinstance(v, int)}
    async with unit_of_work() as session:
        session.add(PruneRun(status=status.value, reason=reason, started_at=started, counts=counts))


async def _prune(
    result: PruneResult,
    storage: PackStorage,
    now: datetime,
    progress: PackProgress | None,
    lock_wait: timedelta,
) -> None:
    async with get_engine().connect() as connection:
        if not await repository.try_lock_prune(connection):
            result.skipped = "another prune is running"
            log.warning("prune skipped", extra={"reason": result.skipped})
            return
        try:
            await _prune_alone(connection, result, storage, now, progress, lock_wait)
        finally:
            await repository.unlock_prune(connection)


async def _prune_alone(
    connection: AsyncConnection,
    result: PruneResult,
    storage: PackStorage,
    now: datetime,
    progress: PackProgress | None,
    lock_wait: timedelta,
) -> None:
    """The prune, on the connection holding the prune lock."""
    if not await repository.lock_store(connection, lock_wait):
        waited = lock_wait.total_seconds()
        result.skipped = f"mailbox backups in progress held the store for over {waited:g} s"
        log.warning("prune skipped", extra={"reason": result.skipped})
        return
    try:
        # On the connection holding the lock: backups waiting behind it hold pool
        # connections, and a checkout could wait for them.
        await _expire(connection, result)
        # Under the lock too: a pack no blob is in yet may be one a backup is writing
        # (its first blobs were all stored meanwhile by another mailbox's backup).
        async with transaction_on(connection) as session:
            empty = await repository.empty_packs(session, retired_before=now - PACK_GRACE)
            await repository.delete_packs(session, empty)
    finally:
        await repository.unlock_store(connection)
    for pack_id in empty:
        await asyncio.to_thread(storage.delete, pack_id)
    result.packs = len(empty)
    # Re-sealing under the current key id with a secret that no longer opens what is sealed
    # under it would leave that id meaning two secrets: the prune fails here, saying so.
    await _check_backup_key(storage)
    await _repack(storage, now, result, progress)
    # A crash between a pack's creation and its first row (a backup, or a repack) leaves a
    # file nothing names.
    stale = await asyncio.to_thread(lambda: list(storage.written_before(now - PACK_GRACE)))
    async with unit_of_work() as session:
        orphans = await repository.unknown_packs(session, stale)
    for pack_id in orphans:
        await asyncio.to_thread(storage.delete, pack_id)
    result.orphans = len(orphans)


async def _expire(connection: AsyncConnection, result: PruneResult) -> None:
    """Delete the snapshots each mailbox's policy no longer keeps, then the catalog rows and
    blobs no snapshot needs any more, a transaction per mailbox and EXPIRE_CHUNK snapshots
    (their locks fill a bounded table)."""
    async with transaction_on(connection) as session:
        policies = {p.department_id: _policy(p) for p in await repository.policies(session)}
        mailboxes = await repository.mailboxes_with_snapshots(session)
    for mailbox_id, department_id in mailboxes.items():
        async with transaction_on(connection) as session:
            snaps = await repository.committed_snapshots(session, mailbox_id)
        policy = policies.get(department_id, default_policy())
        kept = retained(snaps, policy)
        expired = [x.id for x in snaps if x.id not in kept]
        for start in range(0, len(expired), EXPIRE_CHUNK):
            async with transaction_on(connection) as session:
                deleted = await _delete_unread(session, expired[start : start + EXPIRE_CHUNK])
                # With the snapshots: a prune stopped in between would leave rows that no
                # later prune of the mailbox looks at (nothing of it may expire again).
                if deleted:
                    result.snapshots += deleted
                    result.rows += await repository.delete_unreferenced_rows(session, mailbox_id)
    async with transaction_on(connection) as session:
        result.blobs = await repository.delete_unreferenced_blobs(session)


# Expired snapshots locked and deleted in one transaction: each advisory lock takes a
# slot of PostgreSQL's shared lock table until commit.
EXPIRE_CHUNK = 200


async def _delete_unread(session: AsyncSession, snapshot_ids: list[uuid.UUID]) -> int:
    """Delete those of the expired snapshots no one will read; how many. Kept until a prune
    after the reading: one an export streams or a restore is being requested for (pinned),
    one a queued or running restore reads (looked for once the pins are taken, so a job
    committed before is seen, and one requested after waits for this commit), and a held one
    (see delete_snapshots)."""
    free = await repository.unpinned(session, snapshot_ids)
    restoring = await repository.snapshots_being_restored(session, free)
    return await repository.delete_snapshots(session, [x for x in free if x not in restoring])


async def _repack(
    storage: PackStorage, now: datetime, result: PruneResult, progress: PackProgress | None
) -> None:
    """Copy the live blobs of each mostly unused pack, and of each pack holding blobs sealed
    under an older key, into new packs under the current key; fsync, then point the blobs
    at their copies and retire the old pack in one transaction. A pack that does not read
    back whole (or needs a key no longer configured) is left where it is, for verify to
    report."""
    key_id = get_settings().backup_key_id
    async with unit_of_work() as session:
        packs = await repository.packs_to_rewrite(
            session, REPACK_UNUSED_SHARE, now - PACK_GRACE, key_id
        )
    writer: PackWriter | None = None
    try:
        for done, pack in enumerate(packs):
            if progress is not None:
                progress(done, len(packs))
            async with unit_of_work() as session:
                blobs = await repository.pack_blobs(session, pack.id)
            if writer is None or writer.size >= PACK_TARGET_BYTES:
                if writer is not None:
                    await asyncio.to_thread(writer.close)
                writer = await asyncio.to_thread(storage.create)
            try:
                copies = await asyncio.to_thread(_copy_blobs, storage, blobs, writer, key_id)
            except BlobDamaged as exc:  # damage, or a key no longer configured
                log.warning("pack %s left as it is, for verify to report: %s", pack.id, exc)
                continue
            async with unit_of_work() as session:
                await repository.record_pack(session, writer.pack_id, writer.size)
                await repository.move_blobs(session, pack.id, copies, now)
            result.repacked += 1
            result.freed_bytes += pack.size - pack.live
            result.resealed += sum(b.key_id != key_id for b in blobs)
    finally:
        if writer is not None:
            await asyncio.to_thread(writer.close)
            if writer.size == 0:  # its only pack did not read back whole: nothing names it
                await asyncio.to_thread(storage.delete, writer.pack_id)
    if progress is not None and packs:
        progress(len(packs), len(packs))
    async with unit_of_work() as session:
        result.older_key_blobs = await repository.blobs_under_other_keys(session, key_id)


def _copy_blobs(
    storage: PackStorage, blobs: list[Sealed], to: PackWriter, key_id: str
) -> list[Sealed]:
    """Append the blobs to `to` under `key_id` and fsync; where each copy lies. Raises
    BlobDamaged, having written nothing that stays, if a blob does not read back whole."""
    start = to.size
    try:
        copies = [copy_sealed(storage, blob, to, key_id) for blob in blobs]
    except BlobDamaged:
        to.truncate(start)
        raise
    to.sync()
    return copies
