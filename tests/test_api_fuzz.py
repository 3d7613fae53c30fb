"""Whatever a client sends, no request gets a 500. schemathesis generates requests from each
service's own OpenAPI document, valid and invalid, for every operation, and sends them to
`mailops serve` as in production: on a database of its own and a queue no worker reads (what
they create stays out of the other tests' way), with the session's mail stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.conftest import free_port

MAILOPS = str(Path(sys.executable).with_name("mailops"))
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))


@pytest.fixture(scope="module")
def fuzz_env(settings: Settings, mail_stack: object) -> Iterator[tuple[dict[str, str], str]]:
    """The environment of the served services, and an admin key valid there."""
    env = {
        **os.environ,
        "MAILOPS_DATABASE_URL": f"{settings.database_url}_fuzz",
        "MAILOPS_QUEUE_PREFIX": f"{settings.queue_prefix}-fuzz",
    }
    subprocess.run([MAILOPS, "db", "upgrade"], env=env, check=True, capture_output=True)
    created = subprocess.run(
        [MAILOPS, "apikey", "create", "--role", "admin", "--name", "fuzz"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    yield env, created.stdout.strip().splitlines()[-1]
    subprocess.run([sys.executable, "-c", FORGET], env=env, check=True, capture_output=True)


FORGET = """
import asyncio
from redis.asyncio import Redis
from shared.database_admin import drop_database
from shared.settings import get_settings

async def forget():
    settings = get_settings()
    await drop_database(settings.database_url)
    redis = Redis.from_url(settings.redis_url)
    async for key in redis.scan_iter(match=settings.queue_prefix + ":*"):
        await redis.delete(key)
    await redis.aclose()

asyncio.run(forget())
"""


@pytest.fixture(scope="module", params=["provisioning", "backup", "monitor"])
def served(request: pytest.FixtureRequest, fuzz_env: tuple[dict[str, str], str]) -> Iterator[str]:
    env, _ = fuzz_env
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


def test_no_request_gets_a_server_error(served: str, fuzz_env: tuple[dict[str, str], str]) -> None:
    _, key = fuzz_env
    run = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{served}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
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
    )
    assert run.returncode == 0, run.stdout[-6000:]
