"""An export's mboxrd encoding, a frame at a time."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from services.backup import service
from services.backup.engine.backup import backup_mailbox
from services.backup.service import MboxrdEntry
from tests.backup import helpers
from tests.backup.conftest import ENMIME

WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def entry(chunks: list[bytes]) -> bytes:
    mbox = MboxrdEntry(WHEN, "INBOX", ["\\Seen"])
    return mbox.start() + b"".join(mbox.feed(c) for c in chunks) + mbox.end()


def test_an_entry_quotes_from_lines_and_ends_with_a_blank_line() -> None:
    message = b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nnot From\r\nlast"
    assert entry([message]) == (
        b"From MAILER-DAEMON Wed May  1 12:00:00 2024\n"
        b"X-Mailops-Folder: INBOX\nX-Mailops-Flags: \\Seen\n"
        b"Subject: x\n\n>From here\n>>From there\nnot From\nlast\n\n"
    )
    assert entry([b"a\r\n"]).endswith(b"\na\n\n")


def test_an_entry_is_the_same_however_its_message_is_cut_into_chunks() -> None:
    rng = random.Random(109)
    for path in sorted(ENMIME.iterdir())[:40]:
        message = path.read_bytes() + b"\r\nFrom the end\r\n"
        cuts = sorted(rng.sample(range(1, len(message)), min(8, len(message) - 1)))
        pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
        # One byte at a time as well: every CRLF and `From ` split across chunks.
        assert entry(pieces) == entry([message]) == entry([bytes([b]) for b in message]), path


def test_a_message_of_one_long_line_is_given_out_as_it_comes_not_held_back() -> None:
    """Only an undecided line start and a CR are held between chunks: memory holds a chunk,
    not the message, whatever its line ends (CR only, or none)."""
    mbox = MboxrdEntry(WHEN, "INBOX", [])
    chunk = b"x" * 1_000_000 + b"\r"
    given = [mbox.feed(chunk) for _ in range(5)]
    assert [len(g) for g in given] == [1_000_000, 1_000_001, 1_000_001, 1_000_001, 1_000_001]
    assert mbox.end() == b"\n\n"  # the last CR taken for the line's end, then the blank line
    assert entry([b">>Fr", b"om x"]) == entry([b">>From x"]) != entry([b">>Fro x"])


@pytest.mark.usefixtures("mail_stack")
async def test_an_export_streams_a_message_larger_than_a_frame_whole(seed, storage, corpus) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    [(small, _, when)] = corpus(1, seed=110)
    large = small + b"\r\nFrom a line to quote\r\n" + (b"z" * 76 + b"\r\n") * 70_000
    await helpers.append(mailbox.address, "INBOX", [(large, [], when)])
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    chunks = [
        chunk
        async for chunk in service.export_mbox(snapshot.id, None, storage, actor=helpers.OPERATOR)
    ]
    assert len(chunks) > 2  # the empty first chunk, then the entry in more than one piece
    mbox = MboxrdEntry(when, "INBOX", [])
    assert b"".join(chunks) == mbox.start() + mbox.feed(large) + mbox.end()
