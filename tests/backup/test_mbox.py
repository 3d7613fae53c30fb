"""The mboxrd encoding of an export, a frame at a time."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from services.backup.service import MboxrdEntry
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
