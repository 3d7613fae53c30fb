"""One Alembic head covers every service's tables and matches the models."""

from __future__ import annotations

import asyncio
import uuid

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from shared.database_admin import alembic_config, create_database, drop_database
from shared.schema import metadata
from shared.settings import Settings


def test_there_is_exactly_one_migration_head(settings: Settings) -> None:
    heads = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_heads()
    assert len(heads) == 1


def _diff(connection: Connection) -> list[object]:
    return list(
        compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), metadata
        )
    )


async def test_upgrade_from_empty_reaches_head_with_no_drift_from_the_models(
    settings: Settings,
) -> None:
    url = (
        make_url(settings.database_url)
        .set(database=f"mailops_migrate_{uuid.uuid4().hex[:8]}")
        .render_as_string(False)
    )
    await create_database(url)
    try:
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
        engine = create_async_engine(url)
        async with engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
            views = set(
                (
                    await connection.execute(
                        text(
                            "SELECT table_name FROM information_schema.views "
                            "WHERE table_schema = 'public'"
                        )
                    )
                ).scalars()
            )
        await engine.dispose()
        assert views == {
            "dovecot_passdb",
            "dovecot_userdb",
            "postfix_domains",
            "postfix_mailboxes",
            "postfix_aliases",
        }
        await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
    finally:
        await drop_database(url)
