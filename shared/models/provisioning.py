"""Tables of the provisioning area: configuration requests, credentials, rules, idempotency."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Integer, LargeBinary, Text, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base
from shared.models.core import one_of, timestamp_now


class RequestKind(enum.StrEnum):
    """What a configuration request form asks for."""

    CREATE_MAILBOX = "create_mailbox"
    CHANGE_QUOTA = "change_quota"
    CHANGE_ALLOCATION = "change_allocation"
    SUSPEND_MAILBOX = "suspend_mailbox"
    DELETE_MAILBOX = "delete_mailbox"


class RequestStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    COMPLETED = "completed"
    FAILED = "failed"


class ProvisioningRequest(Base):
    """A manager's configuration request form, approved or rejected by an operator."""

    __tablename__ = "provisioning_requests"
    __table_args__ = (
        CheckConstraint(one_of("kind", RequestKind), name="kind_known"),
        CheckConstraint(one_of("status", RequestStatus), name="status_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    kind: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    reason: Mapped[str] = mapped_column(Text, server_default="")
    department_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("departments.id"), index=True)
    status: Mapped[str] = mapped_column(
        Text, server_default=RequestStatus.PENDING.value, index=True
    )
    requested_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id"))
    decided_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id"))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = timestamp_now()
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CredentialPickup(Base):
    """A one-time pickup of a mailbox's generated password: the token's hash, and the
    password sealed under a key derived from the token until the pickup erases it (see
    services/provisioning/credentials.py)."""

    __tablename__ = "credential_pickups"

    token_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    mailbox_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    picked_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sealed_password: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = timestamp_now()


class RuleStatus(enum.StrEnum):
    PENDING = "pending"
    DEPLOYED = "deployed"
    FAILED = "failed"


class MailRule(Base):
    """A mailbox's Sieve script (from raw Sieve or the JSON rule form) and its deployment."""

    __tablename__ = "mail_rules"
    __table_args__ = (CheckConstraint(one_of("status", RuleStatus), name="status_known"),)

    mailbox_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mailboxes.id"), primary_key=True)
    script: Mapped[str] = mapped_column(Text)
    form: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default=RuleStatus.PENDING.value)
    status_reason: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    updated_at: Mapped[datetime] = timestamp_now()
    deployed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyRecord(Base):
    """The first response to a request sent with an `Idempotency-Key`, replayed on retries."""

    __tablename__ = "idempotency_records"

    api_key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    request_hash: Mapped[str] = mapped_column(Text)
    mailbox_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("mailboxes.id"))
    created_at: Mapped[datetime] = timestamp_now()
