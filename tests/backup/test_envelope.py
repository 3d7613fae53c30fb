"""The catalog's search fields: the direct reader of plain headers agrees with the email
package's parser, which reads everything else."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from services.backup.engine.backup import _plain_fields, envelope, parsed_envelope
from tests.backup.conftest import ENMIME, generated_corpus


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as Dovecot serves it


def _header(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data[: end if end >= 0 else 256 * 1024][: 256 * 1024]


def _plain_ascii_messages(count: int) -> list[bytes]:
    messages = []
    for i in range(count):
        msg = EmailMessage()
        msg["From"] = f"Sender {i} <sender{i}@x.test>"
        msg["To"] = ", ".join(f"person{j}@y.test" for j in range(i % 9 + 1))  # folds when long
        msg["Subject"] = f"Report {i}: " + "words " * (i % 30)
        msg["Message-ID"] = f"<plain-{i}@x.test>"
        msg["Date"] = "Tue, 14 Mar 2023 09:30:00 +0100"
        msg.set_content("hello\n")
        messages.append(_crlf(bytes(msg)))
    return messages


EDGE_CASES = [
    b"Subject: folded\r\n  across\r\n\tlines\r\nFrom: a@x.test",
    b"subject: lower-case names\r\nMESSAGE-ID: <x@y>",
    b"Subject: first\r\nSubject: second",
    b"Subject:\r\n continued after an empty value",
    b"Subject:no space",
    b" leading continuation\r\nSubject: after it",
    b"X-Other: a\r\n continued other\r\nSubject: s",
    b"Subject: =?utf-8?q?encoded_=C3=BCber?=\r\nTo: =?iso-8859-1?q?J=F6rg?= <j@x.test>",
    b"Subject : space before the colon\r\nFrom: hidden@x.test",
    b"From sender@x.test Tue Mar 14 09:30:00 2023\r\nSubject: mbox from line",
    b"not a header line\r\nSubject: after it",
    b":empty name\r\nSubject: s",
    b"Subject: bare\nline end",
    b"Date: not a date\r\nSubject: s",
    b"Date: Tue, 14 Mar 2023 09:30:00\r\nSubject: no zone",
    b"Subject: trailing spaces   \r\n   \r\nTo: t@x.test",
    b"Subject: caf\xc3\xa9 raw UTF-8",
    b"",
]


@pytest.mark.parametrize("header", EDGE_CASES)
def test_edge_case_headers_read_as_the_email_parser_reads_them(header: bytes) -> None:
    assert envelope(header + b"\r\n\r\nbody") == parsed_envelope(header)


def test_every_corpus_message_gets_the_email_parsers_envelope() -> None:
    messages = [_crlf(p.read_bytes()) for p in sorted(ENMIME.glob("*.raw"))]
    messages += [data for data, _, _ in generated_corpus(60)] + _plain_ascii_messages(60)
    assert len(messages) > 200
    for data in messages:
        assert envelope(data) == parsed_envelope(_header(data))


def test_plain_headers_are_read_without_the_parser() -> None:
    plain = _plain_ascii_messages(30)
    assert all(_plain_fields(_header(data)) is not None for data in plain)
    assert envelope(plain[5])["to_addr"].count("@y.test") == 6


def test_a_date_utc_cannot_carry_and_a_huge_message_id_do_not_reach_the_catalog_whole() -> None:
    """The driver converts times to UTC (9999-12-31 23:00 -0100 overflows) and the catalog
    indexes Message-IDs (an entry holds about 2.7 KB): either would fail every backup run of
    the mailbox that received such a message."""
    fields = envelope(
        b"Date: Fri, 31 Dec 9999 23:00:00 -0100\r\nMessage-ID: <"
        + "語".encode() * 2000
        + b">\r\n\r\n"
    )
    assert fields["sent_at"] is None
    assert 0 < len(fields["message_id"].encode()) <= 512 and fields["message_id"].startswith("<")
