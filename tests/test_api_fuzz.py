"""Whatever a client sends, no request gets a 500. schemathesis generates requests from each
service's own OpenAPI document, valid and invalid, for every operation, and sends them to
`mailops serve` as in production: on a database of its own and a queue no worker reads (what
they create stays out of the other tests' way), with the session's mail stack. Path and query
ids name real rows (a department, a mailbox, its snapshot, a run, a restore and a verify),
so the requests reach past the 404."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from shared.auth import new_api_key
from shared.database_admin import drop_database
from shared.db import Base, unit_of_work
from shared.models import Domain, Role
from shared.models.backup import (
    BackupRun,
    BackupScope,
    JobStatus,
    RestoreJob,
    RestoreMode,
    VerifyRun,
)
from shared.queue import get_pool
from shared.settings import Settings
from tests.backup import helpers
from tests.backup.conftest import generated_corpus
from tests.conftest import Seed, free_port

MAILOPS = str(Path(sys.executable).with_name("mailops"))
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))


@dataclass(frozen=True)
class FuzzEnv:
    environ: dict[str, str]  # of the served services
    key: str  # an admin key valid there
    config: Path  # schemathesis.toml: path and query ids that name real rows


@pytest.fixture(scope="module")
async def fuzz_env(
    settings: Settings, mail_stack: object, tmp_path_factory
) -> AsyncIterator[FuzzEnv]:
    environ = {
        **os.environ,
        "MAILOPS_DATABASE_URL": f"{settings.database_url}_fuzz",
        "MAILOPS_QUEUE_PREFIX": f"{settings.queue_prefix}-fuzz",
    }
    subprocess.run([MAILOPS, "db", "upgrade"], env=environ, check=True, capture_output=True)
    key = new_api_key(name="fuzz", role=Role.ADMIN)
    # The same rows in both databases: the services read theirs, and Dovecot (which serves
    # the session's database) knows the mailbox, so a Sieve script really is checked.
    async with unit_of_work() as session:
        seed = Seed(session)
        department = await seed.department()
        mailbox = await seed.mailbox("pw-1234567890", department=department)
        domain = await session.get(Domain, department.domain_id)
        copies = [_copy(row) for row in (domain, department, mailbox)]
    await helpers.append(mailbox.address, "INBOX", generated_corpus(3))
    engine = create_async_engine(environ["MAILOPS_DATABASE_URL"])
    try:
        async with AsyncSession(engine) as fuzz, fuzz.begin():
            for row in [*copies, key.row]:
                fuzz.add(row)
                await fuzz.flush()
        # A snapshot in the services' database, and a run, restore and verify that name it.
        backed_up = subprocess.run(
            [sys.executable, "-c", BACK_UP, str(mailbox.id)],
            env=environ,
            check=True,
            capture_output=True,
            text=True,
        )
        snapshot_id = uuid.UUID(backed_up.stdout.strip().splitlines()[-1])
        done = JobStatus.SUCCEEDED.value
        async with AsyncSession(engine, expire_on_commit=False) as fuzz, fuzz.begin():
            jobs = [
                BackupRun(status=done, scope=BackupScope.MAILBOX.value, mailbox_id=mailbox.id),
                RestoreJob(
                    status=done,
                    mailbox_id=mailbox.id,
                    snapshot_id=snapshot_id,
                    target_mode=RestoreMode.FOLDER.value,
                    target_mailbox_id=mailbox.id,
                    target_folder="Restored",
                ),
                VerifyRun(status=done),
            ]
            fuzz.add_all(jobs)
    finally:
        await engine.dispose()
    ids = {
        "department_id": department.id,
        "mailbox_id": mailbox.id,
        "snapshot_id": snapshot_id,
        "run_id": jobs[0].id,
        "restore_id": jobs[1].id,
        "verify_id": jobs[2].id,
    }
    config = tmp_path_factory.mktemp("fuzz") / "schemathesis.toml"
    config.write_text(
        "[parameters]\n"
        + "".join(
            f'"{where}.{name}" = "{value}"\n'
            for name, value in ids.items()
            for where in ("path", "query")
        )
    )
    yield FuzzEnv(environ, key.key, config)
    await drop_database(environ["MAILOPS_DATABASE_URL"])
    redis = await get_pool()  # the same Redis: drop what the served services enqueued
    async for name in redis.scan_iter(match=environ["MAILOPS_QUEUE_PREFIX"] + ":*"):
        await redis.delete(name)


def _copy(row: Base) -> Base:
    """A new instance with the same column values (for another database)."""
    return type(row)(**{c.key: getattr(row, c.key) for c in row.__table__.columns})


BACK_UP = """
import asyncio, sys, uuid
from services.backup.engine.backup import backup_mailbox
from services.backup.engine.storage import default_storage
from shared.db import get_engine

async def back_up():
    snapshot, _ = await backup_mailbox(
        mailbox_id=uuid.UUID(sys.argv[1]), run_id=None, storage=default_storage()
    )
    await get_engine().dispose()
    print(snapshot.id)

asyncio.run(back_up())
"""


@pytest.fixture(scope="module", params=["provisioning", "backup", "monitor"])
def served(request: pytest.FixtureRequest, fuzz_env: FuzzEnv) -> Iterator[str]:
    env = fuzz_env.environ
    port = free_port()
    log = Path(env["MAILOPS_STATE_DIR"]) / f"fuzz-{request.param}.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [MAILOPS, "serve", request.param, "--port", str(port)], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    yield url
    server.terminate()
    server.wait()


def test_no_request_gets_a_server_error(served: str, fuzz_env: FuzzEnv) -> None:
    run = subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file",
            str(fuzz_env.config),
            "run",
            f"{served}/openapi.json",
            "--header",
            f"Authorization: Bearer {fuzz_env.key}",
            "--checks",
            "not_a_server_error",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "15",
            "--seed",
            "1",
            # One worker: hypothesis, in several threads, trips CPython 3.11's compiler.
            "--workers",
            "1",
            "--request-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=fuzz_env.config.parent,  # where schemathesis keeps its cache, not the checkout
    )
    assert run.returncode == 0, run.stdout[-6000:]
