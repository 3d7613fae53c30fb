"""The async database engine, the declarative base, and the transaction-owning session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import lru_cache

# The driver, imported with the rest rather than by the engine's first use: a service's
# first request, or a worker's first job, would otherwise pay its 36 ms of import.
import asyncpg  # noqa: F401
from anyio import CancelScope
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from shared.settings import get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The one declarative base of the shared schema."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Connections a process keeps open, and how many more it may open at busy times.
POOL_SIZE, MAX_OVERFLOW = 10, 20


@lru_cache
def get_engine() -> AsyncEngine:
    settings = get_settings()
    return create_async_engine(
        settings.database_url,
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        pool_pre_ping=True,
        # A database error's text goes to logs and to failed jobs' reasons: without the
        # statement's values (password hashes, token hashes, mail subjects).
        hide_parameters=True,
    )


@lru_cache
def get_sessionmaker() -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(get_engine(), expire_on_commit=False)


AfterCommit = Callable[[], Awaitable[None]]


def after_commit(session: AsyncSession, action: AfterCommit) -> None:
    """Run `action` once the session's transaction has committed (never if it rolls back)."""
    session.info.setdefault("after_commit", []).append(action)


async def transaction() -> AsyncIterator[AsyncSession]:
    """One session per unit of work: commit when the work succeeds, roll back when it raises.

    Services never commit; whoever owns the unit of work (a request, a job) does, here,
    and then runs what was deferred to after the commit (e.g. enqueueing jobs).
    """
    async with get_sessionmaker()() as session:
        async with _committed(session):
            yield session
        for action in session.info.pop("after_commit", []):
            await action()


# For jobs and scripts: `async with unit_of_work() as session:` commits even when the
# block returns early (a `return` inside `async for ... in transaction()` would not).
unit_of_work = asynccontextmanager(transaction)


@asynccontextmanager
async def transaction_on(connection: AsyncConnection) -> AsyncIterator[AsyncSession]:
    """A unit of work on a connection the caller holds (one holding a session advisory
    lock, say): commits, or rolls back on error. Nothing is deferred to after the commit."""
    session = AsyncSession(bind=connection, expire_on_commit=False)
    async with session, _committed(session):
        yield session


# Takes or releases session-level locks on a connection, committing nothing.
ConnectionStep = Callable[[AsyncConnection], Awaitable[None]]


@asynccontextmanager
async def connection_holding(
    take: ConnectionStep, release: ConnectionStep
) -> AsyncIterator[AsyncConnection]:
    """A pooled connection holding the session locks `take` takes (advisory locks, which
    outlive transactions) for the block: the caller runs its own transactions on it.
    `release` runs however the block ends, shielded from cancellation (a streamed response
    whose client went away is cancelled again at every wait), so that the connection never
    goes back to the pool holding them."""
    async with get_engine().connect() as connection:
        await take(connection)
        await connection.commit()
        try:
            yield connection
        finally:
            with CancelScope(shield=True):
                if connection.in_transaction():
                    await connection.rollback()
                await release(connection)
                await connection.commit()


@asynccontextmanager
async def _committed(session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """Commit the session when the block succeeds, roll it back when it raises."""
    try:
        yield session
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
