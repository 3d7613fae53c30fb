"""`mailops backup`: files the work for the backup worker and follows it to its end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from services.backup import service
from services.backup.engine.backup import backup_mailbox, mailbox_lock
from shared import queue
from shared.db import unit_of_work
from shared.models import Mailbox, MailboxStatus
from shared.models.backup import BackupPack
from tests.backup import helpers
from tests.conftest import run_worker

pytestmark = pytest.mark.usefixtures("mail_stack")


async def mailops_with_worker(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `mailops ARGS` while a backup worker drains the queue, until the command ends."""
    command = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 60
    while command.poll() is None and time.monotonic() < deadline:
        await run_worker("backup")
        await asyncio.sleep(0.2)
    stdout, stderr = command.communicate(timeout=10)
    return subprocess.CompletedProcess(command.args, command.returncode, stdout, stderr)


def backup_command(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `mailops backup ARGUMENTS`, a command that needs no worker."""
    return subprocess.run(
        [sys.executable, "-m", "cli", "backup", *arguments],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )


async def test_backup_now_and_restore_follow_the_worker_and_bring_mail_back(seed, corpus) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(6, seed=41))
    before = await helpers.state(mailbox.address)

    backed_up = await mailops_with_worker("backup", "now", mailbox.address)
    assert backed_up.returncode == 0, backed_up.stderr
    assert "1 of 1 mailboxes backed up, 6 messages fetched" in backed_up.stdout

    listed = await mailops_with_worker("backup", "snapshots", mailbox.address)
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 2

    await helpers.empty(mailbox.address)
    restored = await mailops_with_worker("backup", "restore", mailbox.address)
    assert restored.returncode == 0, restored.stderr
    assert "6 messages restored, 0 already there" in restored.stdout
    assert await helpers.state(mailbox.address) == before

    verified = await mailops_with_worker("backup", "verify", "--fraction", "0.01")
    assert verified.returncode == 0, verified.stderr
    assert "no damage" in verified.stdout


async def test_without_a_worker_the_command_says_how_to_start_one(seed) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli", "backup", "now", mailbox.address, "--worker-wait", "1"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert result.returncode == 1
    assert "mailops worker backup" in result.stderr
    assert "queued" in result.stderr  # the progress line, and the job stays filed
    await run_worker("backup")  # leave no job behind for other tests


def test_unknown_mailbox_missing_scope_and_unmigrated_database_say_what_to_do() -> None:
    def mailops(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "backup", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )

    unknown = mailops("now", "nobody@nowhere.test")
    assert unknown.returncode == 1 and "no mailbox nobody@nowhere.test" in unknown.stderr
    neither = mailops("now")
    assert neither.returncode == 1 and "ADDRESS, --department NAME or --all" in neither.stderr
    database = os.environ["MAILOPS_DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    unmigrated = mailops("verify", MAILOPS_DATABASE_URL=database)
    assert unmigrated.returncode == 1 and "`mailops db upgrade`" in unmigrated.stderr


async def test_verify_that_finds_damage_fails_and_names_the_mailbox(seed, corpus, storage) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(2, seed=43))
    await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    with helpers.corrupted(storage, await helpers.message_blob(mailbox.id)):
        result = await mailops_with_worker("backup", "verify")
    assert result.returncode == 1
    assert "1 damaged blobs" in result.stderr and mailbox.address in result.stderr


async def test_prune_applies_retention_now_shows_progress_and_says_what_it_gave_back(
    seed, storage, corpus
) -> None:
    _, mailbox, _, _ = await helpers.mostly_expired(
        seed, storage, corpus(3, seed=44), deleted_uids="1:2"
    )
    pack_id = (await helpers.message_blob(mailbox.id)).pack_id
    async with unit_of_work() as session:  # old enough for prune to rewrite it
        await session.execute(
            update(BackupPack)
            .where(BackupPack.id == pack_id)
            .values(created_at=datetime.now(UTC) - 2 * service.PACK_GRACE)
        )

    def prune(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "backup", "prune", *options],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=60,
        )

    pruned = await asyncio.to_thread(prune)
    assert pruned.returncode == 0, pruned.stderr
    expired = int(pruned.stdout.split("expired ")[1].split(" ")[0])
    assert expired >= 1 and "rewrote 1 pack(s)" in pruned.stdout, pruned.stdout
    assert "rewriting packs: 1 of 1 done" in pruned.stderr, pruned.stderr

    async with mailbox_lock(mailbox.id):  # as a backup of it in progress holds it
        busy = await asyncio.to_thread(prune, "--wait", "0.5")
    assert busy.returncode == 1
    assert (
        "nothing pruned: mailbox backups in progress held the store for over 0.5 s; "
        "run it again later, or with a longer --wait"
    ) in busy.stderr


async def test_hold_and_release_say_what_prune_does_with_the_snapshot(seed, storage) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)

    held = await asyncio.to_thread(backup_command, "hold", str(snapshot.id), "--reason", "audit 7")
    assert held.returncode == 0, held.stderr
    assert "prune keeps it until it is released" in held.stdout
    listed = await asyncio.to_thread(backup_command, "snapshots", mailbox.address)
    assert listed.stdout.strip().splitlines()[1].endswith("held: audit 7")
    released = await asyncio.to_thread(backup_command, "release", str(snapshot.id))
    assert released.returncode == 0 and "retention applies to it again" in released.stdout
    blank = await asyncio.to_thread(backup_command, "hold", str(snapshot.id), "--reason", " ")
    assert (
        blank.returncode == 1 and "reason: String should have at least 1 character" in blank.stderr
    )


async def test_export_writes_a_snapshots_folder_to_an_mbox_file_whole_or_not_at_all(
    seed, storage, corpus, tmp_path
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(3, seed=70))
    await helpers.append(mailbox.address, "Sent", corpus(2, seed=71))
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    out = tmp_path / "case-12.mbox"

    def export(*arguments: str) -> subprocess.CompletedProcess[str]:
        return backup_command("export", str(snapshot.id), *arguments)

    exported = await asyncio.to_thread(export, "--output", str(out), "--folder", "INBOX")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("3 messages (") and str(out) in exported.stdout
    lines = out.read_bytes().split(b"\n")
    assert sum(line.startswith(b"From MAILER-DAEMON ") for line in lines) == 3
    assert lines.count(b"X-Mailops-Folder: INBOX") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case-12.mbox"]

    again = await asyncio.to_thread(export, "--output", str(out))
    assert again.returncode == 1 and "exists already" in again.stderr
    unknown = await asyncio.to_thread(export, "-o", str(tmp_path / "x"), "--folder", "Nowhere")
    assert unknown.returncode == 1 and "the snapshot has no folder 'Nowhere'" in unknown.stderr
    nowhere = await asyncio.to_thread(export, "-o", str(tmp_path / "gone" / "x.mbox"))
    assert nowhere.returncode == 1
    assert "cannot write" in nowhere.stderr and "No such file or directory" in nowhere.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case-12.mbox"]


async def test_an_address_given_again_names_the_mailbox_in_use_and_an_id_the_former_one(
    seed, storage, corpus
) -> None:
    """A purged mailbox's backups stay after its address is given to someone new."""
    former, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(1, seed=128)})
    async with unit_of_work() as session:
        await session.execute(
            update(Mailbox).where(Mailbox.id == former.id).values(status=MailboxStatus.PURGED)
        )
    assert str(snapshot.id) in backup_command("snapshots", former.address).stdout
    await seed.mailbox("pw-1234567890", address=former.address)  # the address given again
    listed = backup_command("snapshots", former.address)
    assert listed.returncode == 0 and str(snapshot.id) not in listed.stdout, listed.stderr
    by_id = backup_command("snapshots", str(former.id))
    assert str(snapshot.id) in by_id.stdout


async def test_a_prune_while_another_runs_says_to_try_later_and_not_to_wait_longer() -> None:
    from services.backup import repository
    from shared.db import get_engine

    async with get_engine().connect() as first:
        assert await repository.try_lock_prune(first)
        try:
            result = await asyncio.to_thread(backup_command, "prune")
        finally:
            await repository.unlock_prune(first)
    assert result.returncode == 1
    assert "another prune is running; run it again later" in result.stderr
    assert "--wait" not in result.stderr


async def test_a_job_queued_behind_a_busy_worker_is_waited_for_not_given_up(seed, corpus) -> None:
    """A worker alive (its heartbeat fresh) but busy: giving up would invite a second
    request of the same work."""
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(1, seed=132))
    pool = await queue.get_pool()
    await pool.set(queue.heartbeat_key("backup"), str(time.time()), ex=600)
    try:
        command = subprocess.Popen(
            [sys.executable, "-m", "cli", "backup", "now", mailbox.address, "--worker-wait", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        await asyncio.sleep(4)
        assert command.poll() is None, "it gave up on a job a live worker will take"
        deadline = time.monotonic() + 60
        while command.poll() is None and time.monotonic() < deadline:
            await run_worker("backup")
            await asyncio.sleep(0.2)
        stdout, stderr = command.communicate(timeout=10)
    finally:
        await pool.delete(queue.heartbeat_key("backup"))
    assert command.returncode == 0, stderr
    assert "1 of 1 mailboxes backed up" in stdout
