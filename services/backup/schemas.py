"""Request and response bodies of the backup API."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    model_validator,
)

from services.backup.engine import utf7
from shared.models.backup import BackupScope, JobStatus, RestoreMode
from shared.schemas import NO_NUL, FromRow, RowIdIn, Strict, field_error, representable

# Dovecot's Maildir++ keeps a folder as one directory named by a dot and the whole name,
# modified UTF-7: 254 bytes at most (measured on Dovecot 2.3: 255 is refused). A folder to
# restore under is held to less, to leave room for the folders restored under it.
MAX_FOLDER_BYTES = 254
MAX_TARGET_FOLDER_BYTES = 200


def check_folder_name(value: str, max_bytes: int = MAX_FOLDER_BYTES) -> str:
    """Refuse what Dovecot refuses when creating a folder (measured on Dovecot 2.3)."""
    if not value:
        raise ValueError("a folder name may not be empty")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("control characters are not allowed in folder names")
    if "." in value:
        raise ValueError("'.' is not allowed in folder names")
    if value.startswith(("/", "~")):
        raise ValueError("a folder name may not begin with '/' or '~'")
    if "//" in value or value.endswith("/"):
        raise ValueError("a folder name may not have empty levels")
    if len(utf7.encode(value).encode()) > max_bytes:
        raise ValueError(f"the folder name is over {max_bytes} bytes (encoded)")
    return value


def check_target_folder(value: str) -> str:
    return check_folder_name(value, MAX_TARGET_FOLDER_BYTES)


# The pattern documents `check_target_folder` for clients (pydantic's regex engine has no
# look-ahead, so the validator, not the pattern, is what enforces it).
TargetFolder = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1000,
        json_schema_extra={"pattern": r"^(?![/~])(?!.*//)(?!.*/$)[^.\x00-\x1f\x7f-\x9f]+$"},
    ),
    AfterValidator(check_target_folder),
]


class BackupRequest(Strict):
    mailbox_id: uuid.UUID | None = None
    department_id: uuid.UUID | None = None
    all: StrictBool = False

    @model_validator(mode="after")
    def _one_scope(self) -> BackupRequest:
        given = [
            name
            for name, value in (
                ("mailbox_id", self.mailbox_id is not None),
                ("department_id", self.department_id is not None),
                ("all", self.all),
            )
            if value
        ]
        if len(given) != 1:  # none: name the first way; more: the one beyond the first
            raise field_error(
                given[1] if given else "mailbox_id",
                "give exactly one of mailbox_id, department_id, or all: true",
            )
        return self


class Accepted(BaseModel):
    id: uuid.UUID
    status: JobStatus


class BackupRunOut(BaseModel):
    id: uuid.UUID
    status: JobStatus
    reason: str | None
    scope: BackupScope
    mailbox_id: uuid.UUID | None
    department_id: uuid.UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    mailboxes_total: int
    mailboxes_done: int
    mailboxes_failed: int
    messages_fetched: int
    bytes_read: int
    bytes_stored: int


class SnapshotOut(FromRow):
    id: uuid.UUID
    mailbox_id: uuid.UUID
    department_id: uuid.UUID | None = Field(
        description="The department the mailbox was in when backed up: whose mail this is"
    )
    seq: int
    created_at: datetime
    completed_at: datetime | None
    folder_count: int
    message_count: int
    total_bytes: int
    messages_fetched: int
    bytes_read: int
    bytes_stored: int
    held_at: datetime | None = Field(description="When a hold began to keep it from prune")
    held_by: str | None
    hold_reason: str | None


class HoldIn(Strict):
    reason: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=1000, pattern=NO_NUL),
    ] = Field(description="Why the snapshot must be kept: the case, request or ticket")


class FolderOut(BaseModel):
    name: str
    uidvalidity: int
    messages: int
    bytes: int


class SnapshotDetail(SnapshotOut):
    folders: list[FolderOut]


class MessageOut(BaseModel):
    id: int
    folder: str
    uid: int
    flags: list[str]
    internal_date: datetime
    size: int
    sent_at: datetime | None
    from_: str = Field(serialization_alias="from")
    to: str
    subject: str
    message_id: str
    sha256: str


def _zoned(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("the time needs a timezone, e.g. 2024-05-01T12:00:00Z")
    return value


class RestoreTarget(Strict):
    mode: RestoreMode
    folder: TargetFolder | None = None
    mailbox_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _fields_of_mode(self) -> RestoreTarget:
        if self.mode is RestoreMode.FOLDER and self.folder is None:
            raise field_error("folder", "mode 'folder' needs a folder")
        if self.mode is RestoreMode.MAILBOX and self.mailbox_id is None:
            raise field_error("mailbox_id", "mode 'mailbox' needs a mailbox_id")
        # A field another mode takes is a mistake to say, not to guess at.
        if self.mode is RestoreMode.ORIGINAL and self.folder is not None:
            raise field_error(
                "folder", "mode 'original' takes no folder (mode 'folder' restores under one)"
            )
        if self.mode is not RestoreMode.MAILBOX and self.mailbox_id is not None:
            raise field_error(
                "mailbox_id", f"mode {self.mode.value!r} takes no mailbox_id (mode 'mailbox' does)"
            )
        return self


class RestoreRequest(Strict):
    mailbox_id: uuid.UUID
    snapshot_id: uuid.UUID | None = None
    at: Annotated[datetime, AfterValidator(_zoned), AfterValidator(representable)] | None = None
    folders: list[Annotated[str, Field(min_length=1, max_length=1000)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )
    message_ids: list[RowIdIn] | None = Field(default=None, min_length=1, max_length=100_000)
    target: RestoreTarget

    @model_validator(mode="after")
    def _one_point(self) -> RestoreRequest:
        if (self.snapshot_id is None) == (self.at is None):
            field = "snapshot_id" if self.snapshot_id is None else "at"  # missing, or extra
            raise field_error(field, "give exactly one of snapshot_id or at")
        return self


class RestoreOut(FromRow):
    id: uuid.UUID
    status: JobStatus
    reason: str | None
    mailbox_id: uuid.UUID
    snapshot_id: uuid.UUID
    target_mode: RestoreMode
    target_mailbox_id: uuid.UUID
    target_folder: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    total: int
    done: int
    restored: int
    skipped: int


class PolicyIn(Strict):
    interval_seconds: StrictInt = Field(ge=60, le=366 * 86400)
    keep_last: StrictInt = Field(ge=1, le=10_000)
    keep_daily: StrictInt = Field(default=0, ge=0, le=10_000)
    keep_weekly: StrictInt = Field(default=0, ge=0, le=10_000)
    keep_monthly: StrictInt = Field(default=0, ge=0, le=10_000)


class PolicyOut(BaseModel):
    department_id: uuid.UUID | None
    interval_seconds: int
    keep_last: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    is_default: bool


class VerifyRequest(Strict):
    fraction: StrictFloat = Field(default=1.0, gt=0.0, le=1.0)


class VerifyOut(FromRow):
    id: uuid.UUID
    status: JobStatus
    reason: str | None
    fraction: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    blobs_checked: int
    blobs_damaged: int
    damage: list[dict[str, Any]]


ExportFormat = Literal["mbox"]
