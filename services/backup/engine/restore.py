"""Restore messages of a snapshot into a mailbox over IMAP, idempotently.

Each target folder is created if missing; a message whose exact bytes are already in the
target folder is skipped (sizes are compared first, so only same-size messages are
downloaded and hashed). The rest is APPENDed with its flags and INTERNALDATE, pipelined
with LITERAL+, a batch per round trip, several folders in parallel on separate connections.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.backup.engine import utf7
from services.backup.engine.imap import (
    AppendItem,
    ImapConnection,
    ImapProtocolError,
    batches,
    fetch_items,
    master_connection,
    quote,
    uid_set,
)
from services.backup.engine.storage import (
    FRAME_PLAINTEXT_BYTES,
    PackStorage,
    StoredBlob,
    blob_chunks,
)
from shared.settings import Settings, get_settings

APPEND_BATCH = 50
APPEND_BATCH_BYTES = 16 << 20
EXISTING_BATCH = 50


class FolderRejected(Exception):
    """The server refused to create or open a target folder."""

    def __init__(self, folder: str, detail: str) -> None:
        super().__init__(f"the mail server rejected folder {folder!r}: {detail}")
        self.folder = folder


@dataclass(frozen=True)
class RestoreItem:
    """One message to restore: its blob, flags and INTERNALDATE."""

    blob: StoredBlob
    flags: Sequence[str]
    internal_date: datetime

    @property
    def size(self) -> int:
        return self.blob.size


@dataclass
class RestoreProgress:
    done: int = 0
    restored: int = 0
    skipped: int = 0


async def _blob_chunks(storage: PackStorage, blob: StoredBlob) -> AsyncIterator[bytes]:
    """`blob_chunks` with the reads, decryption and hashing in a thread."""
    chunks = blob_chunks(storage, blob)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


async def _ensure_folder(imap: ImapConnection, encoded: str, name: str) -> int:
    """Create the folder if needed and return its message count."""
    created = await imap.command(b"CREATE " + quote(encoded), check=False)
    if created.status != "OK" and "ALREADYEXISTS" not in created.text.upper():
        raise FolderRejected(name, created.text)
    examined = await imap.command(b"EXAMINE " + quote(encoded), check=False)
    if examined.status != "OK":
        raise FolderRejected(name, examined.text)
    return next((u.number or 0 for u in examined.of("EXISTS")), 0)


@dataclass(frozen=True)
class _Candidate:
    """A message in the target folder that may be one we restore (its size matches)."""

    uid: int
    size: int


async def _existing_hashes(
    imap: ImapConnection, exists: int, wanted_sizes: set[int]
) -> Counter[bytes]:
    """SHA-256 of the folder's messages whose size matches one we may restore: small ones
    a batch per FETCH, large ones a chunk at a time, so memory stays bounded."""
    found: Counter[bytes] = Counter()
    if not exists or not wanted_sizes:
        return found
    listing = await imap.command(b"UID FETCH 1:* (UID RFC822.SIZE)")
    candidates = []
    for response in listing.of("FETCH"):
        items = fetch_items(response)
        size = int(items.get("RFC822.SIZE", -1))
        if size in wanted_sizes:
            candidates.append(_Candidate(int(items["UID"]), size))
    small = [c for c in candidates if c.size <= FRAME_PLAINTEXT_BYTES]
    for batch in batches(small, count=EXISTING_BATCH, max_bytes=APPEND_BATCH_BYTES):
        answer = await imap.command(
            b"UID FETCH %s (UID BODY.PEEK[])" % uid_set(c.uid for c in batch).encode()
        )
        bodies = [bytes(fetch_items(r).get("BODY[]") or b"") for r in answer.of("FETCH")]
        found.update(
            await asyncio.to_thread(lambda bs: [hashlib.sha256(b).digest() for b in bs], bodies)
        )
    for large in (c for c in candidates if c.size > FRAME_PLAINTEXT_BYTES):
        hasher = hashlib.sha256()
        async for chunk in imap.body_chunks(large.uid, FRAME_PLAINTEXT_BYTES):
            await asyncio.to_thread(hasher.update, chunk)
        found[hasher.digest()] += 1
    return found


async def restore_folder(
    imap: ImapConnection,
    *,
    folder: str,
    items: Sequence[RestoreItem],
    storage: PackStorage,
    progress: RestoreProgress,
    on_progress: Callable[[], object] | None = None,
) -> None:
    """Restore `items` into `folder` (a UTF-8 name), skipping messages already there."""
    encoded = utf7.encode(folder)
    exists = await _ensure_folder(imap, encoded, folder)
    present = await _existing_hashes(imap, exists, {i.size for i in items})
    pending: list[RestoreItem] = []
    for item in items:
        if present[item.blob.hash] > 0:
            present[item.blob.hash] -= 1
            progress.skipped += 1
            progress.done += 1
        else:
            pending.append(item)
    for batch in batches(pending, count=APPEND_BATCH, max_bytes=APPEND_BATCH_BYTES):
        answers = await imap.append_many(
            encoded,
            [
                AppendItem(
                    flags=b.flags,
                    internal_date=b.internal_date,
                    size=b.size,
                    chunks=_blob_chunks(storage, b.blob),
                )
                for b in batch
            ],
        )
        for answer in answers:
            if answer.status != "OK":
                raise ImapProtocolError(f"APPEND to {folder!r} failed: {answer.text}")
        progress.restored += len(batch)
        progress.done += len(batch)
        if on_progress is not None:
            result = on_progress()
            if asyncio.iscoroutine(result):
                await result


async def restore_messages(
    *,
    address: str,
    folders: dict[str, list[RestoreItem]],
    storage: PackStorage,
    progress: RestoreProgress,
    on_progress: Callable[[], object] | None = None,
    connections: int | None = None,
    settings: Settings | None = None,
) -> None:
    """Restore into the mailbox at `address`, several folders at once on own connections."""
    settings = settings or get_settings()
    queue = list(folders.items())
    # Parents first: restoring `a/b` before `a` exists would create `a` as \NoSelect.
    queue.sort(key=lambda pair: pair[0])
    lanes = max(1, min(connections or settings.backup_imap_connections, len(queue)))

    async def lane() -> None:
        async with master_connection(address, settings) as imap:
            while queue:
                folder, items = queue.pop(0)
                await restore_folder(
                    imap,
                    folder=folder,
                    items=items,
                    storage=storage,
                    progress=progress,
                    on_progress=on_progress,
                )

    if queue:
        async with asyncio.TaskGroup() as group:
            for _ in range(lanes):
                group.create_task(lane())
