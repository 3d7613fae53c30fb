"""Where blobs live: a storage backend of pack files, and the blob format inside a pack.

A blob is a run of frames, each `[u32 length][12-byte nonce][AES-256-GCM(zstd(chunk))]`, so a
large message is written and read a chunk at a time. A message with a large body is stored
as two blobs: its body, by the body's own hash, and its header section pointing at it. The
copies of one message delivered to many mailboxes differ in their delivery headers
(Return-Path, Delivered-To, Received ... for <recipient>), so only this way is the body of
a message delivered to 100 mailboxes stored once. The key is derived from the configured
secret and named by a key id that is stored with each blob, so keys can rotate. Pack files
are append-only; the catalog points at a blob only after its pack was fsynced, so a crash
can leave unreferenced bytes at a pack's end but never a reference to missing data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.settings import Settings, get_settings

FRAME_PLAINTEXT_BYTES = 4 << 20
# Below this a body is not stored on its own. The copies of one LMTP transaction are
# identical and stored once anyway; what differs is mostly a sender's Sent copy or a copy
# delivered alone, so a small body is stored twice rather than cost every message a
# second blob (a catalog row, a hash pass, a frame). Attachments are what is worth sharing.
SPLIT_BODY_BYTES = 32 << 10
_HEADER = struct.Struct(">I")
NONCE_BYTES = 12


class BlobDamaged(Exception):
    """A stored blob does not decrypt, decompress or hash to what the catalog says.

    `blob_hash`, when known, names the blob whose own stored bytes are bad: the body blob,
    when a message's header blob reads fine and its shared body does not."""

    def __init__(self, message: str, blob_hash: bytes | None = None) -> None:
        super().__init__(message)
        self.blob_hash = blob_hash


@lru_cache(maxsize=16)
def _derive(secret: str, key_id: str) -> AESGCM:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"mailops-backup:" + key_id.encode()
    ).derive(secret.encode())
    return AESGCM(key)


def cipher(key_id: str, settings: Settings | None = None) -> AESGCM:
    """The AEAD for `key_id`: the current key or a retired one still kept for reading."""
    settings = settings or get_settings()
    if key_id == settings.backup_key_id:
        return _derive(settings.backup_key.get_secret_value(), key_id)
    previous = settings.backup_previous_keys.get(key_id)
    if previous is None:
        raise BlobDamaged(f"no key with id {key_id!r} is configured")
    return _derive(previous.get_secret_value(), key_id)


def _aad(key_id: str, index: int) -> bytes:
    return b"%s:%d" % (key_id.encode(), index)


def _seal_frame(aead: AESGCM, key_id: str, index: int, chunk: bytes) -> tuple[bytes, ...]:
    """Frame `index` of a blob, `[u32 length][nonce][ciphertext]`, as its three parts."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = aead.encrypt(nonce, chunk, _aad(key_id, index))
    return _HEADER.pack(NONCE_BYTES + len(sealed)), nonce, sealed


def _open_frame(aead: AESGCM, key_id: str, index: int, body: bytes) -> bytes:
    """The compressed chunk a sealed frame (nonce + ciphertext) holds; raises BlobDamaged."""
    try:
        return aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], _aad(key_id, index))
    except InvalidTag as exc:
        raise BlobDamaged(f"frame {index} does not decrypt: InvalidTag") from exc


def seal_frames(
    data: bytes | memoryview,
    *,
    key_id: str,
    level: int,
    first_index: int = 0,
    compressor: zstandard.ZstdCompressor | None = None,
) -> bytes:
    """Compress and encrypt `data` as frames (CPU work: call it in a thread).

    zstd compressor objects are not thread-safe: a caller sealing many blobs in one thread
    passes one `compressor` for all (making one costs more than sealing a small blob).
    """
    aead = cipher(key_id)
    compressor = compressor or zstandard.ZstdCompressor(level=level)
    view = memoryview(data)
    # One copy of the output, in the join: copies hold the GIL, which the event loop waits for.
    parts: list[bytes] = []
    for index, start in enumerate(range(0, max(len(data), 1), FRAME_PLAINTEXT_BYTES)):
        chunk = compressor.compress(view[start : start + FRAME_PLAINTEXT_BYTES])
        parts += _seal_frame(aead, key_id, first_index + index, chunk)
    return b"".join(parts)


def _open(frames: Iterator[bytes], key_id: str) -> Iterator[bytes]:
    """The plaintext of each sealed frame (nonce + ciphertext); raises BlobDamaged."""
    aead = cipher(key_id)
    decompressor = zstandard.ZstdDecompressor()
    for index, body in enumerate(frames):
        chunk = _open_frame(aead, key_id, index, body)
        try:
            yield decompressor.decompress(chunk)
        except zstandard.ZstdError as exc:  # authentic, yet not what was sealed
            raise BlobDamaged(f"frame {index} does not decrypt: {type(exc).__name__}") from exc


class PackWriter(ABC):
    """An open, append-only pack; used from one thread at a time."""

    pack_id: uuid.UUID
    size: int

    @abstractmethod
    def append(self, data: bytes) -> int:
        """Write `data` at the end; return its offset."""

    @abstractmethod
    def truncate(self, size: int) -> None:
        """Drop what was written after `size` (a blob that turned out to be stored already)."""

    @abstractmethod
    def sync(self) -> None:
        """Make everything written so far durable."""

    @abstractmethod
    def close(self) -> None: ...


class PackStorage(ABC):
    """A storage backend holding pack files (local disk here; object storage would fit)."""

    @abstractmethod
    def create(self) -> PackWriter: ...

    @abstractmethod
    def read(self, pack_id: uuid.UUID, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def delete(self, pack_id: uuid.UUID) -> None: ...

    @abstractmethod
    def written_before(self, when: datetime) -> Iterator[uuid.UUID]:
        """The packs last written before `when` (prune looks there for files no row names)."""


def _fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# Directories of the store whose entries this process has made durable (fsynced their
# parent): one another thread has just made may not be yet, so its existence is no proof.
_DURABLE_DIRECTORIES: set[Path] = set()


def _durable_directory(path: Path, above: Path) -> None:
    """Make `path` and any missing directory between it and `above` (0700: only the
    service reads its store), each one's entry fsynced in its parent, once per process."""
    if path in _DURABLE_DIRECTORIES or path == above:
        return
    _durable_directory(path.parent, above)
    path.mkdir(mode=0o700, exist_ok=True)
    _fsync_directory(path.parent)
    _DURABLE_DIRECTORIES.add(path)


class _LocalPackWriter(PackWriter):
    def __init__(self, path: Path, pack_id: uuid.UUID) -> None:
        self.pack_id = pack_id
        self.size = 0
        self._file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        self._path = path
        try:
            # The new directory entry must survive a crash as well as the data.
            _fsync_directory(path.parent)
        except OSError:
            self._file.close()
            raise

    def append(self, data: bytes) -> int:
        offset = self.size
        self._file.write(data)
        self.size += len(data)
        return offset

    def truncate(self, size: int) -> None:
        self._file.flush()
        self._file.truncate(size)
        self._file.seek(size)
        self.size = size

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class LocalPackStorage(PackStorage):
    """Pack files under `<state dir>/backup/packs/ab/<uuid>.pack`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, pack_id: uuid.UUID) -> Path:
        name = pack_id.hex
        return self.root / name[:2] / f"{name}.pack"

    def create(self) -> PackWriter:
        pack_id = uuid.uuid4()
        path = self.path(pack_id)
        # Up to the state directory: `backup/` and `packs/` are the store's own to make.
        _durable_directory(path.parent, above=self.root.parent.parent)
        return _LocalPackWriter(path, pack_id)

    def read(self, pack_id: uuid.UUID, offset: int, length: int) -> bytes:
        try:
            with open(self.path(pack_id), "rb") as pack:
                pack.seek(offset)
                return pack.read(length)
        except FileNotFoundError as exc:
            raise BlobDamaged(f"pack {pack_id} is missing") from exc
        except OSError as exc:  # a bad sector (EIO), permissions: damage verify must report
            raise BlobDamaged(f"pack {pack_id} does not read: {exc.strerror or exc}") from exc

    def delete(self, pack_id: uuid.UUID) -> None:
        self.path(pack_id).unlink(missing_ok=True)

    def written_before(self, when: datetime) -> Iterator[uuid.UUID]:
        for path in self.root.glob("*/*.pack"):
            with contextlib.suppress(FileNotFoundError, ValueError):
                if path.stat().st_mtime < when.timestamp():
                    yield uuid.UUID(path.stem)


def body_start(head: bytes, size: int) -> int | None:
    """Where the body of a `size`-byte message starting with `head` begins, if the body is
    to be stored as a blob of its own (the header section ends in `head`)."""
    end = head.find(b"\r\n\r\n")
    if end < 0 or size - (end + 4) < SPLIT_BODY_BYTES:
        return None
    return end + 4


@dataclass(frozen=True)
class Sealed:
    """Where a run of sealed frames lies: a pack, an offset and a length, under a key; and
    the blob whose stored bytes they are."""

    blob_hash: bytes
    pack_id: uuid.UUID
    offset: int
    length: int
    key_id: str


@dataclass(frozen=True)
class StoredBlob:
    """A blob as the catalog knows it: the SHA-256 and size of its plaintext, and its sealed
    parts in order (the message; or its header section, then its body's blob)."""

    hash: bytes
    size: int
    parts: tuple[Sealed, ...]


def opens(storage: PackStorage, part: Sealed) -> bool | None:
    """Whether the part's first frame decrypts under the secret configured for its key id;
    None if its bytes do not read (a missing pack says nothing about the key)."""
    try:
        body = next(_sealed_frames(storage, part), None)
    except BlobDamaged:
        return None
    if body is None:
        return None
    try:
        _open_frame(cipher(part.key_id), part.key_id, 0, body)
    except BlobDamaged:
        return False
    return True


def _sealed_frames(storage: PackStorage, part: Sealed) -> Iterator[bytes]:
    """The sealed frames of a part: one read for a part no larger than a frame (most
    messages), else one read per frame header and one per frame."""
    if part.length <= FRAME_PLAINTEXT_BYTES:
        whole = storage.read(part.pack_id, part.offset, part.length)

        def read(at: int, length: int) -> bytes:
            return whole[at - part.offset : at - part.offset + length]
    else:

        def read(at: int, length: int) -> bytes:
            return storage.read(part.pack_id, at, length)

    position, end = part.offset, part.offset + part.length
    while position < end:
        header = read(position, _HEADER.size)
        if len(header) != _HEADER.size:
            raise BlobDamaged("truncated frame header")
        (length,) = _HEADER.unpack(header)
        position += _HEADER.size
        if length < NONCE_BYTES or position + length > end:
            raise BlobDamaged("frame length out of bounds")
        body = read(position, length)
        if len(body) != length:
            raise BlobDamaged("truncated frame")
        position += length
        yield body


def copy_sealed(storage: PackStorage, part: Sealed, to: PackWriter, key_id: str) -> Sealed:
    """Append `part`'s frames to `to` and say where the copy lies. Every frame is
    authenticated first, so no damaged byte is copied on as if it were good. Frames sealed
    under `key_id` are then copied as they are (a frame's authentication does not depend on
    where it lies); frames under another key are sealed again under `key_id`, their
    compressed chunks unchanged, so a retired key's data can be rewritten without it ever
    being decompressed. Raises BlobDamaged if `part` does not read back whole; the caller
    drops what was appended."""
    offset = to.size
    old, new = cipher(part.key_id), cipher(key_id)
    for index, body in enumerate(_sealed_frames(storage, part)):
        chunk = _open_frame(old, part.key_id, index, body)
        if part.key_id == key_id:
            to.append(_HEADER.pack(len(body)) + body)
        else:
            to.append(b"".join(_seal_frame(new, key_id, index, chunk)))
    return Sealed(part.blob_hash, to.pack_id, offset, to.size - offset, key_id)


def blob_chunks(storage: PackStorage, blob: StoredBlob) -> Iterator[bytes]:
    """The blob's plaintext a frame at a time, read from its packs as it goes, so memory
    holds about one frame whatever the message's size. The last chunk is held back until
    the whole plaintext matched the blob's size and SHA-256: a consumer never gets all of a
    blob that is not what the catalog says. Raises BlobDamaged."""
    digest, size, held = hashlib.sha256(), 0, None
    for part in blob.parts:
        try:
            for chunk in _open(_sealed_frames(storage, part), part.key_id):
                digest.update(chunk)
                size += len(chunk)
                if held is not None:
                    yield held
                held = chunk
        except BlobDamaged as exc:
            raise BlobDamaged(str(exc), part.blob_hash) from exc
    if size != blob.size or digest.digest() != blob.hash:
        raise BlobDamaged("content does not match its hash", blob.hash)
    if held is not None:
        yield held


async def blob_chunks_in_thread(storage: PackStorage, blob: StoredBlob) -> AsyncIterator[bytes]:
    """`blob_chunks` with the reads, decryption and hashing in a thread."""
    chunks = blob_chunks(storage, blob)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


def read_blob(storage: PackStorage, blob: StoredBlob) -> bytes:
    """The blob's plaintext, checked against its SHA-256 and size; raises BlobDamaged."""
    return b"".join(blob_chunks(storage, blob))


def check_blob(storage: PackStorage, blob: StoredBlob) -> None:
    """Read the whole blob back and check it, a frame at a time; raises BlobDamaged."""
    for _ in blob_chunks(storage, blob):
        pass


def default_storage(settings: Settings | None = None) -> PackStorage:
    settings = settings or get_settings()
    return LocalPackStorage(settings.resolved_state_dir / "backup" / "packs")
