"""A minimal IMAP4rev1 client for bulk backup and restore, on plain asyncio streams.

Why not aioimaplib here: its FETCH completion check rescans every response line per new line
(quadratic), it keeps no literal boundaries we can stream, it does not route VANISHED or
ESEARCH, and its APPEND waits a round trip per message. Bulk copy needs literals read with
one `readexactly`, QRESYNC's VANISHED, and pipelined LITERAL+ APPENDs; this is that, and
nothing more. One command at a time per connection; parallelism is several connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol, TypeVar

from shared.imap import CONNECT_TIMEOUT_SECONDS, master_login
from shared.settings import Settings, get_settings

COMMAND_TIMEOUT_SECONDS = 300.0
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
# The longest answer line read (besides literals, which are read whole whatever their
# size). The engine asks in UID windows so that no line it asks for comes near it.
LINE_LIMIT = 1 << 20
_STATUS_WORDS = frozenset((b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"))


def _holds_data(line: bytes) -> bool:
    """Whether a response's first line may end in a literal: an untagged data response
    (`* 3 FETCH`, `* LIST`); the free text of a status response (`M7 NO ... {2024}`, a
    folder's name echoed) or of a continuation may end in what only looks like one."""
    if not line.startswith(b"* "):
        return False
    words = line[2:].split(b" ", 2)
    word = words[1] if words[0].isdigit() and len(words) > 1 else words[0]
    return word.upper() not in _STATUS_WORDS


_MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}
_MONTH_NAMES = {i: m for m, i in _MONTHS.items()}


class ImapProtocolError(RuntimeError):
    """The server answered NO/BAD, closed the connection, or sent something unparseable."""

    def __init__(self, message: str, *, status: str = "", text: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.text = text


class Literal(bytes):
    """A literal string from the server (kept apart from atoms: `NIL` vs `{3}NIL`)."""


class Quoted(bytes):
    """A quoted string from the server."""


Token = Any  # bytes atom, Quoted, Literal, or a list of tokens


@dataclass
class Untagged:
    """One untagged response: `* 12 FETCH (...)` is kind FETCH, number 12."""

    kind: str
    number: int | None
    data: list[Token]


@dataclass
class Tagged:
    status: str
    text: str
    untagged: list[Untagged] = field(default_factory=list)

    def of(self, kind: str) -> Iterator[Untagged]:
        return (u for u in self.untagged if u.kind == kind)


def quote(value: str | bytes) -> bytes:
    """An IMAP quoted string (names here are 7-bit: folder names are modified UTF-7)."""
    raw = value.encode() if isinstance(value, str) else value
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# FETCH items followed by a bracketed section. A bracket elsewhere is an atom's character:
# Dovecot sends a folder named `Notes[1` unquoted.
_SECTIONED = {b"BODY", b"BINARY", b"BINARY.SIZE"}


def _tokenize(segments: Sequence[bytes | Literal]) -> list[Token]:
    """Parse response text (with its literals) into nested lists of tokens."""
    stack: list[list[Token]] = [[]]
    for segment in segments:
        if isinstance(segment, Literal):
            stack[-1].append(segment)
            continue
        text, i, n = segment, 0, len(segment)
        while i < n:
            c = text[i]
            if c in (0x20, 0x0D, 0x0A):
                i += 1
            elif c == 0x28:  # (
                stack.append([])
                i += 1
            elif c == 0x29:  # )
                if len(stack) > 1:
                    done = stack.pop()
                    stack[-1].append(done)
                i += 1
            elif c == 0x22:  # "
                j, out = i + 1, bytearray()
                while j < n and text[j] != 0x22:
                    if text[j] == 0x5C and j + 1 < n:
                        j += 1
                    out.append(text[j])
                    j += 1
                stack[-1].append(Quoted(bytes(out)))
                i = j + 1
            else:
                j, depth = i, 0
                while j < n:
                    b = text[j]
                    if b == 0x5B and (depth or text[i:j].upper() in _SECTIONED):
                        depth += 1  # BODY[HEADER.FIELDS (A B)]: spaces and parentheses
                    elif b == 0x5D and depth:
                        depth -= 1
                    elif not depth and b in (0x20, 0x28, 0x29, 0x0D, 0x0A):
                        break
                    j += 1
                stack[-1].append(text[i:j])
                i = j
    while len(stack) > 1:
        done = stack.pop()
        stack[-1].append(done)
    return stack[0]


def as_str(token: Token) -> str:
    return bytes(token).decode("utf-8", "replace") if token is not None else ""


def parse_uid_set(text: str) -> Iterator[int]:
    """`1:3,7` -> 1, 2, 3, 7."""
    for part in text.split(","):
        if not part:
            continue
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            yield from range(min(a, b), max(a, b) + 1)
        else:
            yield int(part)


def uid_set(uids: Iterable[int]) -> str:
    """Sorted UIDs as a compact set: 1, 2, 3, 7 -> `1:3,7`."""
    ordered = sorted(uids)
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_internaldate(text: str) -> datetime:
    """`17-Jul-1996 02:44:25 -0700` -> an aware datetime (locale-independent)."""
    day_month_year, clock, zone = text.strip().split(" ")
    day, month, year = day_month_year.split("-")
    hour, minute, second = (int(x) for x in clock.split(":"))
    sign = -1 if zone[0] == "-" else 1
    offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * sign
    return datetime(
        int(year), _MONTHS[month], int(day), hour, minute, second, tzinfo=timezone(offset)
    )


def format_internaldate(when: datetime) -> str:
    utc = when.astimezone(UTC)
    return (
        f"{utc.day:02d}-{_MONTH_NAMES[utc.month]}-{utc.year:04d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} +0000"
    )


def fetch_items(response: Untagged) -> dict[str, Token]:
    """A FETCH response's items by upper-cased name: {"UID": b"5", "BODY[]": Literal(...)}."""
    items: dict[str, Token] = {}
    data = response.data[0] if response.data and isinstance(response.data[0], list) else []
    for i in range(0, len(data) - 1, 2):
        name = bytes(data[i]).upper().decode()
        # `BODY[]<0>` (a partial fetch's answer) names the same item as `BODY[]`.
        items[name.split("<", 1)[0]] = data[i + 1]
    return items


class _Sized(Protocol):
    @property
    def size(self) -> int: ...


_SizedT = TypeVar("_SizedT", bound=_Sized)


def batches(items: Iterable[_SizedT], *, count: int, max_bytes: int) -> Iterator[list[_SizedT]]:
    """`items` in order, in batches of at most `count` messages and about `max_bytes` (a
    larger message goes alone): what one FETCH or pipelined APPEND carries."""
    batch: list[_SizedT] = []
    total = 0
    for item in items:
        if batch and (len(batch) >= count or total + item.size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += item.size
    if batch:
        yield batch


@dataclass(frozen=True)
class AppendItem:
    """One message to APPEND; `chunks` yields its exact `size` bytes."""

    flags: Sequence[str]
    internal_date: datetime
    size: int
    chunks: AsyncIterator[bytes]


@asynccontextmanager
async def _answered_in_time(command: bytes) -> AsyncIterator[None]:
    """The server answers within COMMAND_TIMEOUT_SECONDS, or ImapProtocolError says which
    command it left unanswered (a bare TimeoutError says nothing in a job's reason)."""
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
            yield
    except TimeoutError as exc:
        verb = command.split(b" ", 1)[0].decode("ascii", "replace")
        raise ImapProtocolError(
            f"IMAP {verb} got no answer in {COMMAND_TIMEOUT_SECONDS:g} s"
        ) from exc


class ImapConnection:
    """One IMAP connection; `command` sends one command and reads until its tagged answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._counter = 0
        self._lock = asyncio.Lock()
        self._aborted = False  # dropped mid-command: nothing more may be sent
        self.capabilities: set[str] = set()

    @classmethod
    async def connect(cls, host: str, port: int) -> ImapConnection:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                reader, writer = await asyncio.open_connection(host, port, limit=LINE_LIMIT)
        except (OSError, TimeoutError) as exc:
            raise ImapProtocolError(f"IMAP server {host}:{port} unreachable: {exc!r}") from exc
        connection = cls(reader, writer)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                greeting = await reader.readuntil(b"\r\n")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()  # the socket is open: it must not be left to the collector
            raise ImapProtocolError(f"IMAP server {host}:{port} sent no greeting: {exc!r}") from exc
        if not greeting.startswith(b"* OK"):
            writer.close()
            raise ImapProtocolError(f"IMAP server refused the connection: {greeting!r}")
        return connection

    def _tag(self) -> bytes:
        self._counter += 1
        return b"M%d" % self._counter

    async def _read_line(self) -> bytes:
        try:
            return await self._reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            # The rest of the line is still unread: nothing more can be read in step.
            self._writer.transport.abort()
            self._aborted = True
            raise ImapProtocolError(
                f"an IMAP answer line is longer than {LINE_LIMIT} bytes"
            ) from exc

    async def _read_response(self) -> tuple[bytes, list[bytes | Literal]]:
        """One response: its first line's start and its segments, literals read whole."""
        segments: list[bytes | Literal] = []
        while True:
            line = await self._read_line()
            literal = line.endswith(b"}\r\n") and (segments or _holds_data(line))
            match = _LITERAL.search(line) if literal else None
            if match is None:
                segments.append(line)
                break
            segments.append(line[: match.start()])
            segments.append(Literal(await self._reader.readexactly(int(match.group(1)))))
        first = segments[0]
        return bytes(first), segments

    async def _read_until(
        self, tag: bytes, each: Callable[[Untagged], object] | None = None
    ) -> Tagged:
        untagged: list[Untagged] = []
        keep = each or untagged.append
        while True:
            first, segments = await self._read_response()
            if first.startswith(b"* "):
                keep(self._untagged(segments))
            elif first.startswith(tag + b" "):
                rest = first[len(tag) + 1 :].rstrip(b"\r\n").decode("utf-8", "replace")
                status, _, text = rest.partition(" ")
                return Tagged(status.upper(), text, untagged)
            elif first.startswith(b"+"):
                continue
            elif not first:
                raise ImapProtocolError("IMAP connection closed")

    @staticmethod
    def _untagged(segments: list[bytes | Literal]) -> Untagged:
        head = segments[0][2:]
        word, _, rest = head.partition(b" ")
        number: int | None = None
        if word.isdigit():
            number = int(word)
            word, _, rest = rest.partition(b" ")
        kind = word.rstrip(b"\r\n").upper().decode("ascii", "replace")
        if kind in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
            return Untagged(kind, number, [rest.rstrip(b"\r\n")])
        return Untagged(kind, number, _tokenize([rest, *segments[1:]]))

    async def command(
        self,
        command: bytes,
        *,
        check: bool = True,
        each: Callable[[Untagged], object] | None = None,
    ) -> Tagged:
        """Send `command` (no literals) and return its answer; NO/BAD raise if `check`.

        With `each`, every untagged response goes to it as it is read instead of into the
        answer: an answer of one line per message in a 100,000-message folder is never
        held whole."""
        async with self._lock, _answered_in_time(command):
            tag = self._tag()
            self._writer.write(tag + b" " + command + b"\r\n")
            try:
                await self._writer.drain()
                answer = await self._read_until(tag, each)
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise ImapProtocolError(f"IMAP connection lost: {exc!r}") from exc
        if check and answer.status != "OK":
            verb = command.split(b" ", 1)[0].decode()
            raise ImapProtocolError(
                f"{verb} failed: {answer.status} {answer.text}",
                status=answer.status,
                text=answer.text,
            )
        return answer

    async def pipeline(self, commands: Sequence[bytes]) -> list[Tagged]:
        """Send `commands` (no literals) at once and read their answers in order: one round
        trip for all of them. Answers are not checked: a NO/BAD is the caller's to judge."""
        async with self._lock, _answered_in_time(commands[0] if commands else b""):
            tags = [self._tag() for _ in commands]
            self._writer.write(
                b"".join(
                    tag + b" " + command + b"\r\n"
                    for tag, command in zip(tags, commands, strict=True)
                )
            )
            try:
                await self._writer.drain()
                return [await self._read_until(tag) for tag in tags]
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise ImapProtocolError(f"IMAP connection lost: {exc!r}") from exc

    async def login(self, user: str, password: str) -> None:
        await self.command(b"LOGIN " + quote(user) + b" " + quote(password))
        answer = await self.command(b"CAPABILITY")
        for response in answer.of("CAPABILITY"):
            self.capabilities = {as_str(t).upper() for t in response.data}

    async def append_many(self, mailbox: str, items: Sequence[AppendItem]) -> list[Tagged]:
        """APPEND the items in one round trip (LITERAL+): as one MULTIAPPEND command where
        the server has it, else one APPEND each, pipelined; the answers, one per command.

        MULTIAPPEND matters for large folders: Dovecot's work per APPEND command grows with
        the folder (one APPEND a message into one Maildir folder stored 22,436 messages in
        11 minutes, each slower than the last; MULTIAPPENDs of 500 stored 100,000 in about
        80 s). It is also one transaction: all of the batch is stored, or none of it."""
        if not items:
            return []
        if "LITERAL+" not in self.capabilities:
            raise ImapProtocolError("the server lacks LITERAL+ for pipelined APPEND")
        multi = "MULTIAPPEND" in self.capabilities
        async with self._lock, _answered_in_time(b"APPEND"):
            tags: list[bytes] = []
            try:
                for index, item in enumerate(items):
                    if index == 0 or not multi:
                        tags.append(self._tag())
                        self._writer.write(b"%s APPEND %s" % (tags[-1], quote(mailbox)))
                    flags = " ".join(f for f in item.flags if f.lower() != "\\recent")
                    self._writer.write(
                        b" (%s) %s {%d+}\r\n"
                        % (
                            flags.encode(),
                            quote(format_internaldate(item.internal_date)),
                            item.size,
                        )
                    )
                    written = 0
                    async for chunk in item.chunks:
                        self._writer.write(chunk)
                        written += len(chunk)
                        await self._writer.drain()
                    if written != item.size:
                        raise ImapProtocolError(f"blob gave {written} bytes, not {item.size}")
                    if not multi:
                        self._writer.write(b"\r\n")
                if multi:
                    self._writer.write(b"\r\n")
                await self._writer.drain()
            except BaseException as exc:
                # A literal may be half sent, and any byte more (a LOGOUT) would go into the
                # message: drop the connection, and the server discards the unfinished APPEND.
                self._writer.transport.abort()
                self._aborted = True
                if isinstance(exc, OSError):
                    raise ImapProtocolError(f"IMAP connection lost: {exc!r}") from exc
                raise
            try:
                return [await self._read_until(tag) for tag in tags]
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise ImapProtocolError(f"IMAP connection lost: {exc!r}") from exc

    async def body_chunks(self, uid: int, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The message's bytes in partial FETCHes of `chunk_bytes` (none if it is gone), so
        memory holds one chunk however large the message."""
        offset = 0
        while True:
            answer = await self.command(
                b"UID FETCH %d (UID BODY.PEEK[]<%d.%d>)" % (uid, offset, chunk_bytes)
            )
            chunk = b""
            for response in answer.of("FETCH"):
                items = fetch_items(response)
                # A string: a bare NIL (the protocol allows it for a body) is no message.
                if int(items.get("UID", 0)) == uid and isinstance(
                    items.get("BODY[]"), Literal | Quoted
                ):
                    chunk = bytes(items["BODY[]"])
            if not chunk:
                return
            yield chunk
            offset += len(chunk)
            if len(chunk) < chunk_bytes:
                return

    async def close(self) -> None:
        if not self._aborted:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.command(b"LOGOUT", check=False)
        await self.disconnect()

    async def disconnect(self) -> None:
        """Close the socket (after a LOGOUT already answered, or on an error)."""
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


async def master_commands(
    user: str, commands: Sequence[bytes], settings: Settings | None = None
) -> list[Tagged]:
    """Log in to the mailbox `user` names (see `master_connection`) as the master user, run
    `commands` and log out, all pipelined behind the LOGIN: one round trip after the
    greeting. The first answer is LOGIN's; on a failed LOGIN the others are errors too."""
    settings = settings or get_settings()
    connection = await ImapConnection.connect(settings.mail_host, settings.imap_port)
    try:
        login = b"LOGIN %s %s" % (
            quote(master_login(user, settings)),
            quote(settings.master_password.get_secret_value()),
        )
        answers = await connection.pipeline([login, *commands, b"LOGOUT"])
        return answers[:-1]
    finally:
        await connection.disconnect()


@asynccontextmanager
async def master_connection(
    user: str, settings: Settings | None = None
) -> AsyncIterator[ImapConnection]:
    """A connection logged in as the master user to the mailbox `user` names, with QRESYNC
    enabled. `user` is its address, or its id: LOGIN cannot carry the UTF-8 local part of
    an internationalised address, and Dovecot's userdb finds a mailbox by id as well."""
    settings = settings or get_settings()
    connection = await ImapConnection.connect(settings.mail_host, settings.imap_port)
    try:
        await connection.login(
            master_login(user, settings), settings.master_password.get_secret_value()
        )
        if "QRESYNC" in connection.capabilities:
            await connection.command(b"ENABLE QRESYNC")
        yield connection
    finally:
        await connection.close()
