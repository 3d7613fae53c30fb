"""Tables of the backup area of the shared schema.

The catalog grows with changes, not with snapshots: each snapshot of a mailbox has a
sequence number, and every folder and message row is valid for a half-open range of them
(`since_seq <= seq < until_seq`, `until_seq` NULL while it is still current). A snapshot of
an unchanged mailbox adds one `snapshots` row and nothing else.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base
from shared.models.core import one_of, timestamp_now, uuid_primary_key


def _counter() -> Mapped[int]:
    return mapped_column(BigInteger, server_default=text("0"))


class JobStatus(enum.StrEnum):
    """Where a backup, restore or verify run is; `failed` carries a reason."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class SnapshotStatus(enum.StrEnum):
    """`pending` while its data is written; only `committed` snapshots are ever read."""

    PENDING = "pending"
    COMMITTED = "committed"


class BackupScope(enum.StrEnum):
    MAILBOX = "mailbox"
    DEPARTMENT = "department"
    ALL = "all"
    SCHEDULED = "scheduled"
    FINAL = "final"


def backup_lock_key(mailbox_id: uuid.UUID) -> str:
    """The advisory lock (by `hashtext` of this key) a backup of the mailbox holds while it
    runs. The purge of a deleted mailbox takes it too: no backup may read it half emptied
    and keep that as its newest snapshot."""
    return f"backup:{mailbox_id}"


class RestoreMode(enum.StrEnum):
    """`original`: the snapshot's folders of the same mailbox; `folder`: under one folder of
    the same mailbox; `mailbox`: the snapshot's folders in another mailbox."""

    ORIGINAL = "original"
    FOLDER = "folder"
    MAILBOX = "mailbox"


class BackupPolicy(Base):
    """A department's backup interval and retention; no row means the settings' default."""

    __tablename__ = "backup_policies"
    __table_args__ = (
        CheckConstraint("interval_seconds >= 60", name="interval_positive"),
        CheckConstraint("keep_last >= 1", name="keep_last_positive"),
        CheckConstraint(
            "keep_daily >= 0 AND keep_weekly >= 0 AND keep_monthly >= 0", name="keep_nonnegative"
        ),
    )

    id: Mapped[uuid.UUID] = uuid_primary_key()
    department_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("departments.id"), unique=True)
    interval_seconds: Mapped[int] = mapped_column(Integer)
    keep_last: Mapped[int] = mapped_column(Integer)
    keep_daily: Mapped[int] = mapped_column(Integer)
    keep_weekly: Mapped[int] = mapped_column(Integer)
    keep_monthly: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = timestamp_now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class BackupRun(Base):
    """One requested backup (a mailbox, a department, everything, or a scheduled one)."""

    __tablename__ = "backup_runs"
    __table_args__ = (
        CheckConstraint(one_of("status", JobStatus), name="status_known"),
        CheckConstraint(one_of("scope", BackupScope), name="scope_known"),
        Index("ix_backup_runs_status_finished_at", "status", "finished_at"),
    )

    id: Mapped[uuid.UUID] = uuid_primary_key()
    status: Mapped[str] = mapped_column(Text, server_default=JobStatus.QUEUED.value)
    reason: Mapped[str | None] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    mailbox_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    department_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("departments.id"))
    requested_by: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = timestamp_now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    mailboxes_total: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    mailboxes_done: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    mailboxes_failed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    messages_fetched: Mapped[int] = _counter()
    bytes_read: Mapped[int] = _counter()
    bytes_stored: Mapped[int] = _counter()


class Snapshot(Base):
    """A mailbox's state at one point; committed only once all its data is durable."""

    __tablename__ = "snapshots"
    __table_args__ = (
        CheckConstraint(one_of("status", SnapshotStatus), name="status_known"),
        UniqueConstraint("mailbox_id", "seq", name="uq_snapshots_mailbox_id_seq"),
        Index("ix_snapshots_mailbox_id_completed_at", "mailbox_id", "completed_at"),
    )

    id: Mapped[uuid.UUID] = uuid_primary_key()
    mailbox_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mailboxes.id"))
    # The department the mailbox was in when it was backed up: whose mail the snapshot
    # holds, after the mailbox moves too (None: taken before this was recorded).
    department_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("departments.id"))
    run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("backup_runs.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text, server_default=SnapshotStatus.PENDING.value)
    created_at: Mapped[datetime] = timestamp_now()
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    folder_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    message_count: Mapped[int] = _counter()
    total_bytes: Mapped[int] = _counter()
    messages_fetched: Mapped[int] = _counter()
    bytes_read: Mapped[int] = _counter()
    bytes_stored: Mapped[int] = _counter()
    # A hold (a legal or audit request) keeps the snapshot whatever retention says, until
    # an admin releases it.
    held_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    held_by: Mapped[str | None] = mapped_column(Text)
    hold_reason: Mapped[str | None] = mapped_column(Text)


class BackupPack(Base):
    """A file of encrypted blobs in the storage backend."""

    __tablename__ = "backup_packs"

    id: Mapped[uuid.UUID] = uuid_primary_key()
    size: Mapped[int] = _counter()
    created_at: Mapped[datetime] = timestamp_now()
    # Set when prune copied the pack's live blobs elsewhere; its file outlives this by a
    # grace period, for readers that looked a blob up just before it moved.
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BackupBlob(Base):
    """One distinct message, by the SHA-256 of its bytes: stored once however often seen.

    A message with a large body is stored as its header section here, continued by the
    blob `body_hash` (its body, by the body's own hash), so the copies of one message
    delivered to many mailboxes, which differ in their delivery headers, share the body.
    `size` is always the whole plaintext's; offset and length locate what is sealed here."""

    __tablename__ = "backup_blobs"
    # Partial: most blobs are whole messages, and an index entry per insert is not free.
    __table_args__ = (
        Index(
            "ix_backup_blobs_body_hash",
            "body_hash",
            postgresql_where=text("body_hash IS NOT NULL"),
        ),
    )

    hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    pack_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("backup_packs.id"), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(Text)
    body_hash: Mapped[bytes | None] = mapped_column(ForeignKey("backup_blobs.hash"))
    created_at: Mapped[datetime] = timestamp_now()


class BackupFolder(Base):
    """A folder of a mailbox for a range of its snapshots, with its IMAP sync state."""

    __tablename__ = "backup_folders"
    __table_args__ = (
        Index(
            "uq_backup_folders_current",
            "mailbox_id",
            "name",
            unique=True,
            postgresql_where=text("until_seq IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    mailbox_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    # The folder's name as people read it (decoded from IMAP's modified UTF-7).
    name: Mapped[str] = mapped_column(Text)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uidnext: Mapped[int] = mapped_column(BigInteger)
    highestmodseq: Mapped[int] = mapped_column(BigInteger)
    since_seq: Mapped[int] = mapped_column(Integer)
    until_seq: Mapped[int | None] = mapped_column(Integer)


class BackupMessage(Base):
    """A message in a folder for a range of snapshots; a flag change starts a new row."""

    __tablename__ = "backup_messages"
    __table_args__ = (
        Index(
            "ix_backup_messages_current",
            "folder_id",
            "uid",
            postgresql_where=text("until_seq IS NULL"),
        ),
        Index("ix_backup_messages_mailbox_seq", "mailbox_id", "since_seq", "until_seq"),
        Index("ix_backup_messages_mailbox_message_id", "mailbox_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    mailbox_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mailboxes.id"))
    folder_id: Mapped[int] = mapped_column(ForeignKey("backup_folders.id"), index=True)
    uid: Mapped[int] = mapped_column(BigInteger)
    blob_hash: Mapped[bytes] = mapped_column(ForeignKey("backup_blobs.hash"), index=True)
    flags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    internal_date: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    size: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    from_addr: Mapped[str] = mapped_column(Text, server_default="")
    to_addr: Mapped[str] = mapped_column(Text, server_default="")
    subject: Mapped[str] = mapped_column(Text, server_default="")
    message_id: Mapped[str] = mapped_column(Text, server_default="")
    since_seq: Mapped[int] = mapped_column(Integer)
    until_seq: Mapped[int | None] = mapped_column(Integer)


class RestoreJob(Base):
    """A requested restore of (part of) a snapshot into a mailbox."""

    __tablename__ = "restore_jobs"
    __table_args__ = (
        CheckConstraint(one_of("status", JobStatus), name="status_known"),
        CheckConstraint(one_of("target_mode", RestoreMode), name="target_mode_known"),
    )

    id: Mapped[uuid.UUID] = uuid_primary_key()
    status: Mapped[str] = mapped_column(Text, server_default=JobStatus.QUEUED.value)
    reason: Mapped[str | None] = mapped_column(Text)
    mailbox_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    # No foreign key: a restore's record outlives the snapshot once retention prunes it.
    snapshot_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    target_mode: Mapped[str] = mapped_column(Text)
    target_mailbox_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mailboxes.id"))
    target_folder: Mapped[str | None] = mapped_column(Text)
    folders: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    message_ids: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    requested_by: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = timestamp_now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    total: Mapped[int] = _counter()
    done: Mapped[int] = _counter()
    restored: Mapped[int] = _counter()
    skipped: Mapped[int] = _counter()


class VerifyRun(Base):
    """A re-read of stored blobs; `damage` lists each bad blob with the mailboxes and
    snapshots that need it."""

    __tablename__ = "backup_verify_runs"
    __table_args__ = (CheckConstraint(one_of("status", JobStatus), name="status_known"),)

    id: Mapped[uuid.UUID] = uuid_primary_key()
    status: Mapped[str] = mapped_column(Text, server_default=JobStatus.QUEUED.value)
    reason: Mapped[str | None] = mapped_column(Text)
    fraction: Mapped[float] = mapped_column(Double, server_default=text("1.0"))
    requested_by: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = timestamp_now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    blobs_checked: Mapped[int] = _counter()
    blobs_damaged: Mapped[int] = _counter()
    damage: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))


class PruneStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # it waited too long for the backups in progress
    FAILED = "failed"


class PruneRun(Base):
    """One prune (the nightly one, or `mailops backup prune`): what it did, or why not."""

    __tablename__ = "backup_prune_runs"
    __table_args__ = (
        CheckConstraint(one_of("status", PruneStatus), name="status_known"),
        Index("ix_backup_prune_runs_status_finished_at", "status", "finished_at"),
    )

    id: Mapped[uuid.UUID] = uuid_primary_key()
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = timestamp_now()
    # PruneResult's counts: snapshots, rows, blobs, repacked, freed_bytes, resealed, ...
    counts: Mapped[dict[str, int]] = mapped_column(JSONB, server_default=text("'{}'"))
