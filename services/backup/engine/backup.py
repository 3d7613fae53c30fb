"""Back up one mailbox over IMAP into a new snapshot, fetching only what changed.

Per folder, UIDVALIDITY + UIDNEXT + HIGHESTMODSEQ from one `LIST ... RETURN (STATUS ...)`
decide the work: an unchanged folder costs nothing more; flag changes and expunges come from
`UID FETCH ... (CHANGEDSINCE m VANISHED)` without bodies; new UIDs are fetched in small
batches, hashed, and stored only if their SHA-256 is new. A message the mailbox already had
(same INTERNALDATE, size, Message-ID, Date, From, To and Subject: moved, or seen again after
a UIDVALIDITY change) is recorded without a download. The snapshot is committed after its
blobs are fsynced.

A run over several mailboxes (`backup_mailboxes`) first takes the unchanged ones together
(`backup_unchanged`): one pipelined LOGIN + LIST-STATUS per mailbox, compared with the
catalog, and one transaction that commits a snapshot for each of them under their locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import zstandard
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.backup import repository
from services.backup.engine import utf7
from services.backup.engine.imap import (
    ImapConnection,
    ImapProtocolError,
    Literal,
    Quoted,
    Tagged,
    Untagged,
    as_str,
    batches,
    fetch_items,
    master_commands,
    master_connection,
    parse_internaldate,
    parse_uid_set,
    quote,
    uid_set,
)
from services.backup.engine.storage import (
    FRAME_PLAINTEXT_BYTES,
    PackStorage,
    PackWriter,
    body_start,
    seal_frames,
)
from shared.db import connection_holding, get_engine, transaction_on
from shared.models.backup import Snapshot, SnapshotStatus, backup_lock_key
from shared.settings import Settings, get_settings

log = logging.getLogger("mailops.backup.engine")

METADATA_BATCH = 250
BODY_BATCH = 50
BODY_BATCH_BYTES = 8 << 20
PACK_TARGET_BYTES = 64 << 20
_SPACES = re.compile(r"\s+")
LIST_STATUS = b'LIST "" "*" RETURN (STATUS (UIDVALIDITY UIDNEXT HIGHESTMODSEQ))'
# The header fields that, with INTERNALDATE and size, identify a message seen before: the
# envelope the catalog keeps of every message. Only a message with a Message-ID is known
# this way: two generated ones without (alerts, reports) can agree on everything else, and
# the second would restore as the first. One without is downloaded again.
IDENTITY_HEADER = b" BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]"
# Status probes of the fast path at once: each is a login and one LIST-STATUS, mostly
# waiting on Dovecot's auth and imap processes, so more than the body connections.
STATUS_PROBES = 8
FAST_PATH_CHUNK = 200
CATALOG_CHUNK = 1000
# UIDs one SEARCH or CHANGEDSINCE answer lists at most: 50,000 lone UIDs of 10 digits are
# 550 KB, half of the line limit.
UID_WINDOW = 50_000
ANALYZE_AFTER_ROWS = 10_000
ANALYZE_SHARE = 0.1  # of the catalog's rows: autovacuum's default scale factor


class MailboxUnavailable(Exception):
    """The mailbox is gone or not in a state Dovecot serves."""


@dataclass
class BackupCounters:
    messages_fetched: int = 0
    bytes_read: int = 0
    bytes_stored: int = 0


@dataclass
class _Meta:
    uid: int
    flags: list[str]
    internal_date: datetime
    size: int
    # The envelope from the header fields that identify a message seen before; None when
    # the mailbox has nothing it could have been seen as (not asked for).
    fields: dict[str, Any] | None

    @property
    def identifiable(self) -> bool:
        return bool(self.fields and self.fields["message_id"])

    @property
    def identity(self) -> tuple[Any, ...]:
        known = {"internal_date": self.internal_date, "size": self.size, **(self.fields or {})}
        return tuple(known[name] for name in repository.IDENTITY_FIELDS)


@dataclass
class _FolderStatus:
    raw: str
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int


def _header_text(value: Any) -> str:
    """A header value as search text: encoded words decoded, whitespace runs one space."""
    if value is None:
        return ""
    text = str(value)
    if not text.isascii() or "=?" in text:  # plain ASCII has nothing to decode
        try:
            text = str(make_header(decode_header(text)))
        except Exception:  # malformed encoded words: keep the raw header
            text = str(value)
    return _SPACES.sub(" ", text).replace("\x00", "").strip()[:2000]


_ENVELOPE_FIELDS = {"date", "from", "to", "subject", "message-id"}
# A header line as the email package's feed parser takes one: a printable name, a colon.
_FIELD_LINE = re.compile(r"([\x21-\x39\x3b-\x7e]+):(.*)", re.DOTALL)


def _plain_fields(header: bytes) -> dict[str, str] | None:
    """The envelope fields of a plain header block (ASCII, CRLF line ends, each line a field
    or a continuation), by lower-case name, each value as compat32's `Message.get` gives
    it; None for any other block, which the email parser then reads."""
    if not header.isascii():
        return None
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None  # the wanted field that continuation lines extend
    for line in header.decode("ascii").split("\r\n"):
        if "\n" in line or "\r" in line:
            return None  # bare line ends
        if line[:1] in (" ", "\t"):
            if current is not None:
                current.append(line)
            continue
        if not line:
            continue  # the block's end
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            return None  # a line that is no field: the parser decides where the header ends
        name, current = match.group(1).lower(), None
        if name in _ENVELOPE_FIELDS and name not in fields:
            current = fields[name] = [match.group(2).lstrip(" \t")]
    return {name: "\r\n".join(lines) for name, lines in fields.items()}


def envelope(data: bytes) -> dict[str, Any]:
    """Search fields from a message's header: date, from, to, subject, Message-ID."""
    end = data.find(b"\r\n\r\n")
    header = data[: end if end >= 0 else 256 * 1024][: 256 * 1024]
    # Most headers are plain and read directly, several times faster than the email
    # parser, which reads the rest (both agree on the corpus: tests/backup/test_envelope.py).
    plain = _plain_fields(header)
    if plain is None:
        return parsed_envelope(header)
    return _envelope_from(lambda name: plain.get(name.lower()))


def parsed_envelope(header: bytes) -> dict[str, Any]:
    """The envelope of a header block as the email package's compat32 parser reads it."""
    return _envelope_from(BytesHeaderParser(policy=compat32).parsebytes(header).get)


# A Message-ID longer than this (in UTF-8) is kept cut: the catalog indexes it, and an
# index entry has a size limit (about 2.7 KB) that one odd message must not make every run
# of its mailbox fail on.
MESSAGE_ID_BYTES = 512


def _envelope_from(get: Callable[[str], Any]) -> dict[str, Any]:
    sent_at: datetime | None = None
    raw_date = get("Date")
    if raw_date:
        try:
            sent_at = parsedate_to_datetime(str(raw_date))
            if sent_at.tzinfo is None:
                sent_at = sent_at.replace(tzinfo=UTC)
            # As the driver will: a time UTC cannot carry (31 Dec 9999 23:00 -0100) is none.
            sent_at.astimezone(UTC)
        except (TypeError, ValueError, IndexError, OverflowError):
            sent_at = None
    message_id = _header_text(get("Message-ID")).encode()[:MESSAGE_ID_BYTES]
    return {
        "sent_at": sent_at,
        "from_addr": _header_text(get("From")),
        "to_addr": _header_text(get("To")),
        "subject": _header_text(get("Subject")),
        "message_id": message_id.decode("utf-8", "ignore"),
    }


class _Hashed(NamedTuple):
    """A fetched message's SHA-256; and, if its body is stored as a blob of its own, where
    the body starts and the body's SHA-256."""

    digest: bytes
    body: tuple[int, bytes] | None


def _hash_all(messages: Sequence[bytes]) -> list[_Hashed]:
    hashed = []
    for message in messages:
        start = body_start(message, len(message))
        body = None
        if start is not None:
            body = (start, hashlib.sha256(memoryview(message)[start:]).digest())
        hashed.append(_Hashed(hashlib.sha256(message).digest(), body))
    return hashed


class _Fresh(NamedTuple):
    """A blob to store: its hash, the plaintext to seal, the body blob it continues with,
    and its whole plaintext size."""

    digest: bytes
    plain: bytes | memoryview
    body_digest: bytes | None
    size: int


def _seal_all(blobs: Sequence[_Fresh], key_id: str, level: int) -> list[bytes]:
    compressor = zstandard.ZstdCompressor(level=level)
    return [seal_frames(b.plain, key_id=key_id, level=level, compressor=compressor) for b in blobs]


async def _listed(imap: ImapConnection, raw: str) -> bool:
    """Whether the server still lists the folder (modified UTF-7 name `raw`)."""
    answer = await imap.command(b'LIST "" ' + quote(raw))
    return any(as_str(r.data[-1]) == raw for r in answer.of("LIST") if r.data)


def _check_whole(meta: _Meta, read: int) -> None:
    """A message is stored whole or not at all: bytes read short of (or beyond) its
    RFC822.SIZE fail the mailbox's run, which the next run repeats, rather than store a
    truncated message whose hash and size would then describe the damage as the mail."""
    if read != meta.size:
        raise ImapProtocolError(
            f"message UID {meta.uid} gave {read} bytes, not its RFC822.SIZE of {meta.size}"
        )


def _flags(token: Any) -> list[str]:
    items = token if isinstance(token, list) else []
    # Interned: a folder's messages share a handful of flags, and a sync may hold them all.
    return sorted(sys.intern(as_str(f)) for f in items if as_str(f).lower() != "\\recent")


def _esearch(answer: Tagged) -> dict[str, str]:
    """An ESEARCH answer's items (`ALL`, `MIN`, `MAX`, `COUNT`) by name; none for no UID."""
    items: dict[str, str] = {}
    for response in answer.of("ESEARCH"):
        # `* ESEARCH (TAG "M3") UID MIN 4 MAX 9 COUNT 2`: the (TAG ...) list left out.
        tokens = [as_str(t) for t in response.data if not isinstance(t, list)]
        if tokens and tokens[0].upper() == "UID":
            tokens = tokens[1:]
        pairs = zip(tokens[::2], tokens[1::2], strict=False)  # an odd one out is no item
        items.update((name.upper(), value) for name, value in pairs)
    return items


async def _search_uids(imap: ImapConnection, low: int, high: int) -> list[int]:
    """The folder's UIDs from `low` to `high`, each answer listing at most UID_WINDOW of
    them (its line far below LINE_LIMIT however sparse the UIDs): a range that may hold
    more is counted first, and halved between its lowest and highest UID until it does
    not. A range of a few new UIDs is one command, as ever."""
    if high < low:
        return []
    if high - low >= UID_WINDOW:
        counted = _esearch(
            await imap.command(b"UID SEARCH RETURN (MIN MAX COUNT) UID %d:%d" % (low, high))
        )
        if int(counted.get("COUNT", 0)) == 0:
            return []
        low, high = int(counted["MIN"]), int(counted["MAX"])
        if int(counted["COUNT"]) > UID_WINDOW:
            middle = (low + high) // 2
            return await _search_uids(imap, low, middle) + await _search_uids(
                imap, middle + 1, high
            )
    found = _esearch(await imap.command(b"UID SEARCH RETURN (ALL) UID %d:%d" % (low, high)))
    if "ALL" not in found:
        return []
    return [u for u in parse_uid_set(found["ALL"]) if low <= u <= high]


def _chunks(uids: list[int]) -> Iterator[list[int]]:
    """UIDs CATALOG_CHUNK at a time: what one catalog transaction of a sync takes."""
    for start in range(0, len(uids), CATALOG_CHUNK):
        yield uids[start : start + CATALOG_CHUNK]


def _parse_meta(response: Untagged) -> _Meta | None:
    items = fetch_items(response)
    if "UID" not in items or "INTERNALDATE" not in items:
        return None
    header = next((v for k, v in items.items() if k.startswith("BODY[HEADER")), None)
    return _Meta(
        uid=int(items["UID"]),
        flags=_flags(items.get("FLAGS")),
        internal_date=parse_internaldate(as_str(items["INTERNALDATE"])),
        size=int(items.get("RFC822.SIZE", 0)),
        fields=None if header is None else envelope(bytes(header)),
    )


def _status_values(response: Untagged) -> dict[str, int]:
    values = response.data[1] if len(response.data) > 1 else []
    return {as_str(values[i]).upper(): int(values[i + 1]) for i in range(0, len(values) - 1, 2)}


def _folder_status(raw: str, values: dict[str, int]) -> _FolderStatus:
    return _FolderStatus(
        raw=raw,
        name=utf7.decode(raw),
        uidvalidity=values.get("UIDVALIDITY", 0),
        uidnext=values.get("UIDNEXT", 0),
        highestmodseq=values.get("HIGHESTMODSEQ", 0),
    )


_RESPONSE_CODE = re.compile(rb"^\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]")


def _as_examined(listed: _FolderStatus, examined: Tagged) -> _FolderStatus:
    """The folder as EXAMINE found it, if it is another folder than the one listed (deleted
    and made again, or another renamed to its name, meanwhile): its UIDs are not those the
    listing's UIDVALIDITY stands for, and it is read as a new folder, in its state now."""
    codes = {}
    for response in examined.of("OK"):
        if match := _RESPONSE_CODE.match(bytes(response.data[0]) if response.data else b""):
            codes[match.group(1).decode()] = int(match.group(2))
    if codes.get("UIDVALIDITY", listed.uidvalidity) == listed.uidvalidity:
        return listed
    if "UIDNEXT" not in codes:
        raise ImapProtocolError(
            f"folder {listed.name!r} was made again during the run, and EXAMINE gave no UIDNEXT"
        )
    return _folder_status(listed.raw, codes)


def _list_status(answer: Tagged) -> list[_FolderStatus | str]:
    """The selectable folders of a LIST-STATUS answer; a folder the server sent no STATUS
    for is left as its raw name."""
    statuses = {as_str(r.data[0]): _status_values(r) for r in answer.of("STATUS")}
    folders: list[_FolderStatus | str] = []
    for response in answer.of("LIST"):
        if len(response.data) < 3:
            continue
        attributes = {as_str(a).lower() for a in response.data[0]}
        if attributes & {"\\noselect", "\\nonexistent"}:
            continue
        raw = as_str(response.data[2])
        values = statuses.get(raw)
        folders.append(raw if values is None else _folder_status(raw, values))
    return folders


def mailbox_lock(mailbox_id: uuid.UUID) -> AbstractAsyncContextManager[AsyncConnection]:
    """One backup of a mailbox at a time, across workers, and none while prune deletes
    blobs (PostgreSQL advisory locks, which the server drops if the holder dies). Yields
    the connection holding the locks, on which the run does its catalog work: one
    connection per run, no pool checkout per step."""
    key = backup_lock_key(mailbox_id)
    return connection_holding(
        functools.partial(repository.lock_for_backup, key=key),
        functools.partial(repository.unlock_after_backup, key=key),
    )


class MailboxBackup:
    """One mailbox's backup run into snapshot `seq` (state for a single use)."""

    def __init__(
        self,
        *,
        mailbox_id: uuid.UUID,
        snapshot_id: uuid.UUID,
        seq: int,
        storage: PackStorage,
        settings: Settings,
        connection: AsyncConnection,
        seen_before: bool,
        catalog_size: int,
    ) -> None:
        self.mailbox_id = mailbox_id
        # Whether the catalog has messages of this mailbox a new UID may be one of (moved,
        # or seen again after a UIDVALIDITY change). A first backup has none, so it asks
        # for no identifying header fields and looks none up: on a 100,000-message folder
        # that lookup was the first backup's largest cost.
        self.seen_before = seen_before
        self.connection = connection
        self.snapshot_id = snapshot_id
        self.seq = seq
        self.storage = storage
        self.settings = settings
        self.counters = BackupCounters()
        self.folder_states: dict[int, tuple[int, int]] = {}
        self._pack: PackWriter | None = None
        self._rows_unanalyzed = 0  # message rows this run wrote since its last ANALYZE
        self._analyze_every = max(ANALYZE_AFTER_ROWS, int(catalog_size * ANALYZE_SHARE))

    async def _insert_messages(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        await repository.insert_messages(session, rows)
        self._rows_unanalyzed += len(rows)

    async def _keep_statistics(self) -> None:
        """ANALYZE the catalog once this run has written ANALYZE_AFTER_ROWS rows, or a tenth
        of what the catalog held, since it last did (autovacuum's rule, within one run).
        The planner's plans come from statistics: until autovacuum gets to a table that grew
        fast (or where it is off), they are of an empty catalog, one blob lookup became a
        scan of every blob, and every 1,000-UID batch of a sync a scan of its folder."""
        if self._rows_unanalyzed < self._analyze_every:
            return
        self._rows_unanalyzed = 0
        try:
            await repository.analyze_catalog(self.connection)
        except Exception:  # statistics only make the next queries faster
            log.warning("could not analyze the backup catalog", exc_info=True)

    # -------------------------------------------------------------- the run

    async def run(self, imap: ImapConnection, current: dict[str, Any]) -> None:
        """`current`: the catalog's open folders by name (read with the snapshot's start)."""
        try:
            for status in await self._list(imap):
                previous = current.pop(status.name, None)
                if (
                    previous is not None
                    and previous.uidvalidity == status.uidvalidity
                    and previous.uidnext == status.uidnext
                    and previous.highestmodseq == status.highestmodseq
                ):
                    continue
                await self._sync_folder(imap, status, previous)
            if current:
                async with transaction_on(self.connection) as session:
                    for gone in current.values():
                        await repository.close_folder(session, gone.id, self.seq)
        finally:
            if self._pack is not None:
                await asyncio.to_thread(self._pack.close)

    async def _list(self, imap: ImapConnection) -> list[_FolderStatus]:
        folders = _list_status(await imap.command(LIST_STATUS))
        for index, folder in enumerate(folders):
            if isinstance(folder, str):  # an older server: one STATUS each
                reply = await imap.command(
                    b"STATUS " + quote(folder) + b" (UIDVALIDITY UIDNEXT HIGHESTMODSEQ)"
                )
                folders[index] = _folder_status(folder, _status_values(next(reply.of("STATUS"))))
        return [f for f in folders if isinstance(f, _FolderStatus)]

    async def _sync_folder(
        self, imap: ImapConnection, status: _FolderStatus, previous: Any | None
    ) -> None:
        examined = await imap.command(b"EXAMINE " + quote(status.raw), check=False)
        if examined.status == "NO" and not await _listed(imap, status.raw):
            # Deleted since the listing: gone from this snapshot, as if it had been first.
            if previous is not None:
                async with transaction_on(self.connection) as session:
                    await repository.close_folder(session, previous.id, self.seq)
            return
        if examined.status != "OK":
            raise ImapProtocolError(
                f"EXAMINE {status.name!r} failed: {examined.status} {examined.text}",
                status=examined.status,
                text=examined.text,
            )
        status = _as_examined(status, examined)
        if previous is not None and previous.uidvalidity == status.uidvalidity:
            folder_id = int(previous.id)
            await self._sync_changes(imap, folder_id, previous.uidnext, previous.highestmodseq)
            first_new = int(previous.uidnext)
        else:
            async with transaction_on(self.connection) as session:
                if previous is not None:
                    await repository.close_folder(session, previous.id, self.seq)
                folder_id = await repository.add_folder(
                    session,
                    mailbox_id=self.mailbox_id,
                    name=status.name,
                    uidvalidity=status.uidvalidity,
                    seq=self.seq,
                )
            first_new = 1
        if status.uidnext > first_new:
            await self._fetch_new(imap, folder_id, first_new, status.uidnext)
        self.folder_states[folder_id] = (status.uidnext, status.highestmodseq)

    async def _sync_changes(
        self, imap: ImapConnection, folder_id: int, uidnext: int, modseq: int
    ) -> None:
        """Record expunges and flag changes among the UIDs the catalog already has. The
        answer is read as it comes and the catalog written CATALOG_CHUNK UIDs a transaction:
        marking a 100,000-message folder read is 100,000 changes."""
        if uidnext <= 1:
            return
        vanished: list[int] = []
        changed: dict[int, list[str]] = {}

        def take(response: Untagged) -> None:
            if response.kind == "VANISHED":
                vanished.extend(parse_uid_set(as_str(response.data[-1])))
            elif response.kind == "FETCH":
                items = fetch_items(response)
                uid = int(items.get("UID", 0))
                if 0 < uid < uidnext:
                    changed[uid] = _flags(items.get("FLAGS"))

        # Windows of the UIDs the catalog holds (one, up to UID_WINDOW of them): a VANISHED
        # answer lists at most a window's UIDs, and the gaps between windows cost nothing.
        windows = [(1, uidnext - 1)]
        if uidnext - 1 > UID_WINDOW:
            async with transaction_on(self.connection) as session:
                windows = await repository.current_uid_windows(session, folder_id, UID_WINDOW)
        for low, high in windows:
            await imap.command(
                b"UID FETCH %d:%d (UID FLAGS) (CHANGEDSINCE %d VANISHED)" % (low, high, modseq),
                each=take,
            )
        for gone in _chunks(vanished):
            async with transaction_on(self.connection) as session:
                await repository.close_messages(session, folder_id, gone, self.seq)
        for uids in _chunks(list(changed)):
            async with transaction_on(self.connection) as session:
                known = await repository.current_flags(session, folder_id, uids)
                differing = [uid for uid in uids if known.get(uid, changed[uid]) != changed[uid]]
                closed = await repository.close_messages(session, folder_id, differing, self.seq)
                await self._insert_messages(
                    session,
                    [
                        {
                            **{name: getattr(row, name) for name in repository.MESSAGE_COPY_FIELDS},
                            "flags": changed[row.uid],
                            "since_seq": self.seq,
                        }
                        for row in closed
                    ],
                )
            await self._keep_statistics()

    async def _fetch_new(
        self, imap: ImapConnection, folder_id: int, first_uid: int, uidnext: int
    ) -> None:
        """Store the messages from `first_uid` up to the listed `uidnext`. Mail delivered
        since the listing is left to the next run: the folder's state recorded for this
        snapshot is the listed one, and a message above it would be taken for new again
        (a second row of one UID), its expunge never seen."""
        uids = await _search_uids(imap, first_uid, uidnext - 1)
        for start in range(0, len(uids), METADATA_BATCH):
            window = uids[start : start + METADATA_BATCH]
            metas = await self._fetch_metadata(imap, window)
            await self._store_new(imap, folder_id, metas)
            await self._keep_statistics()

    async def _fetch_metadata(self, imap: ImapConnection, uids: Sequence[int]) -> list[_Meta]:
        identity = IDENTITY_HEADER if self.seen_before else b""
        answer = await imap.command(
            b"UID FETCH %s (UID FLAGS INTERNALDATE RFC822.SIZE%s)"
            % (uid_set(uids).encode(), identity)
        )
        metas = [m for m in (_parse_meta(r) for r in answer.of("FETCH")) if m is not None]
        wanted = set(uids)
        return sorted((m for m in metas if m.uid in wanted), key=lambda m: m.uid)

    async def _store_new(self, imap: ImapConnection, folder_id: int, metas: list[_Meta]) -> None:
        identified = [m for m in metas if m.identifiable]
        known = {}
        if identified:
            async with transaction_on(self.connection) as session:
                known = await repository.known_by_identity(
                    session,
                    self.mailbox_id,
                    message_ids=[str(m.fields["message_id"]) for m in identified if m.fields],
                    internal_dates=[m.internal_date for m in identified],
                )
        rows: list[dict[str, Any]] = []
        to_fetch: list[_Meta] = []
        for meta in metas:
            seen = known.get(meta.identity) if meta.identifiable else None
            if seen is not None:
                rows.append(
                    {
                        **{n: getattr(seen, n) for n in repository.MESSAGE_COPY_FIELDS},
                        "folder_id": folder_id,
                        "uid": meta.uid,
                        "flags": meta.flags,
                        "since_seq": self.seq,
                    }
                )
            else:
                to_fetch.append(meta)
        if rows:
            async with transaction_on(self.connection) as session:
                await self._insert_messages(session, rows)
        small = [m for m in to_fetch if m.size <= FRAME_PLAINTEXT_BYTES]
        # One body batch in flight while the previous one is hashed, sealed, written and
        # catalogued: the connection never idles during the CPU, fsync and DB work.
        pending: asyncio.Task[dict[int, bytes]] | None = None
        fetches = list(batches(small, count=BODY_BATCH, max_bytes=BODY_BATCH_BYTES))
        try:
            for index, batch in enumerate(fetches):
                bodies = await (pending or self._fetch_bodies(imap, batch))
                pending = None
                if index + 1 < len(fetches):
                    pending = asyncio.create_task(self._fetch_bodies(imap, fetches[index + 1]))
                await self._store_batch(folder_id, batch, bodies)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await pending
        for meta in to_fetch:
            if meta.size > FRAME_PLAINTEXT_BYTES:
                await self._store_large(imap, folder_id, meta)

    async def _fetch_bodies(self, imap: ImapConnection, batch: Sequence[_Meta]) -> dict[int, bytes]:
        answer = await imap.command(
            b"UID FETCH %s (UID BODY.PEEK[])" % uid_set(m.uid for m in batch).encode()
        )
        bodies: dict[int, bytes] = {}
        for response in answer.of("FETCH"):
            items = fetch_items(response)
            # A string: a bare NIL (the protocol allows it for a body) is no message.
            if "UID" in items and isinstance(items.get("BODY[]"), Literal | Quoted):
                bodies[int(items["UID"])] = bytes(items["BODY[]"])
        return bodies

    async def _store_batch(
        self, folder_id: int, batch: list[_Meta], bodies: dict[int, bytes]
    ) -> None:
        present = [m for m in batch if m.uid in bodies]  # expunged meanwhile: not in snapshot
        for meta in present:
            _check_whole(meta, len(bodies[meta.uid]))
        data = [bodies[m.uid] for m in present]
        # Threads get only the work that releases the GIL (hashing, compression, cipher,
        # writes); the pure-Python header parse runs here: in a thread it holds the GIL in
        # 5 ms slices that every socket call of the event loop then waits for.
        hashes = await asyncio.to_thread(_hash_all, data)
        envelopes = [envelope(message) for message in data]
        async with transaction_on(self.connection) as session:
            stored = await repository.existing_blobs(
                session, [h.digest for h in hashes] + [h.body[1] for h in hashes if h.body]
            )
        fresh: dict[bytes, _Fresh] = {}
        for hashed, message in zip(hashes, data, strict=True):
            if hashed.digest in stored or hashed.digest in fresh:
                continue
            if hashed.body is None:
                fresh[hashed.digest] = _Fresh(hashed.digest, message, None, len(message))
                continue
            start, body_digest = hashed.body
            view = memoryview(message)
            if body_digest not in stored and body_digest not in fresh:
                fresh[body_digest] = _Fresh(body_digest, view[start:], None, len(view) - start)
            fresh[hashed.digest] = _Fresh(hashed.digest, view[:start], body_digest, len(message))
        blobs = list(fresh.values())
        sealed = await asyncio.to_thread(
            _seal_all, blobs, self.settings.backup_key_id, self.settings.backup_zstd_level
        )
        blob_rows = await self._write(list(zip(blobs, sealed, strict=True)))
        self.counters.messages_fetched += len(data)
        self.counters.bytes_read += sum(len(b) for b in data)
        rows = [
            self._message_row(folder_id, meta, hashed.digest, len(message), fields)
            for meta, hashed, fields, message in zip(present, hashes, envelopes, data, strict=True)
        ]
        async with transaction_on(self.connection) as session:
            if blob_rows:
                assert self._pack is not None
                await repository.record_pack(session, self._pack.pack_id, self._pack.size)
                await repository.insert_blobs(session, blob_rows)
            await self._insert_messages(session, rows)

    def _message_row(
        self, folder_id: int, meta: _Meta, blob_hash: bytes, size: int, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """A catalog row for a message fetched into this snapshot (`fields`: its envelope)."""
        return {
            "mailbox_id": self.mailbox_id,
            "folder_id": folder_id,
            "uid": meta.uid,
            "blob_hash": blob_hash,
            "flags": meta.flags,
            "internal_date": meta.internal_date,
            "size": size,
            **fields,
            "since_seq": self.seq,
        }

    def _blob_row(
        self,
        blob_hash: bytes,
        pack: PackWriter,
        offset: int,
        length: int,
        size: int,
        body_hash: bytes | None = None,
    ) -> dict[str, Any]:
        """A catalog row for a blob sealed at `offset` of `pack` (`size`: its whole plaintext,
        `body_hash`: the body blob that follows what is sealed there)."""
        return {
            "hash": blob_hash,
            "pack_id": pack.pack_id,
            "offset": offset,
            "length": length,
            "size": size,
            "key_id": self.settings.backup_key_id,
            "body_hash": body_hash,
        }

    async def _pack_writer(self) -> PackWriter:
        if self._pack is not None and self._pack.size >= PACK_TARGET_BYTES:
            await asyncio.to_thread(self._pack.close)
            self._pack = None
        if self._pack is None:
            self._pack = await asyncio.to_thread(self.storage.create)
        return self._pack

    async def _write(self, sealed: list[tuple[_Fresh, bytes]]) -> list[dict[str, Any]]:
        """Append sealed blobs to the pack and fsync; return their catalog rows."""
        if not sealed:
            return []
        pack = await self._pack_writer()

        def write() -> list[dict[str, Any]]:
            rows = []
            for blob, stored in sealed:
                offset = pack.append(stored)
                rows.append(
                    self._blob_row(
                        blob.digest, pack, offset, len(stored), blob.size, blob.body_digest
                    )
                )
            pack.sync()
            return rows

        rows = await asyncio.to_thread(write)
        self.counters.bytes_stored += sum(int(r["length"]) for r in rows)
        return rows

    async def _store_large(self, imap: ImapConnection, folder_id: int, meta: _Meta) -> None:
        """A message over one frame: fetched, hashed, sealed and written a chunk at a time.
        Its body is written as a blob of its own, then its header section after it."""
        pack = await self._pack_writer()
        start = pack.size
        whole, body = hashlib.sha256(), hashlib.sha256()
        header = b""  # the header section, kept back while the body streams to the pack
        fields: dict[str, Any] | None = None
        offset, index = 0, 0
        key_id, level = self.settings.backup_key_id, self.settings.backup_zstd_level

        def seal(chunk: bytes, part: memoryview, index: int) -> bytes:
            whole.update(chunk)
            body.update(part)
            return seal_frames(part, key_id=key_id, level=level, first_index=index)

        async for chunk in imap.body_chunks(meta.uid, FRAME_PLAINTEXT_BYTES):
            part = memoryview(chunk)
            if fields is None:
                fields = await asyncio.to_thread(envelope, chunk)
                split = body_start(chunk, meta.size) or 0
                header, part = chunk[:split], part[split:]
            frame = await asyncio.to_thread(seal, chunk, part, index)
            await asyncio.to_thread(pack.append, frame)
            offset += len(chunk)
            index += 1
        if offset != meta.size:
            await asyncio.to_thread(pack.truncate, start)
        if offset == 0:
            return  # expunged meanwhile
        _check_whole(meta, offset)
        blob_hash, body_hash = whole.digest(), body.digest()
        self.counters.messages_fetched += 1
        self.counters.bytes_read += offset
        async with transaction_on(self.connection) as session:
            already = await repository.existing_blobs(session, [blob_hash, body_hash])
        blob_rows: list[dict[str, Any]] = []
        if blob_hash in already or body_hash in already:
            await asyncio.to_thread(pack.truncate, start)
        if blob_hash not in already:
            if body_hash not in already:
                blob_rows.append(
                    self._blob_row(
                        body_hash if header else blob_hash,
                        pack,
                        start,
                        pack.size - start,
                        offset - len(header),
                    )
                )
            if header:
                sealed = await asyncio.to_thread(seal_frames, header, key_id=key_id, level=level)
                at = await asyncio.to_thread(pack.append, sealed)
                blob_rows.append(
                    self._blob_row(blob_hash, pack, at, len(sealed), offset, body_hash)
                )
            await asyncio.to_thread(pack.sync)
            self.counters.bytes_stored += sum(int(r["length"]) for r in blob_rows)
        async with transaction_on(self.connection) as session:
            if blob_rows:
                await repository.record_pack(session, pack.pack_id, pack.size)
                await repository.insert_blobs(session, blob_rows)
            await self._insert_messages(
                session, [self._message_row(folder_id, meta, blob_hash, offset, fields or {})]
            )


async def backup_mailbox(
    *,
    mailbox_id: uuid.UUID,
    run_id: uuid.UUID | None,
    storage: PackStorage,
    settings: Settings | None = None,
) -> tuple[Snapshot, BackupCounters]:
    """Back up the mailbox into a new committed snapshot; idempotent after a crash."""
    settings = settings or get_settings()
    async with mailbox_lock(mailbox_id) as connection:
        async with transaction_on(connection) as session:
            mailbox = await repository.mailbox(session, mailbox_id)
            if mailbox is None or mailbox.status not in repository.BACKED_UP_STATUSES:
                raise MailboxUnavailable(
                    f"mailbox {mailbox_id} is {mailbox.status if mailbox else 'unknown'}"
                )
            discarded = await repository.discard_pending_snapshots(session, mailbox_id)
            if discarded:
                log.info("discarded an interrupted snapshot", extra={"mailbox_id": str(mailbox_id)})
            seq = await repository.next_seq(session, mailbox_id)
            snap = Snapshot(
                mailbox_id=mailbox_id,
                department_id=mailbox.department_id,
                run_id=run_id,
                seq=seq,
                status=SnapshotStatus.PENDING.value,
            )
            session.add(snap)
            await session.flush()
            snapshot_id = snap.id
            current = {f.name: f for f in await repository.current_folders(session, mailbox_id)}
            seen_before = await repository.has_messages(session, mailbox_id)
            catalog_size = await repository.catalog_size(session)
        job = MailboxBackup(
            mailbox_id=mailbox_id,
            snapshot_id=snapshot_id,
            seq=seq,
            storage=storage,
            settings=settings,
            connection=connection,
            seen_before=seen_before,
            catalog_size=catalog_size,
        )
        async with master_connection(str(mailbox_id), settings) as imap:
            await job.run(imap, current)
        async with transaction_on(connection) as session:
            for folder_id, (uidnext, modseq) in job.folder_states.items():
                await repository.set_folder_state(
                    session, folder_id, uidnext=uidnext, highestmodseq=modseq
                )
            committed = await repository.commit_snapshot(session, snapshot_id, seq)
            committed.messages_fetched = job.counters.messages_fetched
            committed.bytes_read = job.counters.bytes_read
            committed.bytes_stored = job.counters.bytes_stored
        return committed, job.counters


# ---------------------------------------------------------------- many mailboxes at once


@dataclass
class MailboxOutcome:
    """How one mailbox of a multi-mailbox backup ended: a snapshot, or an error."""

    mailbox_id: uuid.UUID
    snapshot: Snapshot | None
    counters: BackupCounters
    error: str | None = None


async def _server_folders(
    mailbox_id: uuid.UUID, settings: Settings
) -> dict[str, tuple[int, int, int]] | None:
    """The mailbox's folders with (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ), from one pipelined
    LOGIN + LIST-STATUS + LOGOUT; None if that did not give every folder's status."""
    try:
        login, listing = await master_commands(str(mailbox_id), [LIST_STATUS], settings)
    except ImapProtocolError:
        return None  # the full path retries and reports it
    if login.status != "OK" or listing.status != "OK":
        return None
    folders = _list_status(listing)
    if not all(isinstance(f, _FolderStatus) for f in folders):
        return None
    return {
        f.name: (f.uidvalidity, f.uidnext, f.highestmodseq)
        for f in folders
        if isinstance(f, _FolderStatus)
    }


async def backup_unchanged(
    *,
    mailbox_ids: Sequence[uuid.UUID],
    run_id: uuid.UUID | None,
    settings: Settings | None = None,
) -> dict[uuid.UUID, Snapshot]:
    """The fast path of a run over many mailboxes: commit a new snapshot for each mailbox
    whose every folder is unchanged on the server since its latest committed snapshot, with
    two catalog queries for all of them, one pipelined status probe each (several at once),
    and one transaction for all of them.

    Returns those snapshots; every other mailbox (changed, interrupted before, never backed
    up, locked by a run in progress, unreachable) needs `backup_mailbox`."""
    settings = settings or get_settings()
    async with get_engine().connect() as connection:
        async with transaction_on(connection) as session:
            backed_up = await repository.fast_path_candidates(session, mailbox_ids)
        if not backed_up:
            return {}
        probes = asyncio.Semaphore(STATUS_PROBES)

        async def probe(mailbox_id: uuid.UUID) -> dict[str, tuple[int, int, int]] | None:
            async with probes:
                return await _server_folders(mailbox_id, settings)

        # The server is asked while the catalog is read.
        server = {m: asyncio.create_task(probe(m)) for m in backed_up}
        try:
            async with transaction_on(connection) as session:
                states = await repository.catalog_states(session, backed_up)
            found = dict(zip(server, await asyncio.gather(*server.values()), strict=True))
        finally:
            for task in server.values():
                task.cancel()
        candidates = {
            m: state
            for m, state in states.items()
            if state.status in repository.BACKED_UP_STATUSES
            and state.latest_seq is not None
            and not state.pending
            and state.folders
            and found.get(m) == state.folders
        }
        snapshots: dict[uuid.UUID, Snapshot] = {}
        unchanged = list(candidates)
        # Each advisory lock takes a slot of PostgreSQL's shared lock table until commit:
        # a run over thousands of mailboxes commits them a chunk at a time.
        for start in range(0, len(unchanged), FAST_PATH_CHUNK):
            async with transaction_on(connection) as session:
                # A run of the same mailbox in progress holds its lock: that mailbox is left
                # to the full path, which waits for it. One that starts now waits for this
                # commit.
                keys = {backup_lock_key(m): m for m in unchanged[start : start + FAST_PATH_CHUNK]}
                locked = [keys[k] for k in await repository.try_lock_all(session, list(keys))]
                # Under the lock, the catalog must still be what the server was compared with.
                again = await repository.catalog_states(session, locked)
                latest = {
                    m: seq
                    for m in locked
                    if again.get(m) == candidates[m]
                    and (seq := candidates[m].latest_seq) is not None
                }
                for snap in await repository.add_unchanged_snapshots(session, latest, run_id):
                    snapshots[snap.mailbox_id] = snap
    return snapshots


async def backup_mailboxes(
    *,
    mailbox_ids: Sequence[uuid.UUID],
    run_id: uuid.UUID | None,
    storage: PackStorage,
    settings: Settings | None = None,
    on_done: Callable[[list[MailboxOutcome]], Awaitable[None]] | None = None,
) -> list[MailboxOutcome]:
    """Back up every mailbox into a new committed snapshot: unchanged ones together through
    `backup_unchanged`, the rest one by one, several at once. A mailbox's failure does not
    stop the others; `on_done` hears of each outcome as it comes."""
    settings = settings or get_settings()
    outcomes: list[MailboxOutcome] = []

    async def report(done: list[MailboxOutcome]) -> None:
        outcomes.extend(done)
        if on_done is not None and done:
            await on_done(done)

    try:
        fast = await backup_unchanged(mailbox_ids=mailbox_ids, run_id=run_id, settings=settings)
    except Exception:
        # The fast path only saves work: whatever stopped it, the full path does it all.
        log.warning("unchanged-mailbox fast path failed", exc_info=True)
        fast = {}
    await report([MailboxOutcome(m, snap, BackupCounters()) for m, snap in fast.items()])
    limit = asyncio.Semaphore(settings.backup_imap_connections)

    async def one(mailbox_id: uuid.UUID) -> None:
        async with limit:
            try:
                snap, counters = await backup_mailbox(
                    mailbox_id=mailbox_id, run_id=run_id, storage=storage, settings=settings
                )
                outcome = MailboxOutcome(mailbox_id, snap, counters)
            except Exception as exc:
                # One mailbox's failure must not stop the others; the outcome reports it.
                log.warning("mailbox backup failed", extra={"mailbox_id": str(mailbox_id)})
                outcome = MailboxOutcome(
                    mailbox_id, None, BackupCounters(), f"{type(exc).__name__}: {exc}"
                )
            await report([outcome])

    tasks = [asyncio.create_task(one(m)) for m in mailbox_ids if m not in fast]
    try:
        await asyncio.gather(*tasks)
    finally:
        # An error out of `on_done` (the run's record unreachable) ends the call, and with
        # it every mailbox's backup: none may go on, or report, once it has returned.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return outcomes
