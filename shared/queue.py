"""The Redis job queue (arq) behind one small interface.

Job arguments are JSON, never pickle; each service has its own named queue; job ids come
from business keys, so enqueueing the same work twice is one job; jobs are enqueued only
after the transaction that asked for them commits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from arq import create_pool, cron
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix
from arq.jobs import Job
from arq.jobs import JobStatus as ArqStatus
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import after_commit
from shared.errors import Unavailable
from shared.settings import get_settings

SERVICES = ("provisioning", "backup", "monitor")

log = logging.getLogger(__name__)


def queue_name(service: str) -> str:
    """The Redis key of a service's job queue, e.g. `mailops:queue:backup`."""
    if service not in SERVICES:
        raise ValueError(f"unknown service queue {service!r}")
    return f"{get_settings().queue_prefix}:queue:{service}"


def _json_default(value: Any) -> Any:
    # arq stores a failed job's exception as its result: keep its type and message.
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    raise TypeError(f"job data must be JSON; got {type(value).__name__}")


def serialize(payload: Any) -> bytes:
    return json.dumps(payload, default=_json_default).encode()


def deserialize(raw: bytes) -> Any:
    return json.loads(raw)


def redis_settings() -> RedisSettings:
    return RedisSettings.from_dsn(get_settings().redis_url)


_pool: ArqRedis | None = None


async def get_pool() -> ArqRedis:
    """The process's arq connection pool, made on first use."""
    global _pool
    if _pool is None:
        _pool = await create_pool(
            redis_settings(),
            job_serializer=serialize,
            job_deserializer=deserialize,
            default_queue_name=queue_name("provisioning"),
        )
    return _pool


async def close_pool() -> None:
    global _pool
    if _pool is not None:
        await _pool.aclose()
        _pool = None


async def enqueue(service: str, function: str, *, job_id: str, **kwargs: Any) -> bool:
    """Put `function(**kwargs)` on `service`'s queue; False if that job id is already there."""
    pool = await get_pool()
    job = await pool.enqueue_job(
        function,
        _job_id=job_id,
        _queue_name=queue_name(service),
        **kwargs,
    )
    return job is not None


def enqueue_after_commit(
    session: AsyncSession,
    service: str,
    function: str,
    *,
    job_id: str,
    location: str | None = None,
    **kwargs: Any,
) -> None:
    """Enqueue the job once `session` commits, so a worker never sees uncommitted state.
    `location`: where the caller looks the request up (not a job argument)."""
    serialize(kwargs)  # fail now, inside the transaction, if the arguments are not JSON

    async def send() -> None:
        try:
            await enqueue(service, function, job_id=job_id, **kwargs)
        except (RedisError, OSError) as exc:
            # Committed, not queued: the request's row stands, and each worker's sweep takes
            # up work whose job never came. The caller hears it now, not as a 500, and where
            # to look, so that trying again is not a second request.
            where = f" at {location}" if location else ""
            raise Unavailable(
                "the request was saved, but the job queue cannot be reached "
                f"({type(exc).__name__}): the worker's five-minute sweep queues its work again "
                f"or ends it failed; look it up{where} before trying again",
                code="queue_unavailable",
                retry_after=30,
                location=location,
            ) from exc

    after_commit(session, send)


def final_backup_job_id(mailbox_id: uuid.UUID) -> str:
    """The backup queue's job for a mailbox's last backup: provisioning enqueues it, and the
    backup service looks it up (its run row is made by the job itself)."""
    return f"final-backup:{mailbox_id}"


@dataclass(frozen=True)
class JobState:
    """Where arq has a job: `alive` while it is queued, deferred or running; `error` is the
    exception a finished job raised (its type and message), if it raised one."""

    alive: bool
    error: str | None = None


async def job_state(service: str, job_id: str) -> JobState:
    """What the queue knows of a job. Not alive is either finished (its result kept for
    `keep_result`) or unknown: never enqueued, or its result expired."""
    job = Job(job_id, await get_pool(), _queue_name=queue_name(service), _deserializer=deserialize)
    status = await job.status()
    if status is not ArqStatus.complete:
        return JobState(alive=status is not ArqStatus.not_found)
    result = await job.result_info()
    if result is None or result.success:
        return JobState(alive=False)
    error = result.result
    if isinstance(error, dict):  # as `_json_default` stored it
        error = f"{error.get('error')}: {error.get('message')}".rstrip(": ")
    return JobState(alive=False, error=str(error))


def heartbeat_key(service: str) -> str:
    return f"{get_settings().queue_prefix}:worker:{service}:heartbeat"


# A worker stamps its heartbeat once a minute: three minutes without one, it is gone (or
# its event loop is stuck).
HEARTBEAT_STALE_SECONDS = 180


async def heartbeat_age(service: str) -> float | None:
    """Seconds since the service's worker last stamped its heartbeat; None if never (or
    not for ten minutes)."""
    beat = await (await get_pool()).get(heartbeat_key(service))
    return time.time() - float(beat) if beat else None


def _heartbeat(service: str) -> Any:
    async def record_heartbeat(ctx: dict[str, Any]) -> None:
        """Stamp the time: the monitor reads it to tell a live worker from a dead one."""
        await ctx["redis"].set(heartbeat_key(service), str(time.time()), ex=600)

    return record_heartbeat


async def _renew_lease(redis: ArqRedis, job_id: str, lease: float) -> None:
    """Hold a running job's claim (arq's in-progress key) `lease` seconds at a time.

    arq claims a job for its whole timeout (six hours for a backup) and runs it again only
    once the claim lapses: a worker killed mid-job would leave it `running` that long. A
    claim renewed while the job runs lapses `lease` after its worker died instead."""
    key = in_progress_key_prefix + job_id
    while True:
        try:
            if not await redis.pexpire(key, int(lease * 1000)):
                return  # the claim is gone (the job ended): nothing to hold
        except (RedisError, OSError):
            # The claim keeps what it had; a renewal that reaches Redis again extends it.
            log.warning("could not renew a job's claim", extra={"job_id": job_id})
        await asyncio.sleep(lease / 4)


async def _claim_while_running(ctx: dict[str, Any]) -> None:
    # A task of its own, never an error here: one out of on_job_start stops the worker.
    lease = get_settings().job_lease_seconds
    ctx["_lease"] = asyncio.create_task(_renew_lease(ctx["redis"], ctx["job_id"], lease))


async def _release_claim(ctx: dict[str, Any]) -> None:
    # Stopped before arq deletes the claim (or keeps a cron job's a minute), and awaited, so
    # no renewal lands after it.
    task = ctx.pop("_lease", None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def worker_settings(
    service: str, functions: list[Any], *, cron_jobs: Sequence[Any] = (), **extra: Any
) -> dict[str, Any]:
    """Common arq WorkerSettings for a service's worker: JSON jobs, a once-a-minute
    heartbeat, and claims on running jobs that lapse soon after their worker dies."""
    heartbeat = cron(
        _heartbeat(service), name=f"{service}-heartbeat", second=0, run_at_startup=True
    )
    return {
        "functions": functions,
        "cron_jobs": [heartbeat, *cron_jobs],
        "queue_name": queue_name(service),
        "redis_settings": redis_settings(),
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "max_tries": 5,
        "keep_result": 3600,
        "on_job_start": _claim_while_running,
        "on_job_end": _release_claim,
        **extra,
    }
