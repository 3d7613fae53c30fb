"""The engine's IMAP client: what it makes of Dovecot's answers, and of no answer."""

from __future__ import annotations

import asyncio

import pytest

from services.backup.engine import imap
from services.backup.engine.imap import ImapProtocolError, master_connection


def test_a_bracket_outside_a_fetch_section_is_part_of_the_atom() -> None:
    # Dovecot sends folder names and keywords made of atom characters unquoted.
    assert imap._tokenize([b"Notes[1 (UIDNEXT 4 UIDVALIDITY 9)\r\n"]) == [
        b"Notes[1",
        [b"UIDNEXT", b"4", b"UIDVALIDITY", b"9"],
    ]
    assert imap._tokenize([b"(FLAGS (foo[bar \\Seen) UID 3)\r\n"]) == [
        [b"FLAGS", [b"foo[bar", b"\\Seen"], b"UID", b"3"]
    ]
    assert imap._tokenize([b"(UID 3 BODY[HEADER.FIELDS (MESSAGE-ID)] NIL)\r\n"]) == [
        [b"UID", b"3", b"BODY[HEADER.FIELDS (MESSAGE-ID)]", b"NIL"]
    ]


@pytest.mark.usefixtures("mail_stack")
async def test_a_command_left_unanswered_fails_naming_it(seed, monkeypatch) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    async with master_connection(mailbox.address) as connection:
        monkeypatch.setattr(imap, "COMMAND_TIMEOUT_SECONDS", 0.5)
        with pytest.raises(ImapProtocolError, match=r"IDLE got no answer in 0\.5 s"):
            await connection.command(b"IDLE")  # answered only after the client's DONE


async def test_a_status_line_ending_in_what_looks_like_a_literal_is_read_as_text() -> None:
    """A server may echo a folder's name in its NO: `Budget {2024}` there is no 2,024-byte
    literal to wait for; in a data response it is one."""
    reader = asyncio.StreamReader()
    reader.feed_data(
        b"* NO [ALERT] see {12}\r\n"
        b"M1 NO Mailbox doesn't exist: Budget {2024}\r\n"
        b"* 1 FETCH (UID 5 BODY[] {3}\r\nabc)\r\nM2 OK done\r\n"
    )
    reader.feed_eof()
    connection = imap.ImapConnection(reader, None)  # type: ignore[arg-type]  # reads only
    refused = await asyncio.wait_for(connection._read_until(b"M1"), 1)
    assert (refused.status, refused.text) == ("NO", "Mailbox doesn't exist: Budget {2024}")
    fetched = await asyncio.wait_for(connection._read_until(b"M2"), 1)
    [response] = fetched.of("FETCH")
    assert bytes(imap.fetch_items(response)["BODY[]"]) == b"abc"


class _Sink:
    """A writer that takes what the client sends: for answers fed to its reader beforehand."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


async def test_a_body_answered_nil_is_no_message_not_three_bytes() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"* 1 FETCH (UID 5 BODY[]<0> NIL)\r\nM1 OK done\r\n")
    reader.feed_eof()
    connection = imap.ImapConnection(reader, _Sink())  # type: ignore[arg-type]
    assert [chunk async for chunk in connection.body_chunks(5, 1000)] == []
