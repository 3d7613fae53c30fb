"""Creating and migrating the shared schema's database (used by the CLI and the tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def _asyncpg_dsn(database_url: str, database: str) -> str:
    url = make_url(database_url).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


async def create_database(database_url: str) -> bool:
    """Create the URL's database if it is missing; True if it was created."""
    name = make_url(database_url).database
    if not name:
        raise ValueError("the database URL names no database")
    connection = await asyncpg.connect(_asyncpg_dsn(database_url, "postgres"))
    try:
        if await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await connection.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await connection.close()


async def drop_database(database_url: str) -> None:
    name = make_url(database_url).database
    connection = await asyncpg.connect(_asyncpg_dsn(database_url, "postgres"))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def alembic_config(database_url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Create the database if needed and migrate it to `revision`.

    Alembic's async env runs its own event loop, so call this from synchronous code
    (or a thread).
    """
    asyncio.run(create_database(database_url))
    command.upgrade(alembic_config(database_url), revision)
