"""The IMAP client layer: sessions on Dovecot as a mailbox's user or as the master user."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aioimaplib

from shared.settings import Settings, get_settings

CONNECT_TIMEOUT_SECONDS = 10.0


class ImapError(RuntimeError):
    """The IMAP server could not be reached or refused a command; the message says which."""


def quoted(value: str) -> str:
    """A quoted string as IMAP, ManageSieve and Sieve all write it: `\\` and `"` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def master_login(address: str, settings: Settings) -> str:
    """The login name that opens `address` with the master user's password."""
    return f"{address}*{settings.master_user}"


def check(response: Any, what: str) -> Any:
    """Return the response if it is OK, else raise ImapError naming the command."""
    if response.result != "OK":
        text = b" ".join(line for line in response.lines if isinstance(line, bytes))
        raise ImapError(f"{what} failed: {response.result} {text.decode(errors='replace')}")
    return response


@asynccontextmanager
async def imap_session(
    address: str,
    password: str | None = None,
    *,
    settings: Settings | None = None,
    command_timeout: float = CONNECT_TIMEOUT_SECONDS,
) -> AsyncIterator[Any]:
    """A logged-in aioimaplib client: as the user with `password`, else as the master user."""
    settings = settings or get_settings()
    client = aioimaplib.IMAP4(
        host=settings.mail_host, port=settings.imap_port, timeout=command_timeout
    )
    try:
        await asyncio.wait_for(client.wait_hello_from_server(), command_timeout)
    except (OSError, TimeoutError) as exc:
        raise ImapError(
            f"IMAP server {settings.mail_host}:{settings.imap_port} "
            f"unreachable: {exc or type(exc).__name__}"
        ) from exc
    try:
        if password is None:
            login, secret = (
                master_login(address, settings),
                settings.master_password.get_secret_value(),
            )
        else:
            login, secret = address, password
        # aioimaplib does not quote the user name; `*` in a master login needs quotes.
        check(await client.login(quoted(login), secret), f"LOGIN {address}")
        yield client
    finally:
        if client.get_state() in ("AUTH", "SELECTED"):
            with contextlib.suppress(aioimaplib.AioImapException, OSError, TimeoutError):
                await asyncio.wait_for(client.logout(), command_timeout)
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()
