"""The test platform: a fresh PostgreSQL database, a Redis db, and a real Dovecot + Postfix.

Settings are read from the environment once, so this module sets `MAILOPS_*` before any
mailops code runs. The stack gets its own state dir and free ports, so it runs beside a
developer's `make up`.
"""

from __future__ import annotations

import importlib
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_STATE_DIR = Path(tempfile.mkdtemp(prefix="mailops-test-"))
_DATABASE = f"mailops_test_{uuid.uuid4().hex[:8]}"
_PG = os.environ.get("MAILOPS_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432")
os.environ.update(
    {
        "MAILOPS_ENVIRONMENT": "test",
        "MAILOPS_DATABASE_URL": f"{_PG}/{_DATABASE}",
        "MAILOPS_REDIS_URL": os.environ.get("MAILOPS_TEST_REDIS", "redis://127.0.0.1:6379/15"),
        "MAILOPS_STATE_DIR": str(_STATE_DIR),
        "MAILOPS_IMAP_PORT": str(_free_port()),
        "MAILOPS_SMTP_PORT": str(_free_port()),
        "MAILOPS_LMTP_PORT": str(_free_port()),
        "MAILOPS_SIEVE_PORT": str(_free_port()),
        "MAILOPS_MASTER_PASSWORD": f"test-master-{uuid.uuid4().hex}",
        "MAILOPS_HOSTNAME": "mail.mailops.test",
        "MAILOPS_AUTH_PENALTY": "false",
        "MAILOPS_QUEUE_PREFIX": f"mailops-test-{uuid.uuid4().hex[:8]}",
    }
)

from sqlalchemy import select  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from shared import mailstack  # noqa: E402
from shared.database_admin import drop_database, upgrade  # noqa: E402
from shared.models import Department, Domain, Mailbox, MailboxStatus  # noqa: E402
from shared.models.backup import BackupPolicy  # noqa: E402
from shared.passwords import hash_password  # noqa: E402
from shared.settings import Settings, get_settings  # noqa: E402


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session", autouse=True)
def database(settings: Settings) -> Iterator[str]:
    """A fresh database for this test session, migrated to head by Alembic."""
    upgrade(settings.database_url)
    yield settings.database_url


@pytest.fixture(scope="session", autouse=True)
async def _dispose_database(database: str) -> AsyncIterator[None]:
    yield
    from shared.db import get_engine
    from shared.queue import close_pool

    await close_pool()
    await get_engine().dispose()
    await drop_database(database)


@pytest.fixture(scope="session")
def mail_stack(settings: Settings, database: str) -> Iterator[mailstack.StackPaths]:
    """Real Dovecot and Postfix on free loopback ports, reading the test database."""
    paths = mailstack.up(settings)
    yield paths
    mailstack.down(settings)


@pytest.fixture
async def db_session() -> AsyncIterator[AsyncSession]:
    """A session whose work the test commits itself (the mail server must see it)."""
    from shared.db import get_sessionmaker

    async with get_sessionmaker()() as session:
        yield session


class Seed:
    """Writes domains, departments and mailboxes through the shared models."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.domain_name = f"d{uuid.uuid4().hex[:8]}.test"

    async def department(self, *, max_mailboxes: int = 50, **fields: object) -> Department:
        domain = await self.session.scalar(select(Domain).where(Domain.name == self.domain_name))
        if domain is None:
            domain = Domain(name=self.domain_name)
            self.session.add(domain)
            await self.session.flush()
        department = Department(
            name=f"dept-{uuid.uuid4().hex[:8]}",
            domain_id=domain.id,
            capacity_bytes=10**10,
            max_mailboxes=max_mailboxes,
            default_quota_bytes=10**8,
            **fields,
        )
        self.session.add(department)
        await self.session.commit()
        return department

    async def mailbox(
        self,
        password: str,
        *,
        status: MailboxStatus = MailboxStatus.ACTIVE,
        department: Department | None = None,
        quota_bytes: int = 10**8,
        address: str | None = None,
    ) -> Mailbox:
        department = department or await self.department()
        mailbox = Mailbox(
            address=address or f"u{uuid.uuid4().hex[:8]}@{self.domain_name}",
            domain_id=department.domain_id,
            department_id=department.id,
            password_hash=hash_password(password),
            quota_bytes=quota_bytes,
            status=status.value,
        )
        self.session.add(mailbox)
        await self.session.commit()
        return mailbox

    async def backup_policy(
        self, department: Department, *, interval_seconds: int = 3600, keep_last: int = 1
    ) -> None:
        """A department backup policy keeping only the last `keep_last` snapshots."""
        self.session.add(
            BackupPolicy(
                department_id=department.id,
                interval_seconds=interval_seconds,
                keep_last=keep_last,
                keep_daily=0,
                keep_weekly=0,
                keep_monthly=0,
            )
        )
        await self.session.commit()


@pytest.fixture
def seed(db_session: AsyncSession) -> Seed:
    return Seed(db_session)


def free_port() -> int:
    return _free_port()


@pytest.fixture
async def api_key_for(db_session: AsyncSession) -> Callable[..., Awaitable[str]]:
    """Create an API key with a role (and department scope) and return the plaintext key."""
    from shared.auth import new_api_key
    from shared.models import Role

    async def make(role: str, department_ids: Sequence[uuid.UUID] = ()) -> str:
        created = new_api_key(name=f"test-{role}", role=Role(role), department_ids=department_ids)
        db_session.add(created.row)
        await db_session.commit()
        return created.key

    return make


async def run_worker(service: str = "provisioning", **overrides: Any) -> None:
    """Run the service's worker until its queue is empty (arq burst mode); `overrides` are
    WorkerSettings to change, e.g. `job_timeout`."""
    from arq.worker import Worker

    settings = importlib.import_module(f"services.{service}.worker").WorkerSettings
    worker = Worker(**{**settings, "burst": True, "poll_delay": 0.01, "cron_jobs": [], **overrides})
    try:
        await worker.main()
    finally:
        await worker.close()


def service_client(service: str) -> httpx.AsyncClient:
    """An HTTP client on a freshly built service app, in process."""
    module = importlib.import_module(f"services.{service}.app")
    app = module.create_app()
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=f"http://{service}.test"
    )
