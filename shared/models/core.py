"""The shared schema's core tables: domains, departments, mailboxes, aliases, API keys, audit.

Dovecot and Postfix never read these tables directly: they read the `dovecot_*` and
`postfix_*` views created by the migrations, so these tables may change freely.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base


def uuid_primary_key() -> Mapped[uuid.UUID]:
    """A UUID primary key the database fills in."""
    return mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )


def timestamp_now() -> Mapped[datetime]:
    """A timestamp column that defaults to the time of the insert."""
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class MailboxStatus(enum.StrEnum):
    """Where a mailbox is in its life; Dovecot and Postfix views key off these values."""

    PROVISIONING = "provisioning"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    FAILED = "failed"
    DELETING = "deleting"
    PURGED = "purged"


class Role(enum.StrEnum):
    """What an API key may do; enforced per endpoint by each service."""

    ADMIN = "admin"
    OPERATOR = "operator"
    MANAGER = "manager"
    SUPPORT = "support"
    ONBOARDING = "onboarding"
    VIEWER = "viewer"


def one_of(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Domain(Base):
    __tablename__ = "domains"

    id: Mapped[uuid.UUID] = uuid_primary_key()
    name: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = timestamp_now()


class Department(Base):
    """A unit of the company and the mail resources allocated to it."""

    __tablename__ = "departments"
    __table_args__ = (
        CheckConstraint("capacity_bytes > 0", name="capacity_positive"),
        CheckConstraint("max_mailboxes > 0", name="max_mailboxes_positive"),
        CheckConstraint("default_quota_bytes > 0", name="default_quota_positive"),
    )

    id: Mapped[uuid.UUID] = uuid_primary_key()
    name: Mapped[str] = mapped_column(Text, unique=True)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id"), index=True)
    capacity_bytes: Mapped[int] = mapped_column(BigInteger)
    max_mailboxes: Mapped[int]
    default_quota_bytes: Mapped[int] = mapped_column(BigInteger)
    confidential: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    external_forwarding: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = timestamp_now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Mailbox(Base):
    """One user's mailbox; `password_hash` is Dovecot-ready (`{SSHA512}...`)."""

    __tablename__ = "mailboxes"
    __table_args__ = (
        CheckConstraint("quota_bytes > 0", name="quota_positive"),
        CheckConstraint(one_of("status", MailboxStatus), name="status_known"),
        # An address is taken until its mailbox is purged, then free for reuse.
        Index(
            "uq_mailboxes_address_live",
            "address",
            unique=True,
            postgresql_where=text("status <> 'purged'"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_primary_key()
    address: Mapped[str] = mapped_column(Text)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id"), index=True)
    department_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("departments.id"), index=True)
    display_name: Mapped[str] = mapped_column(Text, server_default="")
    password_hash: Mapped[str] = mapped_column(Text)
    quota_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(
        Text, server_default=MailboxStatus.PROVISIONING.value, index=True
    )
    status_reason: Mapped[str | None] = mapped_column(Text)
    forward_targets: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    forward_keep_copy: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # Bumped by each password reset: it keys the credential derivation (one live password).
    credential_generation: Mapped[int] = mapped_column(server_default=text("1"))
    created_at: Mapped[datetime] = timestamp_now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    purge_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Alias(Base):
    """An address that delivers to other addresses (inside or, where allowed, outside)."""

    __tablename__ = "aliases"

    id: Mapped[uuid.UUID] = uuid_primary_key()
    address: Mapped[str] = mapped_column(Text, unique=True)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id"), index=True)
    department_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("departments.id"), index=True
    )
    targets: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = timestamp_now()


class ApiKey(Base):
    """A caller of the APIs; only the SHA-256 of the key is kept."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(one_of("role", Role), name="role_known"),)

    id: Mapped[uuid.UUID] = uuid_primary_key()
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    # manager: exactly one department; onboarding: the departments it may create in
    # (empty means all); other roles: ignored.
    department_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(UUID(as_uuid=True)), server_default=text("'{}'")
    )
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    key_prefix: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = timestamp_now()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """Who changed what, written in the same transaction as the change; never secrets."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_target", "target_type", "target_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    actor_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), index=True)
    actor_name: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    target_type: Mapped[str] = mapped_column(Text)
    target_id: Mapped[str] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
