"""`mailops backup`: back up, restore, verify and prune mailboxes from a shell on the server.

`now`, `restore` and `verify` file their work as the API does (a run and a job for the
backup worker), then follow it to its end, printing progress. A backup worker must be
running: `mailops up` starts one, or `mailops worker backup`. Prune, the worker's nightly
job, runs in the command itself, for space needed now; so does export, which writes a file
here.
"""

from __future__ import annotations

import asyncio
import errno
import getpass
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Protocol, TypeVar

import typer
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from cli import fail
from shared.auth import Principal
from shared.errors import DomainError, NotFound
from shared.models import Department, Mailbox, MailboxStatus, Role

backup_app = typer.Typer(
    help="Back up, restore, export, hold, verify and prune mailbox backups; the backup "
    "worker does backups, restores and verifies, this follows them and shows progress. "
    "Start with `mailops backup now ADDRESS`, then `mailops backup snapshots ADDRESS`.",
    no_args_is_help=True,
)

WorkerWait = Annotated[
    float,
    typer.Option(help="Seconds to wait for a backup worker to take the job before giving up"),
]


class _Job(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...


JobT = TypeVar("JobT", bound=_Job)


class _NoWorker(Exception):
    """Nothing took the job off the queue in time."""


class _JobFailed(Exception):
    """The job ended `failed`; the message says why and what it got done."""


def _actor() -> Principal:
    # Whoever runs this on the server can reach the database directly: an admin.
    return Principal(id=uuid.UUID(int=0), name=f"cli:{getpass.getuser()}", role=Role.ADMIN)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


async def _mailbox_id(session: AsyncSession, address: str) -> uuid.UUID:
    """The mailbox of this address (or id): the one in use, else the one purged mailbox that
    had it. A purged mailbox's address may be given again, and its backups stay: with
    several former owners, it says which ids to choose from."""
    try:
        by_id = await session.get(Mailbox, uuid.UUID(address))
    except ValueError:  # an address
        pass
    else:
        if by_id is None:
            raise NotFound(f"no mailbox {address}")
        return by_id.id
    rows = (await session.scalars(select(Mailbox).where(Mailbox.address == address.lower()))).all()
    live = [m for m in rows if m.status != MailboxStatus.PURGED]
    if live:
        return live[0].id  # an address is unique among mailboxes in use
    if len(rows) == 1:
        return rows[0].id
    if not rows:
        raise NotFound(f"no mailbox {address}")
    former = ", ".join(f"{m.id} (created {m.created_at:%Y-%m-%d})" for m in rows)
    raise NotFound(f"{address} was the address of several purged mailboxes: {former}; give its id")


async def _follow(
    kind: str,
    load: Callable[[AsyncSession], Awaitable[JobT]],
    describe: Callable[[JobT], str],
    worker_wait: float,
) -> JobT:
    """Poll the job (a `kind`: run, restore, verify) until it ends, printing its progress
    when it changes. A job still queued after `worker_wait` ends the command if no worker
    is alive (by its heartbeat), and is waited for if one is (busy with other jobs); a job
    whose worker stops meanwhile is said to be waiting for one."""
    from shared.db import unit_of_work
    from shared.queue import HEARTBEAT_STALE_SECONDS, heartbeat_age

    started, last, looked = time.monotonic(), "", time.monotonic()
    worker_gone = False
    while True:
        async with unit_of_work() as session:
            job = await load(session)
        if job.status in ("succeeded", "failed"):
            return job
        if time.monotonic() - looked > 30 or (
            job.status == "queued" and time.monotonic() - started > worker_wait
        ):
            looked = time.monotonic()
            age = await heartbeat_age("backup")
            worker_gone = age is None or age > HEARTBEAT_STALE_SECONDS
        if job.status == "queued" and time.monotonic() - started > worker_wait and worker_gone:
            raise _NoWorker
        if worker_gone:
            line = (
                f"{kind} {job.id} {job.status}: no backup worker is running (no heartbeat); "
                "it goes on once one runs (`mailops worker backup`)"
            )
        elif job.status == "queued":
            line = f"{kind} {job.id} queued, waiting for the backup worker"
        else:
            line = describe(job)
        if line != last:
            typer.echo(line, err=True)
            last = line
        await asyncio.sleep(0.5)


# What a connection that cannot be made fails with (beside ConnectionError's own errnos).
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


def _run(work: Callable[[], Awaitable[str]]) -> None:
    """Run a command's work; domain errors and a missing worker end it with a hint."""
    from services.backup.engine.storage import BlobDamaged
    from services.backup.service import BackupKeyMismatch
    from shared.db import get_engine

    async def main() -> str:
        try:
            return await work()
        finally:
            await get_engine().dispose()

    try:
        summary = asyncio.run(main())
    except DomainError as exc:
        fail(exc.detail)
    except ValidationError as exc:
        fail(
            "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()
            )
        )
    except _NoWorker:
        fail(
            "no backup worker took the job; start one with `mailops worker backup` (or "
            "`mailops up`): the job stays queued and runs once a worker is there"
        )
    except (ConnectionError, TimeoutError, socket.gaierror, RedisError) as exc:
        fail(f"cannot reach the database or the job queue: {exc}")
    except OSError as exc:
        if exc.errno in _UNREACHABLE or exc.errno is None:  # None: asyncpg's "Multiple exceptions"
            fail(f"cannot reach the database or the job queue: {exc}")
        fail(f"the backup store: {exc}")  # its disk: full, unmounted, not writable
    except (BackupKeyMismatch, BlobDamaged) as exc:
        fail(str(exc))
    except DBAPIError as exc:
        fail(
            f"the database is not ready ({str(exc.orig).strip()}); "
            "`mailops db upgrade` creates and migrates it"
        )
    except _JobFailed as exc:
        fail(str(exc))
    typer.echo(summary)


@backup_app.command("now")
def backup_now(
    address: Annotated[str | None, typer.Argument(help="The mailbox to back up")] = None,
    department: Annotated[
        str | None, typer.Option(help="Back up every mailbox of this department (its name)")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Back up every mailbox")] = False,
    worker_wait: WorkerWait = 30.0,
) -> None:
    """Back up one mailbox, a department or everything now, and follow the run.

    Example: mailops backup now ada@example.com (or --department Finance, or --all)."""
    if sum([address is not None, department is not None, everything]) != 1:
        fail("give exactly one of ADDRESS, --department NAME or --all")

    async def work() -> str:
        from services.backup import repository, service
        from services.backup import schemas as s
        from shared.db import unit_of_work

        async with unit_of_work() as session:
            mailbox_id = await _mailbox_id(session, address) if address else None
            department_id = None
            if department is not None:
                department_id = await session.scalar(
                    select(Department.id).where(Department.name == department)
                )
                if department_id is None:
                    raise NotFound(f"no department named {department!r}")
            run = await service.request_backup(
                session,
                actor=_actor(),
                data=s.BackupRequest(
                    mailbox_id=mailbox_id, department_id=department_id, all=everything
                ),
            )
            run_id = run.id

        async def load(session: AsyncSession) -> s.BackupRunOut:
            row = await repository.backup_run(session, run_id)
            assert row is not None
            return service.run_out(row)

        def describe(run: s.BackupRunOut) -> str:
            return (
                f"{run.mailboxes_done + run.mailboxes_failed}/{run.mailboxes_total} mailboxes, "
                f"{run.messages_fetched:,} messages fetched, "
                f"{_megabytes(run.bytes_stored)} stored"
            )

        done = await _follow("run", load, describe, worker_wait)
        counts = (
            f"{done.mailboxes_done} of {done.mailboxes_total} mailboxes backed up, "
            f"{done.messages_fetched:,} messages fetched ({_megabytes(done.bytes_read)}), "
            f"{_megabytes(done.bytes_stored)} stored"
        )
        if done.status == "failed":
            raise _JobFailed(f"{done.reason}\n{counts}")
        return f"{counts}, in {done.duration_seconds or 0:.1f} s (run {done.id})"

    _run(work)


@backup_app.command("snapshots")
def backup_snapshots(
    address: Annotated[str, typer.Argument(help="The mailbox whose snapshots to list")],
) -> None:
    """List a mailbox's snapshots, newest first: what `restore --snapshot` takes.

    Example: mailops backup snapshots ada@example.com (a former owner's mailbox: its id)."""

    async def work() -> str:
        from services.backup import repository
        from shared.db import unit_of_work

        async with unit_of_work() as session:
            mailbox_id = await _mailbox_id(session, address)
            snaps = await repository.committed_snapshots(session, mailbox_id)
        if not snaps:
            return f"{address} has no snapshot yet; `mailops backup now {address}` takes one"
        lines = [f"{'snapshot':36}  {'completed (UTC)':19}  {'messages':>8}  {'size':>10}"]
        for snap in sorted(snaps, key=lambda x: x.seq, reverse=True):
            when = snap.completed_at.astimezone(UTC) if snap.completed_at else None
            held = f"  held: {snap.hold_reason}" if snap.held_at else ""
            lines.append(
                f"{snap.id}  {when:%Y-%m-%d %H:%M:%S}  {snap.message_count:>8,}  "
                f"{_megabytes(snap.total_bytes):>10}{held}"
            )
        return "\n".join(lines)

    _run(work)


SnapshotArgument = Annotated[
    uuid.UUID, typer.Argument(help="The snapshot (see `mailops backup snapshots`)")
]


@backup_app.command("hold")
def backup_hold(
    snapshot: SnapshotArgument,
    reason: Annotated[str, typer.Option(help="Why it must be kept: the case, request or ticket")],
) -> None:
    """Keep a snapshot from prune whatever retention says, for a legal or audit request.

    The hold lasts until `mailops backup release` ends it.

    Example: mailops backup hold SNAPSHOT --reason "audit 2026-14"."""

    async def work() -> str:
        from services.backup import schemas as s
        from services.backup import service
        from shared.db import unit_of_work

        async with unit_of_work() as session:
            await service.hold_snapshot(
                session, actor=_actor(), snapshot_id=snapshot, data=s.HoldIn(reason=reason)
            )
        return f"snapshot {snapshot} is held: prune keeps it until it is released"

    _run(work)


@backup_app.command("release")
def backup_release(snapshot: SnapshotArgument) -> None:
    """End a snapshot's hold: its department's retention applies to it again."""

    async def work() -> str:
        from services.backup import service
        from shared.db import unit_of_work

        async with unit_of_work() as session:
            await service.release_snapshot(session, actor=_actor(), snapshot_id=snapshot)
        return f"snapshot {snapshot} is not held: retention applies to it again"

    _run(work)


@contextmanager
def _whole_file(path: Path) -> Iterator[Callable[[bytes], None]]:
    """Write `path` whole or not at all: as PATH.part, renamed once complete and on disk,
    removed if anything stops it."""
    partial = path.with_name(path.name + ".part")
    with _disk_errors(partial):
        # Someone's mail, decrypted: for whoever runs the export only.
        out = os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

    def write(data: bytes) -> None:
        with _disk_errors(partial):
            out.write(data)

    try:
        with out:
            yield write
            with _disk_errors(partial):
                out.flush()
                os.fsync(out.fileno())
        with _disk_errors(partial):
            partial.rename(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """A write the disk refuses ends the command naming the file, not as the database's
    OSError (which _run reports as unreachable)."""
    try:
        yield
    except OSError as exc:
        raise _JobFailed(f"cannot write {path}: {exc.strerror or exc}; nothing was kept") from exc


@backup_app.command("export")
def backup_export(
    snapshot: SnapshotArgument,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The mbox file to write, which must not exist yet (default: "
            "snapshot-SNAPSHOT.mbox here)",
        ),
    ] = None,
    folder: Annotated[
        list[str] | None, typer.Option(help="Only this folder of the snapshot (repeatable)")
    ] = None,
) -> None:
    """Write a snapshot's mail to an mbox file, for a legal or audit request.

    Each message comes as it was backed up, with X-Mailops-Folder and X-Mailops-Flags headers.

    Prune keeps the snapshot until the export ends. This runs here, not in the worker.

    The file appears whole or not at all: it is written beside itself as FILE.part first."""
    path = output or Path(f"snapshot-{snapshot}.mbox")
    if path.exists():
        fail(f"{path} exists already; remove it, or write elsewhere with --output")

    async def work() -> str:
        from services.backup import repository, service
        from shared.db import unit_of_work

        async with unit_of_work() as session:
            snap = await service.get_snapshot(session, snapshot_id=snapshot)
            counts = await repository.snapshot_message_counts(
                session, snap, folders=folder or None, message_ids=None
            )
        total, written, size, shown = sum(counts.values()), 0, 0, time.monotonic()
        with _whole_file(path) as write:
            async for chunk in service.export_mbox(snapshot, folder or None, actor=_actor()):
                write(chunk)
                size += len(chunk)
                # Only an entry's first chunk starts with `From `: in a message's lines
                # mboxrd quotes it.
                written += chunk.startswith(b"From ")
                if time.monotonic() - shown >= 2:
                    typer.echo(f"{written:,} of {total:,} messages written", err=True)
                    shown = time.monotonic()
        return f"{written:,} messages ({_megabytes(size)}) of snapshot {snapshot} written to {path}"

    _run(work)


@backup_app.command("restore")
def backup_restore(
    address: Annotated[str, typer.Argument(help="The mailbox whose mail to restore")],
    snapshot: Annotated[
        uuid.UUID | None, typer.Option(help="The snapshot (see `mailops backup snapshots`)")
    ] = None,
    at: Annotated[
        datetime | None,
        typer.Option(
            help="Restore the mailbox as it was at this time, UTC (the snapshot before it)",
            metavar="2026-05-01T14:00",
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"],
        ),
    ] = None,
    folder: Annotated[
        list[str] | None, typer.Option(help="Only this folder of the snapshot (repeatable)")
    ] = None,
    into_folder: Annotated[
        str | None,
        typer.Option(help="Restore under this folder instead of over the original folders"),
    ] = None,
    worker_wait: WorkerWait = 30.0,
) -> None:
    """Restore a mailbox's mail from a snapshot (the latest unless --snapshot or --at).

    Messages already there with the same bytes are skipped: running it twice adds nothing.

    Flags and received dates come back as they were.

    Example: mailops backup restore ada@example.com --at 2026-05-01T14:00 --folder INBOX.
    """
    if snapshot is not None and at is not None:
        fail("give --snapshot or --at, not both")

    async def work() -> str:
        from services.backup import schemas as s
        from services.backup import service
        from shared.db import unit_of_work
        from shared.models.backup import RestoreJob, RestoreMode

        target = (
            s.RestoreTarget(mode=RestoreMode.FOLDER, folder=into_folder)
            if into_folder
            else s.RestoreTarget(mode=RestoreMode.ORIGINAL)
        )
        when = at.replace(tzinfo=at.tzinfo or UTC) if at else None
        async with unit_of_work() as session:
            job = await service.request_restore(
                session,
                actor=_actor(),
                data=s.RestoreRequest(
                    mailbox_id=await _mailbox_id(session, address),
                    snapshot_id=snapshot,
                    at=None if snapshot else (when or datetime.now(UTC)),
                    folders=folder or None,
                    target=target,
                ),
            )
            restore_id = job.id

        async def load(session: AsyncSession) -> RestoreJob:
            return await service.get_restore(session, restore_id=restore_id)

        def describe(job: RestoreJob) -> str:
            return (
                f"{job.done:,}/{job.total:,} messages: {job.restored:,} restored, "
                f"{job.skipped:,} already there"
            )

        done = await _follow("restore", load, describe, worker_wait)
        counts = f"{done.restored:,} messages restored, {done.skipped:,} already there"
        if done.status == "failed":
            raise _JobFailed(f"{done.reason}\n{counts} before it stopped")
        return f"{counts} (of {done.total:,} in snapshot {done.snapshot_id})"

    _run(work)


@backup_app.command("verify")
def backup_verify(
    fraction: Annotated[
        float, typer.Option(min=0.0001, max=1.0, help="Share of the stored data to re-read")
    ] = 1.0,
    worker_wait: WorkerWait = 30.0,
) -> None:
    """Re-read stored backup data and check every hash; name the mailboxes of any damage.

    Example: mailops backup verify --fraction 0.1 (a tenth, from a random start: runs add up)."""

    async def work() -> str:
        from services.backup import schemas as s
        from services.backup import service
        from shared.db import unit_of_work
        from shared.models.backup import VerifyRun

        async with unit_of_work() as session:
            run = await service.request_verify(
                session, actor=_actor(), data=s.VerifyRequest(fraction=fraction)
            )
            verify_id = run.id

        async def load(session: AsyncSession) -> VerifyRun:
            return await service.get_verify(session, verify_id=verify_id)

        def checking(run: VerifyRun) -> str:
            found = f", {run.blobs_damaged} damaged" if run.blobs_damaged else ""
            return f"verify {run.id}: {run.blobs_checked:,} blobs checked{found}"

        done = await _follow("verify", load, checking, worker_wait)
        if not done.damage and done.status == "succeeded":
            return f"{done.blobs_checked:,} blobs checked, no damage"
        lines = [str(done.reason)]
        for report in done.damage:
            owners = ", ".join(
                f"{m['address']} ({len(m['snapshot_ids'])} snapshots)" for m in report["mailboxes"]
            )
            lines.append(f"  blob {report['blob'][:16]}: {report['error']}; needed by {owners}")
        raise _JobFailed("\n".join(lines))

    _run(work)


@backup_app.command("prune")
def backup_prune(
    wait: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Seconds to wait for the mailbox backups in progress to finish (new ones "
            "wait for prune meanwhile)",
        ),
    ] = 300.0,
) -> None:
    """Apply every department's retention now and give back the space no snapshot needs.

    The backup worker also does this each night at 03:30; this runs here, not in the worker.

    It re-seals blobs under an older key too, and says how many are left.

    At 0, and once the old pack files are gone (a prune after the 6-hour grace), it can go.

    It needs the worker's backup key settings (MAILOPS_BACKUP_KEY, the previous keys)."""

    shown = 0.0

    def progress(done: int, total: int) -> None:
        # A pack is up to 64 MB: a key rotation of a large store rewrites thousands.
        nonlocal shown
        if done == total or time.monotonic() - shown >= 2:
            typer.echo(f"rewriting packs: {done} of {total} done", err=True)
            shown = time.monotonic()

    async def work() -> str:
        from services.backup import service

        result = await service.prune(progress=progress, lock_wait=timedelta(seconds=wait))
        if result.skipped:
            later = (
                "" if result.skipped == "another prune is running" else ", or with a longer --wait"
            )
            raise _JobFailed(f"nothing pruned: {result.skipped}; run it again later{later}")
        hours = service.PACK_GRACE.total_seconds() / 3600
        said = (
            f"expired {result.snapshots} snapshot(s) and deleted {result.blobs} blob(s) no "
            f"snapshot needs; rewrote {result.repacked} pack(s) without their "
            f"{_megabytes(result.freed_bytes)} of unused data, re-sealing {result.resealed} "
            f"blob(s) under the current key (the old files go in {hours:g} hours); deleted "
            f"{result.packs} empty pack(s) and {result.orphans} stray pack file(s)"
        )
        if result.older_key_blobs:
            said += (
                f"\n{result.older_key_blobs} blob(s) are still under an older key: keep it in "
                f"MAILOPS_BACKUP_PREVIOUS_KEYS (packs younger than {hours:g} hours are "
                "rewritten by a later prune; a pack that does not read back is for verify)"
            )
        return said

    _run(work)
