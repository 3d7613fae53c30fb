"""The engine's IMAP client: what it makes of Dovecot's answers, and of no answer."""

from __future__ import annotations

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
