"""The `mailops` command line, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from shared.auth import hash_api_key
from shared.models import ApiKey


def mailops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )


def test_help_lists_every_command_group() -> None:
    result = mailops("--help")
    assert result.returncode == 0
    for command in ("db", "apikey", "stack", "backup", "serve", "worker", "up", "down"):
        assert command in result.stdout


def test_every_paragraph_of_command_help_is_one_line() -> None:
    """`--help` keeps a hard line break inside a paragraph of a command's help, and a
    command list shows the first paragraph: a docstring paragraph that wraps shows as a
    ragged line. Each paragraph is one line; the terminal wraps it."""
    import inspect

    import typer

    from cli.main import app

    def ragged(command: Any, path: str) -> Iterator[str]:
        paragraphs = [command.short_help or ""] if command.short_help else []
        paragraphs += inspect.cleandoc(command.help or "").split("\n\n")
        if any("\n" in paragraph.strip() for paragraph in paragraphs):
            yield path
        for name, sub in getattr(command, "commands", {}).items():  # a group's commands
            yield from ragged(sub, f"{path} {name}")

    assert not list(ragged(typer.main.get_command(app), "mailops"))


async def test_apikey_create_prints_the_key_once_as_the_last_line(db_session) -> None:
    result = mailops("apikey", "create", "--role", "onboarding", "--name", "hr-script")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("mo_")
    row = await db_session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key)))
    assert row is not None and row.role == "onboarding" and row.name == "hr-script"


def test_apikey_create_refuses_an_unknown_role_and_says_which_exist() -> None:
    result = mailops("apikey", "create", "--role", "king", "--name", "x")
    assert result.returncode == 1
    assert "admin, operator, manager" in result.stderr


def test_a_manager_key_needs_its_department() -> None:
    result = mailops("apikey", "create", "--role", "manager", "--name", "x")
    assert result.returncode == 1
    assert "--department" in result.stderr


@pytest.mark.usefixtures("mail_stack")
def test_stack_status_shows_each_daemon_and_port() -> None:
    result = mailops("stack", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dovecot" in result.stdout and "postfix" in result.stdout
    assert "imap" in result.stdout and "answers" in result.stdout


async def test_each_mailops_up_admin_key_revokes_the_one_before_and_all_are_audited(
    db_session,
) -> None:
    from cli.main import _create_api_key
    from shared.models import AuditEvent

    name = f"first-admin-{uuid.uuid4().hex[:8]}"
    first = await _create_api_key(name, "admin", [], replacing=True)
    second = await _create_api_key(name, "admin", [], replacing=True)
    rows = {
        row.key_hash: row
        for row in await db_session.scalars(select(ApiKey).where(ApiKey.name == name))
    }
    assert rows[hash_api_key(first)].revoked_at is not None
    assert rows[hash_api_key(second)].revoked_at is None
    actions = await db_session.scalars(
        select(AuditEvent.action).where(
            AuditEvent.target_id.in_([str(r.id) for r in rows.values()])
        )
    )
    assert sorted(actions) == ["apikey.create", "apikey.create", "apikey.revoke"]
