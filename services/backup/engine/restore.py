"""Restore messages of a snapshot into a mailbox over IMAP, idempotently.

Each target folder is created if missing (parents first, and subscribed, so that clients
showing subscribed folders only show it); a message whose exact bytes are already in the
target folder is skipped (sizes are compared first, so only same-size messages are
downloaded and hashed), unless that copy is marked \\Deleted and the backed-up one is not:
the next expunge would take it. The rest is APPENDed with its flags and INTERNALDATE,
pipelined with LITERAL+, a batch per round trip, several folders in parallel on separate
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.backup.engine import utf7
from services.backup.engine.imap import (
    AppendItem,
    ImapConnection,
    ImapProtocolError,
    Literal,
    Quoted,
    Untagged,
    as_str,
    batches,
    fetch_items,
    master_connection,
    quote,
    uid_set,
)
from services.backup.engine.storage import (
    FRAME_PLAINTEXT_BYTES,
    BlobDamaged,
    PackStorage,
    StoredBlob,
    blob_chunks_in_thread,
)
from shared.settings import Settings, get_settings

# Messages per MULTIAPPEND (and per FETCH of the duplicate check), capped in bytes. Dovecot
# does work in proportion to the folder once per command: a 100,000-message restore took
# 304 s in batches of 50 and 96 s in batches of 500. The blobs stream from the packs, so a
# batch's count costs no memory.
APPEND_BATCH = 500
APPEND_BATCH_BYTES = 16 << 20
EXISTING_BATCH = 500


class FolderRejected(Exception):
    """The server refused to create or open a target folder."""

    def __init__(self, folder: str, detail: str) -> None:
        super().__init__(f"the mail server rejected folder {folder!r}: {detail}")
        self.folder = folder


class TargetFull(Exception):
    """The server refused an APPEND because the target mailbox is over its quota."""

    def __init__(self, folder: str, detail: str) -> None:
        super().__init__(
            f"the target mailbox is over its quota: the mail server refused more mail in "
            f"{folder!r} ({detail}); raise the mailbox's quota or make room in it, then request "
            "the restore again (the messages restored already are skipped)"
        )


@dataclass(frozen=True)
class RestoreItem:
    """One message to restore: its catalog id, blob, flags and INTERNALDATE."""

    message_id: int
    blob: StoredBlob
    flags: Sequence[str]
    internal_date: datetime

    @property
    def size(self) -> int:
        return self.blob.size

    @property
    def deleted(self) -> bool:
        return _is_deleted(self.flags)


def _is_deleted(flags: Sequence[str]) -> bool:
    return any(f.lower() == "\\deleted" for f in flags)


@dataclass
class FolderProgress:
    done: int = 0
    restored: int = 0
    skipped: int = 0


@dataclass
class RestoreProgress:
    """A restore's counts: each target folder's, and the messages that did not read from
    the store (done with, not restored), by catalog id with the reason."""

    folders: dict[str, FolderProgress] = field(default_factory=dict)
    damaged: dict[int, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(f.done for f in self.folders.values()) + len(self.damaged)

    @property
    def restored(self) -> int:
        return sum(f.restored for f in self.folders.values())

    @property
    def skipped(self) -> int:
        return sum(f.skipped for f in self.folders.values())


class MessageDamaged(BlobDamaged):
    """A message to restore does not read from the store (its APPEND was cut off)."""

    def __init__(self, message: str, blob_hash: bytes | None, message_id: int) -> None:
        super().__init__(message, blob_hash)
        self.message_id = message_id


async def _create_folders(imap: ImapConnection, names: Sequence[str]) -> None:
    """Create the folders that are missing, parents first (`a/b` before `a` would make `a`
    a \\NoSelect name on some servers), and subscribe each one created."""
    for name in sorted(names):
        encoded = quote(utf7.encode(name))
        created = await imap.command(b"CREATE " + encoded, check=False)
        if created.status == "OK":
            await imap.command(b"SUBSCRIBE " + encoded, check=False)  # a view, not the mail
        elif "ALREADYEXISTS" not in created.text.upper():
            raise FolderRejected(name, created.text)


async def _examine(imap: ImapConnection, encoded: str, name: str) -> int:
    """Open the folder read-only; its message count."""
    examined = await imap.command(b"EXAMINE " + quote(encoded), check=False)
    if examined.status != "OK":
        raise FolderRejected(name, examined.text)
    return next((u.number or 0 for u in examined.of("EXISTS")), 0)


class _TargetFolder:
    """What a target folder held before the restore: its messages' sizes, listed once, and
    the SHA-256 of those whose size matches a message to restore, fetched a page at a time
    as the pages ask for them (small ones a batch per FETCH, large ones a chunk at a time),
    so memory holds about one page whatever the folder's size."""

    def __init__(self, imap: ImapConnection, by_size: dict[int, list[_Listed]]) -> None:
        self._imap = imap
        self._by_size = by_size
        # By (SHA-256, marked \Deleted): how many such copies the folder has to match.
        self._present: Counter[tuple[bytes, bool]] = Counter()

    @classmethod
    async def listed(cls, imap: ImapConnection, exists: int) -> _TargetFolder:
        by_size: dict[int, list[_Listed]] = {}

        def take(response: Untagged) -> None:
            items = fetch_items(response)
            if response.kind == "FETCH" and "UID" in items:
                flags = items.get("FLAGS")
                listed = _Listed(
                    int(items["UID"]),
                    int(items.get("RFC822.SIZE", -1)),
                    _is_deleted([as_str(f) for f in flags] if isinstance(flags, list) else []),
                )
                by_size.setdefault(listed.size, []).append(listed)

        if exists:
            await imap.command(b"UID FETCH 1:* (UID RFC822.SIZE FLAGS)", each=take)
        return cls(imap, by_size)

    def take(self, item: RestoreItem) -> bool:
        """Whether a copy of the item is there (and, if so, count it as matched): a copy
        marked \\Deleted only stands for an item that is marked so too."""
        for deleted in (False, True) if item.deleted else (False,):
            if self._present[item.blob.hash, deleted] > 0:
                self._present[item.blob.hash, deleted] -= 1
                return True
        return False

    async def hash_sizes(self, sizes: set[int]) -> None:
        """Hash the listed messages of these sizes, to be taken (each once)."""
        listed = [m for size in sizes for m in self._by_size.pop(size, ())]
        small = [m for m in listed if m.size <= FRAME_PLAINTEXT_BYTES]
        for batch in batches(small, count=EXISTING_BATCH, max_bytes=APPEND_BATCH_BYTES):
            deleted = {m.uid: m.deleted for m in batch}
            answer = await self._imap.command(
                b"UID FETCH %s (UID BODY.PEEK[])" % uid_set(deleted).encode()
            )
            # Only the batch's bodies: another session's flag change comes as an unsolicited
            # FETCH of UID and FLAGS, of any message, between them.
            bodies = {
                int(items["UID"]): bytes(items["BODY[]"])
                for items in map(fetch_items, answer.of("FETCH"))
                if int(items.get("UID", 0)) in deleted
                and isinstance(items.get("BODY[]"), Literal | Quoted)
            }
            hashes = await asyncio.to_thread(_sha256_each, bodies)
            self._present.update((digest, deleted[uid]) for uid, digest in hashes.items())
        for large in (m for m in listed if m.size > FRAME_PLAINTEXT_BYTES):
            hasher = hashlib.sha256()
            async for chunk in self._imap.body_chunks(large.uid, FRAME_PLAINTEXT_BYTES):
                await asyncio.to_thread(hasher.update, chunk)
            self._present[hasher.digest(), large.deleted] += 1


def _sha256_each(bodies: Mapping[int, bytes]) -> dict[int, bytes]:
    return {uid: hashlib.sha256(body).digest() for uid, body in bodies.items()}


@dataclass(frozen=True)
class _Listed:
    """A message of the target folder, as the listing gave it."""

    uid: int
    size: int
    deleted: bool


ItemPages = Callable[[], AsyncIterator[Sequence[RestoreItem]]]
"""The messages to restore into one folder, a page at a time (read as they are needed)."""


async def restore_folder(
    imap: ImapConnection,
    *,
    folder: str,
    pages: ItemPages,
    storage: PackStorage,
    progress: FolderProgress,
    on_progress: Callable[[], object] | None = None,
    leave_out: Collection[int] = (),
) -> None:
    """Restore the pages' items into `folder` (a UTF-8 name, created already), skipping
    messages already there, and those of `leave_out` (catalog ids) not counted."""
    encoded = utf7.encode(folder)
    target = await _TargetFolder.listed(imap, await _examine(imap, encoded, folder))
    async for page in pages():
        await target.hash_sizes({item.size for item in page})
        pending: list[RestoreItem] = []
        for item in page:
            if item.message_id in leave_out:
                continue
            if target.take(item):
                progress.skipped += 1
                progress.done += 1
            else:
                pending.append(item)
        if not pending:  # a page all there already: a rerun's progress moves too
            await _report(on_progress)
        for batch in batches(pending, count=APPEND_BATCH, max_bytes=APPEND_BATCH_BYTES):
            answers = await imap.append_many(
                encoded,
                [
                    AppendItem(
                        flags=b.flags,
                        internal_date=b.internal_date,
                        size=b.size,
                        chunks=_chunks_of(storage, b, folder),
                    )
                    for b in batch
                ],
            )
            for answer in answers:
                if answer.status != "OK" and "[OVERQUOTA]" in answer.text.upper():
                    raise TargetFull(folder, answer.text)
                if answer.status != "OK":
                    raise ImapProtocolError(f"APPEND to {folder!r} failed: {answer.text}")
            progress.restored += len(batch)
            progress.done += len(batch)
            await _report(on_progress)


async def _report(on_progress: Callable[[], object] | None) -> None:
    if on_progress is not None:
        result = on_progress()
        if asyncio.iscoroutine(result):
            await result


async def _chunks_of(storage: PackStorage, item: RestoreItem, folder: str) -> AsyncIterator[bytes]:
    """The item's bytes from the store; damage names the message."""
    try:
        async for chunk in blob_chunks_in_thread(storage, item.blob):
            yield chunk
    except BlobDamaged as exc:
        raise MessageDamaged(
            f"message {item.message_id} (for {folder!r}) does not read from the backup store "
            f"({exc})",
            exc.blob_hash,
            item.message_id,
        ) from exc


async def restore_messages(
    *,
    mailbox_id: uuid.UUID,
    folders: Mapping[str, ItemPages],
    storage: PackStorage,
    progress: RestoreProgress,
    on_progress: Callable[[], object] | None = None,
    connections: int | None = None,
    settings: Settings | None = None,
) -> None:
    """Restore into the mailbox, several folders at once on connections of their own.

    A message that does not read from the store (damage) is left out, named in
    `progress.damaged`, and the rest restored: its APPEND, cut off, ended the connection,
    so its folder is taken again on a new one, finding there what came before it."""
    settings = settings or get_settings()
    queue = list(folders.items())
    if not queue:
        return
    async with master_connection(str(mailbox_id), settings) as imap:
        await _create_folders(imap, list(folders))
    lanes = max(1, min(connections or settings.backup_imap_connections, len(queue)))

    async def lane() -> None:
        async with contextlib.AsyncExitStack() as connection:
            imap = await connection.enter_async_context(
                master_connection(str(mailbox_id), settings)
            )
            while queue:
                folder, pages = queue.pop(0)
                earlier = 0  # what attempts that a damaged message stopped appended
                while True:
                    part = progress.folders[folder] = FolderProgress()
                    try:
                        await restore_folder(
                            imap,
                            folder=folder,
                            pages=pages,
                            storage=storage,
                            progress=part,
                            on_progress=on_progress,
                            leave_out=progress.damaged,
                        )
                        break
                    except MessageDamaged as exc:
                        progress.damaged[exc.message_id] = str(exc)
                        earlier += part.restored
                        await connection.aclose()
                        imap = await connection.enter_async_context(
                            master_connection(str(mailbox_id), settings)
                        )
                # This attempt found what the earlier ones appended, and skipped it.
                part.skipped -= earlier
                part.restored += earlier

    async with asyncio.TaskGroup() as group:
        for _ in range(lanes):
            group.create_task(lane())
