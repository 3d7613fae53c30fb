"""The `mailops` command line, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys

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
