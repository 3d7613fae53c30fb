"""Real-IMAP helpers for backup tests: fill a mailbox, read back its exact state, empty it."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from services.backup.engine import utf7
from services.backup.engine.imap import (
    AppendItem,
    fetch_items,
    master_connection,
    parse_internaldate,
    quote,
)

DEFAULT_FOLDERS = {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}

# folder -> sorted [(sha256 hex, sorted flags, INTERNALDATE)]
MailboxState = dict[str, list[tuple[str, tuple[str, ...], datetime]]]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def append(
    address: str,
    folder: str,
    messages: Sequence[tuple[bytes, Sequence[str], datetime]],
) -> None:
    """APPEND (bytes, flags, INTERNALDATE) messages to a folder, creating it if needed."""
    encoded = utf7.encode(folder)
    async with master_connection(address) as imap:
        await imap.command(b"CREATE " + quote(encoded), check=False)
        for start in range(0, len(messages), 50):
            answers = await imap.append_many(
                encoded,
                [
                    AppendItem(flags=flags, internal_date=when, size=len(data), chunks=_once(data))
                    for data, flags, when in messages[start : start + 50]
                ],
            )
            assert all(a.status == "OK" for a in answers), [a.text for a in answers]


async def state(address: str, *, skip_empty: bool = True) -> MailboxState:
    """Every folder's messages as (SHA-256, flags, INTERNALDATE), read from the server."""
    result: MailboxState = {}
    async with master_connection(address) as imap:
        listing = await imap.command(b'LIST "" "*"')
        names = [
            r.data[2]
            for r in listing.of("LIST")
            if "\\noselect" not in {bytes(a).decode().lower() for a in r.data[0]}
        ]
        for raw in names:
            name = utf7.decode(bytes(raw).decode())
            examined = await imap.command(b"EXAMINE " + quote(bytes(raw)), check=False)
            if examined.status != "OK":
                continue
            exists = next((u.number or 0 for u in examined.of("EXISTS")), 0)
            rows = []
            if exists:
                answer = await imap.command(b"UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])")
                for response in answer.of("FETCH"):
                    items = fetch_items(response)
                    flags = tuple(
                        sorted(
                            bytes(f).decode()
                            for f in items["FLAGS"]
                            if bytes(f).decode() != "\\Recent"
                        )
                    )
                    rows.append(
                        (
                            hashlib.sha256(bytes(items["BODY[]"])).hexdigest(),
                            flags,
                            parse_internaldate(bytes(items["INTERNALDATE"]).decode()),
                        )
                    )
            if rows or not skip_empty:
                result[name] = sorted(rows)
    return result


async def delete_messages(address: str, folder: str, *, uids: str = "1:*") -> None:
    """Flag messages \\Deleted and expunge them."""
    async with master_connection(address) as imap:
        answer = await imap.command(b"SELECT " + quote(utf7.encode(folder)), check=False)
        if answer.status == "OK" and next((u.number or 0 for u in answer.of("EXISTS")), 0):
            await imap.command(b"UID STORE " + uids.encode() + b" +FLAGS.SILENT (\\Deleted)")
            await imap.command(b"EXPUNGE")


async def empty(address: str) -> None:
    """Delete every message, and every folder but the default ones."""
    async with master_connection(address) as imap:
        listing = await imap.command(b'LIST "" "*"')
        names = [bytes(r.data[2]).decode() for r in listing.of("LIST")]
    for raw in names:
        await delete_messages(address, utf7.decode(raw))
    async with master_connection(address) as imap:
        for raw in sorted(names, reverse=True):
            if utf7.decode(raw) not in DEFAULT_FOLDERS:
                await imap.command(b"DELETE " + quote(raw), check=False)


async def store_flags(address: str, folder: str, uids: str, flags: str) -> None:
    async with master_connection(address) as imap:
        await imap.command(b"SELECT " + quote(utf7.encode(folder)))
        await imap.command(b"UID STORE " + uids.encode() + b" " + flags.encode())
