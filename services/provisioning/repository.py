"""Provisioning queries: the only place this service talks SQL."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import Select, Text, and_, cast, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from shared.models import Alias, ApiKey, AuditEvent, Department, Domain, Mailbox, MailboxStatus
from shared.models.backup import BackupRun, BackupScope, JobStatus, backup_lock_key
from shared.models.provisioning import CredentialPickup, MailRule, ProvisioningRequest

# Mailboxes that hold an allocation and an address: everything until purged.
_LIVE = Mailbox.status != MailboxStatus.PURGED.value


async def domains(session: AsyncSession) -> list[Domain]:
    return list((await session.scalars(select(Domain).order_by(Domain.name))).all())


async def api_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.scalars(select(ApiKey).order_by(ApiKey.created_at))).all())


async def domain_by_name(session: AsyncSession, name: str) -> Domain | None:
    return await session.scalar(select(Domain).where(Domain.name == name))


async def domain_names(session: AsyncSession) -> set[str]:
    return set((await session.scalars(select(Domain.name))).all())


async def domain_names_by_id(
    session: AsyncSession, domain_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, str]:
    rows = await session.execute(select(Domain.id, Domain.name).where(Domain.id.in_(domain_ids)))
    return {domain_id: name for domain_id, name in rows}


async def domain_in_use(session: AsyncSession, domain_id: uuid.UUID) -> bool:
    for model in (Department, Mailbox, Alias):
        if await session.scalar(
            select(func.count()).select_from(model).where(model.domain_id == domain_id)
        ):
            return True
    return False


async def department(
    session: AsyncSession, department_id: uuid.UUID, *, lock: bool = False
) -> Department | None:
    query = select(Department).where(Department.id == department_id)
    # FOR UPDATE serialises every change to one department's allocation.
    return await session.scalar(query.with_for_update() if lock else query)


async def department_by_name(session: AsyncSession, name: str) -> Department | None:
    return await session.scalar(select(Department).where(Department.name == name))


async def usage(
    session: AsyncSession, department_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, int]]:
    """Allocated bytes and mailbox count per department."""
    rows = await session.execute(
        select(Mailbox.department_id, func.coalesce(func.sum(Mailbox.quota_bytes), 0), func.count())
        .where(Mailbox.department_id.in_(department_ids), _LIVE)
        .group_by(Mailbox.department_id)
    )
    found = {row[0]: (int(row[1]), int(row[2])) for row in rows}
    return {d: found.get(d, (0, 0)) for d in department_ids}


async def departments(session: AsyncSession, only: set[uuid.UUID] | None) -> list[Department]:
    query = select(Department).order_by(Department.name)
    if only is not None:
        query = query.where(Department.id.in_(only))
    return list((await session.scalars(query)).all())


async def mailbox(
    session: AsyncSession, mailbox_id: uuid.UUID, *, lock: bool = False
) -> Mailbox | None:
    query = select(Mailbox).where(Mailbox.id == mailbox_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def settle_provisioning(
    session: AsyncSession, mailbox_id: uuid.UUID, status: MailboxStatus, reason: str | None
) -> bool:
    """Set the status and reason of a mailbox still `provisioning`; False if it no longer is."""
    settled = await session.scalar(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id, Mailbox.status == MailboxStatus.PROVISIONING.value)
        .values(status=status.value, status_reason=reason)
        .returning(Mailbox.id)
    )
    return settled is not None


async def address_taken(session: AsyncSession, address: str) -> bool:
    mailbox_hit = select(Mailbox.id).where(Mailbox.address == address, _LIVE)
    alias_hit = select(Alias.id).where(Alias.address == address)
    return bool(await session.scalar(select(mailbox_hit.exists() | alias_hit.exists())))


def mailbox_page_query(
    *,
    departments: set[uuid.UUID] | None,
    department_id: uuid.UUID | None,
    status: str | None,
    text: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Select[Mailbox]:
    query = select(Mailbox).order_by(Mailbox.created_at, Mailbox.id).limit(limit)
    conditions: list[ColumnElement[bool]] = []
    if departments is not None:
        conditions.append(Mailbox.department_id.in_(departments))
    if department_id is not None:
        conditions.append(Mailbox.department_id == department_id)
    if status is not None:
        conditions.append(Mailbox.status == status)
    else:
        conditions.append(_LIVE)
    if text:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        conditions.append(or_(Mailbox.address.ilike(pattern), Mailbox.display_name.ilike(pattern)))
    if after is not None:
        conditions.append(tuple_(Mailbox.created_at, Mailbox.id) > tuple_(*after))
    return query.where(and_(*conditions)) if conditions else query


async def mailboxes(session: AsyncSession, query: Select[Mailbox]) -> list[Mailbox]:
    return list((await session.scalars(query)).all())


async def mailboxes_due_for_purge(session: AsyncSession, now: datetime) -> list[uuid.UUID]:
    return list(
        (
            await session.scalars(
                select(Mailbox.id).where(
                    Mailbox.status == MailboxStatus.DELETING.value, Mailbox.purge_after <= now
                )
            )
        ).all()
    )


async def final_backup_succeeded(session: AsyncSession, mailbox_id: uuid.UUID) -> bool:
    """Whether the backup service's final backup of the (deleted) mailbox has succeeded."""
    found = await session.scalar(
        select(BackupRun.id)
        .where(
            BackupRun.mailbox_id == mailbox_id,
            BackupRun.scope == BackupScope.FINAL.value,
            BackupRun.status == JobStatus.SUCCEEDED.value,
        )
        .limit(1)
    )
    return found is not None


async def lock_out_backups(session: AsyncSession, mailbox_id: uuid.UUID) -> bool:
    """Take the mailbox's backup lock until this transaction ends; False (and nothing
    taken) while a backup of it runs."""
    key = func.hashtext(backup_lock_key(mailbox_id))
    return bool(await session.scalar(select(func.pg_try_advisory_xact_lock(key))))


async def mailboxes_stuck_provisioning(session: AsyncSession, before: datetime) -> list[uuid.UUID]:
    return list(
        (
            await session.scalars(
                select(Mailbox.id).where(
                    Mailbox.status == MailboxStatus.PROVISIONING.value, Mailbox.updated_at < before
                )
            )
        ).all()
    )


async def pickup(session: AsyncSession, token_hash: str) -> CredentialPickup | None:
    return await session.scalar(
        select(CredentialPickup).where(CredentialPickup.token_hash == token_hash).with_for_update()
    )


async def erase_expired_pickups(session: AsyncSession, now: datetime) -> int:
    """Erase the sealed password of each pickup that expired unused; how many."""
    erased = await session.execute(
        update(CredentialPickup)
        .where(CredentialPickup.expires_at <= now, CredentialPickup.sealed_password.is_not(None))
        .values(sealed_password=None)
    )
    return int(getattr(erased, "rowcount", 0) or 0)


async def forget_pickups(session: AsyncSession, mailbox_id: uuid.UUID) -> None:
    for row in (
        await session.scalars(
            select(CredentialPickup).where(CredentialPickup.mailbox_id == mailbox_id)
        )
    ).all():
        await session.delete(row)


async def alias(session: AsyncSession, alias_id: uuid.UUID) -> Alias | None:
    return await session.scalar(select(Alias).where(Alias.id == alias_id))


async def aliases(session: AsyncSession) -> list[Alias]:
    return list((await session.scalars(select(Alias).order_by(Alias.address))).all())


async def rule(
    session: AsyncSession, mailbox_id: uuid.UUID, *, lock: bool = False
) -> MailRule | None:
    query = select(MailRule).where(MailRule.mailbox_id == mailbox_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def request(
    session: AsyncSession, request_id: uuid.UUID, *, lock: bool = False
) -> ProvisioningRequest | None:
    query = select(ProvisioningRequest).where(ProvisioningRequest.id == request_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def requests(
    session: AsyncSession, *, departments: set[uuid.UUID] | None, status: str | None, limit: int
) -> list[ProvisioningRequest]:
    query = select(ProvisioningRequest).order_by(ProvisioningRequest.created_at.desc()).limit(limit)
    if departments is not None:
        query = query.where(ProvisioningRequest.department_id.in_(departments))
    if status is not None:
        query = query.where(ProvisioningRequest.status == status)
    return list((await session.scalars(query)).all())


async def audit_events(
    session: AsyncSession,
    *,
    target: str | None,
    actor: str | None,
    since: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if target:
        query = query.where(AuditEvent.target_id == target)
    if actor:
        query = query.where(
            or_(AuditEvent.actor_name == actor, cast(AuditEvent.actor_id, Text) == actor)
        )
    if since:
        query = query.where(AuditEvent.occurred_at >= since)
    if before_id:
        query = query.where(AuditEvent.id < before_id)
    return list((await session.scalars(query)).all())
