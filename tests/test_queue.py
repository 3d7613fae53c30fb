"""The job queue: JSON arguments, enqueue after commit, business-key job ids, real workers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix
from arq.worker import func
from sqlalchemy import select

from shared import queue
from shared.db import unit_of_work
from shared.models import Mailbox, MailboxStatus
from shared.settings import get_settings
from tests.conftest import run_worker


def test_job_data_is_json_and_failures_keep_their_reason() -> None:
    assert queue.deserialize(queue.serialize({"mailbox_id": "x"})) == {"mailbox_id": "x"}
    assert queue.deserialize(queue.serialize({"r": ValueError("quota")})) == {
        "r": {"error": "ValueError", "message": "quota"}
    }
    with pytest.raises(TypeError):
        queue.serialize({"mailbox": object()})


async def test_jobs_are_sent_only_when_the_transaction_commits() -> None:
    pool = await queue.get_pool()
    job_id = f"test-{uuid.uuid4().hex}"
    name = queue.queue_name("monitor")
    with pytest.raises(RuntimeError):
        async with unit_of_work() as session:
            queue.enqueue_after_commit(session, "monitor", "noop", job_id=job_id)
            raise RuntimeError("roll back")
    assert await pool.zscore(name, job_id) is None
    async with unit_of_work() as session:
        queue.enqueue_after_commit(session, "monitor", "noop", job_id=job_id)
    assert await pool.zscore(name, job_id) is not None
    assert not await queue.enqueue("monitor", "noop", job_id=job_id), "same job id twice"
    await pool.zrem(name, job_id)
    await pool.delete(f"arq:job:{job_id}")


async def test_a_running_job_is_claimed_for_the_lease_and_released_when_it_ends() -> None:
    """Not for its timeout (ten minutes for the monitor's jobs): a worker killed mid-job
    leaves it to the next worker a lease later."""
    claims: list[int] = []

    async def claimed(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(0.05)  # the claim has been renewed since arq made it
        claims.append(await ctx["redis"].pttl(in_progress_key_prefix + ctx["job_id"]))

    pool = await queue.get_pool()
    own_queue = f"{get_settings().queue_prefix}:queue:test-lease-{uuid.uuid4().hex}"
    job_id = f"test-{uuid.uuid4().hex}"
    await pool.enqueue_job("claimed", _job_id=job_id, _queue_name=own_queue)
    await run_worker("monitor", functions=[func(claimed, name="claimed")], queue_name=own_queue)
    assert 0 < claims[0] <= get_settings().job_lease_seconds * 1000
    assert not await pool.exists(in_progress_key_prefix + job_id)


async def test_non_json_arguments_are_refused_before_commit() -> None:
    async with unit_of_work() as session:
        with pytest.raises(TypeError):  # at the call, not once the transaction has committed
            queue.enqueue_after_commit(session, "monitor", "noop", job_id="x", when=object())


@pytest.mark.usefixtures("mail_stack")
async def test_provisioning_worker_makes_a_new_mailbox_active(seed) -> None:
    mailbox = await seed.mailbox("pw-1234567890", status=MailboxStatus.PROVISIONING)
    await queue.enqueue(
        "provisioning",
        "prepare_mailbox",
        job_id=f"prepare:{mailbox.id}",
        mailbox_id=str(mailbox.id),
    )
    await run_worker("provisioning")
    async with unit_of_work() as session:
        status = await session.scalar(select(Mailbox.status).where(Mailbox.id == mailbox.id))
    assert status == MailboxStatus.ACTIVE
