"""Audit events, written in the same transaction as the change they describe."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Principal
from shared.logging import scrub
from shared.models import AuditEvent


def record(
    session: AsyncSession,
    *,
    actor: Principal | None,
    action: str,
    target_type: str,
    target_id: object,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add an audit event to the session's transaction; secret-looking fields are redacted."""
    session.add(
        AuditEvent(
            actor_id=actor.id if actor else None,
            actor_name=actor.name if actor else "system",
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            before=scrub(before) if before is not None else None,
            after=scrub(after) if after is not None else None,
        )
    )
