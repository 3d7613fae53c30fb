"""Jobs the worker left open: a run arq timed out, or one whose job never reached the queue,
ends `failed` with the reason instead of holding its department's schedule back;
a job still on the queue is left alone; an error outside any mailbox fails the run at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from arq.constants import job_key_prefix

from services.backup import repository, service
from shared.db import unit_of_work
from shared.models.backup import BackupRun, BackupScope, JobStatus
from shared.queue import enqueue, final_backup_job_id, get_pool, queue_name
from tests.backup import helpers
from tests.conftest import run_worker


async def _run(run_id) -> BackupRun:
    async with unit_of_work() as session:
        run = await repository.backup_run(session, run_id)
        assert run is not None
        return run


@pytest.mark.usefixtures("mail_stack")
async def test_a_scheduled_run_arq_timed_out_ends_failed_and_frees_its_department(seed) -> None:
    department = await seed.department()
    await seed.mailbox("pw-1234567890", department=department)
    await service.schedule_due_backups()
    await helpers.set_aside_other_scheduled_runs({department.id})
    (run,) = await helpers.scheduled_runs({department.id})

    await run_worker("backup", job_timeout=0.001)  # arq cancels the job at its first await
    assert (await _run(run.id)).status in ("queued", "running")
    await service.schedule_due_backups()
    assert len(await helpers.scheduled_runs({department.id})) == 1, "the open run holds it back"

    assert await service.fail_abandoned_jobs() >= 1
    ended = await _run(run.id)
    assert ended.status == "failed" and ended.finished_at is not None
    assert "TimeoutError" in ended.reason and "request it again" in ended.reason
    await service.schedule_due_backups()
    runs = await helpers.scheduled_runs({department.id})
    assert sorted(r.status for r in runs) == ["failed", "queued"]
    await helpers.set_aside_other_scheduled_runs(set())


async def test_a_run_whose_job_never_reached_the_queue_ends_failed_after_the_grace() -> None:
    async with unit_of_work() as session:
        run = BackupRun(status=JobStatus.QUEUED.value, scope=BackupScope.ALL.value)
        session.add(run)  # committed with no job enqueued, as if Redis was down then
    now = datetime.now(UTC)

    await service.fail_abandoned_jobs(now)
    assert (await _run(run.id)).status == "queued", "its job may still be on the way"
    await service.fail_abandoned_jobs(now + service.ENQUEUE_GRACE + timedelta(seconds=1))
    ended = await _run(run.id)
    assert ended.status == "failed"
    assert ended.reason == "abandoned while queued: its job is gone; request it again"


async def test_a_job_still_on_the_queue_is_left_alone() -> None:
    async with unit_of_work() as session:
        run = await service.create_run(session, scope=BackupScope.ALL, requested_by="test")
    await service.fail_abandoned_jobs(datetime.now(UTC) + timedelta(hours=1))
    assert (await _run(run.id)).status == "queued"
    async with unit_of_work() as session:
        (await repository.backup_run(session, run.id)).status = "failed"  # a no-op for the worker
    await run_worker("backup")


async def test_an_error_outside_any_mailbox_ends_the_run_failed_with_it(monkeypatch) -> None:
    async def database_gone(*args: object, **kwargs: object) -> list[object]:
        raise ConnectionResetError("connection to the database was lost")

    monkeypatch.setattr(repository, "backed_up_mailbox_ids", database_gone)
    async with unit_of_work() as session:
        run = await service.create_run(session, scope=BackupScope.ALL, requested_by="test")

    assert await service.execute_backup_run(run.id) == "failed"
    ended = await _run(run.id)
    assert ended.reason == (
        "the run stopped after backing up 0 mailboxes: "
        "ConnectionResetError: connection to the database was lost"
    )
    assert ended.finished_at is not None
    await run_worker("backup")  # its queued job now finds it ended: nothing to do


async def test_a_final_backup_still_on_the_queue_is_left_alone(seed) -> None:
    """Its run row is made by the job provisioning enqueued, under that job's id."""
    mailbox = await seed.mailbox("pw-1234567890")
    job_id = final_backup_job_id(mailbox.id)
    await enqueue("backup", "final_backup", job_id=job_id, mailbox_id=str(mailbox.id))
    async with unit_of_work() as session:
        run = BackupRun(
            status=JobStatus.RUNNING.value, scope=BackupScope.FINAL.value, mailbox_id=mailbox.id
        )
        session.add(run)
    try:
        await service.fail_abandoned_jobs(datetime.now(UTC) + timedelta(hours=1))
        assert (await _run(run.id)).status == "running"
    finally:  # take the job back off the queue (the mailbox is not being deleted); end the run
        pool = await get_pool()
        await pool.zrem(queue_name("backup"), job_id)
        await pool.delete(job_key_prefix + job_id)
        async with unit_of_work() as session:
            (await repository.backup_run(session, run.id)).status = "failed"
