"""Provisioning rules: allocations, mailbox lifecycle, credentials, forwarding, requests.

Functions take the session and the acting principal; they never commit (the caller's
unit of work does) and enqueue jobs only for after the commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, StrictInt, ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.provisioning import credentials, repository
from services.provisioning import schemas as s
from services.provisioning.rules import compile_rules, first_error, redirect_targets
from shared import audit
from shared.auth import SCOPED_ROLES, Principal, new_api_key
from shared.errors import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    Unavailable,
    Unprocessable,
)
from shared.managesieve import ManageSieve, SieveError, SieveUnavailable
from shared.models import Alias, ApiKey, Department, Domain, Mailbox, MailboxStatus, Role
from shared.models.provisioning import (
    CredentialPickup,
    IdempotencyRecord,
    MailRule,
    ProvisioningRequest,
    RequestKind,
    RequestStatus,
    RuleStatus,
)
from shared.passwords import hash_password
from shared.queue import enqueue_after_commit, final_backup_job_id
from shared.schemas import Strict
from shared.settings import get_settings

# ---------------------------------------------------------------- domains


async def create_domain(session: AsyncSession, *, actor: Principal, data: s.DomainCreate) -> Domain:
    if await repository.domain_by_name(session, data.name):
        raise Conflict(f"domain {data.name} exists already", field="name", code="domain_exists")
    domain = Domain(name=data.name)
    session.add(domain)
    await session.flush()
    audit.record(
        session,
        actor=actor,
        action="domain.create",
        target_type="domain",
        target_id=domain.id,
        after={"name": domain.name},
    )
    return domain


async def get_domain(session: AsyncSession, *, domain_id: uuid.UUID) -> Domain:
    domain = await session.get(Domain, domain_id)
    if domain is None:
        raise NotFound(f"no domain {domain_id}")
    return domain


async def delete_domain(session: AsyncSession, *, actor: Principal, domain_id: uuid.UUID) -> None:
    domain = await get_domain(session, domain_id=domain_id)
    if await repository.domain_in_use(session, domain.id):
        raise Conflict(
            f"domain {domain.name} still has departments, mailboxes or aliases",
            code="domain_in_use",
        )
    await session.delete(domain)
    audit.record(
        session,
        actor=actor,
        action="domain.delete",
        target_type="domain",
        target_id=domain.id,
        before={"name": domain.name},
    )


# ---------------------------------------------------------------- departments


def visible_departments(principal: Principal) -> set[uuid.UUID] | None:
    """None: every department; else the set this principal may see."""
    if principal.role in (Role.MANAGER, Role.ONBOARDING) and principal.department_ids:
        return set(principal.department_ids)
    if principal.role is Role.MANAGER:
        return set()
    return None


def require_visible(principal: Principal, department_id: uuid.UUID) -> None:
    """403 unless the principal may read the department's data."""
    visible = visible_departments(principal)
    if visible is not None and department_id not in visible:
        raise Forbidden(
            "this API key is not scoped to that department", code="department_out_of_scope"
        )


def require_scope(principal: Principal, department_id: uuid.UUID) -> None:
    if not principal.can_act_in(department_id):
        raise Forbidden(
            "this API key is not scoped to that department", code="department_out_of_scope"
        )


async def _named_department(
    session: AsyncSession, department_id: uuid.UUID, *, field: str, lock: bool = False
) -> Department:
    """The department an input names; 422 on `field` if there is none."""
    department = await repository.department(session, department_id, lock=lock)
    if department is None:
        raise Unprocessable(
            f"no department {department_id}", field=field, code="unknown_department"
        )
    return department


async def _company_domain(session: AsyncSession, address: str) -> Domain:
    """The company domain an address belongs to; 422 on `address` if it is not one."""
    domain = await repository.domain_by_name(session, address.split("@", 1)[1])
    if domain is None:
        raise Unprocessable(
            f"the domain of {address} is not one of the company's domains",
            field="address",
            code="unknown_domain",
        )
    return domain


async def departments_out(
    session: AsyncSession, departments: Sequence[Department]
) -> list[s.DepartmentOut]:
    """Departments with their domain and usage: two queries however many there are."""
    if not departments:
        return []
    usage = await repository.usage(session, [d.id for d in departments])
    domains = await repository.domain_names_by_id(session, {d.domain_id for d in departments})
    return [
        s.DepartmentOut(
            id=department.id,
            name=department.name,
            domain=domains[department.domain_id],
            capacity_bytes=department.capacity_bytes,
            max_mailboxes=department.max_mailboxes,
            default_quota_bytes=department.default_quota_bytes,
            confidential=department.confidential,
            external_forwarding=department.external_forwarding,
            usage=s.Usage(
                allocated_bytes=usage[department.id][0], mailboxes=usage[department.id][1]
            ),
            created_at=department.created_at,
        )
        for department in departments
    ]


async def department_out(session: AsyncSession, department: Department) -> s.DepartmentOut:
    return (await departments_out(session, [department]))[0]


async def create_department(
    session: AsyncSession, *, actor: Principal, data: s.DepartmentCreate
) -> Department:
    domain = await repository.domain_by_name(session, data.domain)
    if domain is None:
        raise Unprocessable(
            f"unknown domain {data.domain}; create it first", field="domain", code="unknown_domain"
        )
    if await repository.department_by_name(session, data.name):
        raise Conflict(
            f"a department named {data.name!r} exists", field="name", code="department_exists"
        )
    department = Department(domain_id=domain.id, **data.model_dump(exclude={"domain"}))
    session.add(department)
    await session.flush()
    await session.refresh(department)
    audit.record(
        session,
        actor=actor,
        action="department.create",
        target_type="department",
        target_id=department.id,
        after=data.model_dump(),
    )
    return department


async def get_department(
    session: AsyncSession, *, principal: Principal, department_id: uuid.UUID, lock: bool = False
) -> Department:
    department = await repository.department(session, department_id, lock=lock)
    if department is None:
        raise NotFound(f"no department {department_id}")
    require_visible(principal, department.id)
    return department


async def list_departments(session: AsyncSession, *, principal: Principal) -> list[Department]:
    return await repository.departments(session, visible_departments(principal))


async def update_department(
    session: AsyncSession, *, actor: Principal, department_id: uuid.UUID, data: s.DepartmentUpdate
) -> Department:
    department = await get_department(
        session, principal=actor, department_id=department_id, lock=True
    )
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    allocated, count = (await repository.usage(session, [department.id]))[department.id]
    capacity = changes.get("capacity_bytes", department.capacity_bytes)
    if capacity < allocated:
        raise Unprocessable(
            f"capacity_bytes {capacity} is below the {allocated} bytes already "
            "allocated to mailboxes",
            field="capacity_bytes",
            code="capacity_below_allocation",
        )
    if changes.get("max_mailboxes", department.max_mailboxes) < count:
        raise Unprocessable(
            f"max_mailboxes is below the {count} mailboxes the department has",
            field="max_mailboxes",
            code="capacity_below_allocation",
        )
    if changes.get("default_quota_bytes", department.default_quota_bytes) > capacity:
        raise Unprocessable(
            "default_quota_bytes is larger than capacity_bytes", field="default_quota_bytes"
        )
    if (
        "name" in changes
        and changes["name"] != department.name
        and await repository.department_by_name(session, changes["name"])
    ):
        raise Conflict(
            f"a department named {changes['name']!r} exists", field="name", code="department_exists"
        )
    before = {k: getattr(department, k) for k in changes}
    for key, value in changes.items():
        setattr(department, key, value)
    await session.flush()
    audit.record(
        session,
        actor=actor,
        action="department.update",
        target_type="department",
        target_id=department.id,
        before=before,
        after=changes,
    )
    return department


# ---------------------------------------------------------------- mailboxes


def _room_check(
    department: Department, allocated: int, count: int, quota: int, adding_mailbox: bool
) -> None:
    if adding_mailbox and count + 1 > department.max_mailboxes:
        raise Conflict(
            f"department {department.name} has all {department.max_mailboxes} of its "
            "mailboxes allocated",
            field="department_id",
            code="department_full",
        )
    if allocated + quota > department.capacity_bytes:
        left = department.capacity_bytes - allocated
        raise Unprocessable(
            f"quota_bytes {quota} is over the department's room: {left} bytes "
            "left of its allocation",
            field="quota_bytes",
            code="quota_exceeds_allocation",
        )


# The credential generation a mailbox is created with; each password reset makes the next.
FIRST_GENERATION = 1


async def first_credential(session: AsyncSession, mailbox: Mailbox) -> s.CredentialOut | None:
    """The credential the mailbox was created with, while it waits to be picked up: what
    its creator may be shown again. A password reset since made another, for whoever reset
    it: it is not the creator's to see."""
    if mailbox.credential_generation != FIRST_GENERATION:
        return None
    token = credentials.pickup_token(mailbox.id, FIRST_GENERATION)
    pickup = await session.get(CredentialPickup, credentials.token_hash(token))
    if pickup is None or pickup.picked_up_at is not None:
        return None
    return s.CredentialOut(pickup_token=token, expires_at=pickup.expires_at)


def mailbox_out(mailbox: Mailbox, credential: s.CredentialOut | None = None) -> s.MailboxOut:
    return s.MailboxOut(
        id=mailbox.id,
        address=mailbox.address,
        display_name=mailbox.display_name,
        status=mailbox.status,
        status_reason=mailbox.status_reason,
        quota_bytes=mailbox.quota_bytes,
        department_id=mailbox.department_id,
        forwarding=s.Forwarding(
            targets=mailbox.forward_targets, keep_copy=mailbox.forward_keep_copy
        ),
        created_at=mailbox.created_at,
        purge_after=mailbox.purge_after,
        credential=credential,
    )


def _issue_credential(session: AsyncSession, mailbox: Mailbox) -> s.CredentialOut:
    """A new password for the mailbox's generation: its hash, and a pickup holding it sealed."""
    token = credentials.pickup_token(mailbox.id, mailbox.credential_generation)
    password = credentials.new_password()
    mailbox.password_hash = hash_password(password)
    expires_at = datetime.now(UTC) + timedelta(seconds=get_settings().credential_ttl_seconds)
    session.add(
        CredentialPickup(
            token_hash=credentials.token_hash(token),
            mailbox_id=mailbox.id,
            generation=mailbox.credential_generation,
            expires_at=expires_at,
            sealed_password=credentials.seal_password(token, password),
        )
    )
    return s.CredentialOut(pickup_token=token, expires_at=expires_at)


def _request_fingerprint(data: BaseModel) -> str:
    canonical = json.dumps(data.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _replay(
    session: AsyncSession, *, actor: Principal, key: str, data: s.MailboxCreate
) -> s.MailboxOut | None:
    """Claim the idempotency key, or return the first response given under it."""
    fingerprint = _request_fingerprint(data)
    claimed = await session.scalar(
        insert(IdempotencyRecord)
        .values(api_key_id=actor.id, key=key, request_hash=fingerprint)
        .on_conflict_do_nothing()
        .returning(IdempotencyRecord.key)
    )
    if claimed is not None:
        return None
    record = await session.get(IdempotencyRecord, (actor.id, key))
    assert record is not None
    if record.request_hash != fingerprint:
        raise Unprocessable(
            "this Idempotency-Key was used with a different request body",
            field="Idempotency-Key",
            code="idempotency_key_reused",
        )
    if record.mailbox_id is None:
        raise Conflict(
            "the first request with this Idempotency-Key failed; use a new key",
            field="Idempotency-Key",
            code="idempotency_key_failed",
        )
    mailbox = await repository.mailbox(session, record.mailbox_id)
    assert mailbox is not None
    return mailbox_out(mailbox, await first_credential(session, mailbox))


async def create_mailbox(
    session: AsyncSession,
    *,
    actor: Principal,
    data: s.MailboxCreate,
    idempotency_key: str | None = None,
) -> s.MailboxOut:
    """Create a mailbox in its department's allocation and queue its preparation."""
    require_scope(actor, data.department_id)
    if idempotency_key is not None:
        replayed = await _replay(session, actor=actor, key=idempotency_key, data=data)
        if replayed is not None:
            return replayed
    department = await _named_department(
        session, data.department_id, field="department_id", lock=True
    )
    domain = await _company_domain(session, data.address)
    if await repository.address_taken(session, data.address):
        raise Conflict(
            f"{data.address} is taken (a mailbox, an alias, or a deleted mailbox not yet purged)",
            field="address",
            code="address_taken",
        )
    quota = data.quota_bytes or department.default_quota_bytes
    allocated, count = (await repository.usage(session, [department.id]))[department.id]
    _room_check(department, allocated, count, quota, adding_mailbox=True)
    mailbox = Mailbox(
        id=uuid.uuid4(),
        address=data.address,
        display_name=data.display_name,
        domain_id=domain.id,
        department_id=department.id,
        quota_bytes=quota,
        status=MailboxStatus.PROVISIONING.value,
        credential_generation=1,
        forward_targets=[],
        forward_keep_copy=True,
    )
    credential = _issue_credential(session, mailbox)
    session.add(mailbox)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"{data.address} is taken", field="address", code="address_taken") from exc
    await session.refresh(mailbox)
    if idempotency_key is not None:
        record = await session.get(IdempotencyRecord, (actor.id, idempotency_key))
        assert record is not None
        record.mailbox_id = mailbox.id
    audit.record(
        session,
        actor=actor,
        action="mailbox.create",
        target_type="mailbox",
        target_id=mailbox.id,
        after={
            "address": mailbox.address,
            "quota_bytes": quota,
            "department_id": str(department.id),
        },
    )
    enqueue_after_commit(
        session,
        "provisioning",
        "prepare_mailbox",
        job_id=f"prepare-mailbox:{mailbox.id}",
        mailbox_id=str(mailbox.id),
    )
    return mailbox_out(mailbox, credential)


async def get_mailbox(
    session: AsyncSession, *, principal: Principal, mailbox_id: uuid.UUID, lock: bool = False
) -> Mailbox:
    mailbox = await repository.mailbox(session, mailbox_id, lock=lock)
    if mailbox is None or mailbox.status == MailboxStatus.PURGED:
        raise NotFound(f"no mailbox {mailbox_id}")
    require_visible(principal, mailbox.department_id)
    return mailbox


def _encode_cursor(mailbox: Mailbox) -> str:
    raw = f"{mailbox.created_at.isoformat()}|{mailbox.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, mailbox_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(mailbox_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unprocessable("cursor is not one this API gave out", field="cursor") from exc


async def list_mailboxes(
    session: AsyncSession,
    *,
    principal: Principal,
    department_id: uuid.UUID | None,
    status: str | None,
    text: str | None,
    limit: int,
    cursor: str | None,
) -> s.MailboxPage:
    query = repository.mailbox_page_query(
        departments=visible_departments(principal),
        department_id=department_id,
        status=status,
        text=text,
        after=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    rows = await repository.mailboxes(session, query)
    page, more = rows[:limit], len(rows) > limit
    return s.MailboxPage(
        items=[mailbox_out(m) for m in page], next_cursor=_encode_cursor(page[-1]) if more else None
    )


async def update_mailbox(
    session: AsyncSession, *, actor: Principal, mailbox_id: uuid.UUID, data: s.MailboxUpdate
) -> Mailbox:
    mailbox = await get_mailbox(session, principal=actor, mailbox_id=mailbox_id, lock=True)
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    before = {k: str(getattr(mailbox, k)) for k in changes}
    target_id = changes.get("department_id", mailbox.department_id)
    quota = changes.get("quota_bytes", mailbox.quota_bytes)
    if "quota_bytes" in changes or target_id != mailbox.department_id:
        # Lock departments in id order so two moves in opposite directions cannot deadlock.
        locked = {
            d: await _named_department(session, d, field="department_id", lock=True)
            for d in sorted({mailbox.department_id, target_id})
        }
        target = locked[target_id]
        allocated, count = (await repository.usage(session, [target.id]))[target.id]
        moving = target.id != mailbox.department_id
        if not moving:
            allocated -= mailbox.quota_bytes
        _room_check(target, allocated, count, quota, adding_mailbox=moving)
    for key, value in changes.items():
        setattr(mailbox, key, value)
    await session.flush()
    audit.record(
        session,
        actor=actor,
        action="mailbox.update",
        target_type="mailbox",
        target_id=mailbox.id,
        before=before,
        after={k: str(v) for k, v in changes.items()},
    )
    return mailbox


_TRANSITIONS = {
    "suspend": ({MailboxStatus.ACTIVE, MailboxStatus.PROVISIONING}, MailboxStatus.SUSPENDED),
    "reactivate": ({MailboxStatus.SUSPENDED}, MailboxStatus.ACTIVE),
}


async def change_status(
    session: AsyncSession,
    *,
    actor: Principal,
    mailbox_id: uuid.UUID,
    action: str,
    reason: str | None = None,
) -> Mailbox:
    """Suspend (no logins; mail still accepted) or reactivate a mailbox."""
    mailbox = await get_mailbox(session, principal=actor, mailbox_id=mailbox_id, lock=True)
    allowed_from, to = _TRANSITIONS[action]
    if mailbox.status == to:
        return mailbox
    if mailbox.status not in allowed_from:
        raise Conflict(f"a {mailbox.status} mailbox cannot be {action}ed", code="invalid_state")
    before = mailbox.status
    mailbox.status, mailbox.status_reason = to.value, reason
    await session.flush()
    audit.record(
        session,
        actor=actor,
        action=f"mailbox.{action}",
        target_type="mailbox",
        target_id=mailbox.id,
        before={"status": before},
        after={"status": to.value},
    )
    return mailbox


async def reset_password(
    session: AsyncSession, *, actor: Principal, mailbox_id: uuid.UUID
) -> s.MailboxOut:
    mailbox = await get_mailbox(session, principal=actor, mailbox_id=mailbox_id, lock=True)
    if mailbox.status in (MailboxStatus.DELETING, MailboxStatus.FAILED):
        raise Conflict(f"a {mailbox.status} mailbox gets no new password", code="invalid_state")
    await repository.forget_pickups(session, mailbox.id)
    mailbox.credential_generation += 1
    credential = _issue_credential(session, mailbox)
    await session.flush()
    audit.record(
        session,
        actor=actor,
        action="mailbox.reset_password",
        target_type="mailbox",
        target_id=mailbox.id,
        after={"credential_generation": mailbox.credential_generation},
    )
    return mailbox_out(mailbox, credential)


async def delete_mailbox(
    session: AsyncSession, *, actor: Principal, mailbox_id: uuid.UUID
) -> Mailbox:
    """Mark for deletion: final backup now, purge after the retention period."""
    mailbox = await get_mailbox(session, principal=actor, mailbox_id=mailbox_id, lock=True)
    if mailbox.status == MailboxStatus.DELETING:
        return mailbox
    retention = get_settings().deleted_mailbox_retention_seconds
    before = mailbox.status
    mailbox.status = MailboxStatus.DELETING.value
    mailbox.purge_after = datetime.now(UTC) + timedelta(seconds=retention)
    await repository.forget_pickups(session, mailbox.id)
    await session.flush()
    audit.record(
        session,
        actor=actor,
        action="mailbox.delete",
        target_type="mailbox",
        target_id=mailbox.id,
        before={"status": before},
        after={"status": mailbox.status, "purge_after": mailbox.purge_after.isoformat()},
    )
    enqueue_after_commit(
        session,
        "backup",
        "final_backup",
        job_id=final_backup_job_id(mailbox.id),
        mailbox_id=str(mailbox.id),
    )
    # No job deferred by weeks: the worker's sweep purges mailboxes once purge_after passes.
    return mailbox


async def pick_up_credential(session: AsyncSession, *, token: str) -> s.PickedUpCredential:
    """Hand out a generated password once; 410 after that, after expiry or a newer reset."""
    pickup = await repository.pickup(session, credentials.token_hash(token))
    if pickup is None:
        raise Gone(
            "this credential link is not valid (already used, superseded or unknown)",
            code="credential_gone",
        )
    mailbox = await repository.mailbox(session, pickup.mailbox_id)
    if pickup.picked_up_at is not None:
        raise Gone("this credential was already picked up", code="credential_gone")
    if pickup.expires_at <= datetime.now(UTC):
        raise Gone(
            "this credential link has expired; ask for a password reset", code="credential_expired"
        )
    if mailbox is None or mailbox.credential_generation != pickup.generation:
        raise Gone("this credential was superseded by a password reset", code="credential_gone")
    if pickup.sealed_password is None:  # issued before passwords were sealed (revision 0009)
        raise Gone(
            "this credential link predates an upgrade; ask for a password reset",
            code="credential_expired",
        )
    password = credentials.open_password(token, pickup.sealed_password)
    pickup.picked_up_at = datetime.now(UTC)
    pickup.sealed_password = None
    audit.record(
        session,
        actor=None,
        action="credential.pick_up",
        target_type="mailbox",
        target_id=mailbox.id,
    )
    return s.PickedUpCredential(address=mailbox.address, password=password)


# ---------------------------------------------------------------- forwarding and aliases


async def _check_targets(
    session: AsyncSession, *, targets: list[str], field: str, department: Department | None
) -> None:
    """Refuse outside targets unless the department may forward outside the company."""
    company = await repository.domain_names(session)
    may_leave = (
        department is not None and department.external_forwarding and not department.confidential
    )
    for index, target in enumerate(targets):
        if target.split("@", 1)[1] in company or may_leave:
            continue
        why = (
            "no department allows it"
            if department is None
            else f"department {department.name} is confidential"
            if department.confidential
            else f"department {department.name} does not allow external forwarding"
        )
        raise Unprocessable(
            f"{target} is outside the company's domains and {why}: "
            "confidential mail must not leave the company",
            field=f"{field}[{index}]",
            code="external_forwarding_forbidden",
        )


async def set_forwarding(
    session: AsyncSession, *, actor: Principal, mailbox_id: uuid.UUID, data: s.Forwarding
) -> Mailbox:
    mailbox = await get_mailbox(session, principal=actor, mailbox_id=mailbox_id, lock=True)
    if mailbox.address in data.targets:
        raise Unprocessable(
            "a mailbox cannot forward to itself; use keep_copy",
            field="targets",
            code="forwarding_loop",
        )
    department = await repository.department(session, mailbox.department_id)
    await _check_targets(session, targets=data.targets, field="targets", department=department)
    before = {"targets": mailbox.forward_targets, "keep_copy": mailbox.forward_keep_copy}
    mailbox.forward_targets, mailbox.forward_keep_copy = list(data.targets), data.keep_copy
    await session.flush()
    audit.record(
        session,
        actor=actor,
        action="mailbox.forwarding",
        target_type="mailbox",
        target_id=mailbox.id,
        before=before,
        after=data.model_dump(),
    )
    return mailbox


async def create_alias(session: AsyncSession, *, actor: Principal, data: s.AliasCreate) -> Alias:
    domain = await _company_domain(session, data.address)
    department = None
    if data.department_id is not None:
        department = await _named_department(session, data.department_id, field="department_id")
    if await repository.address_taken(session, data.address):
        raise Conflict(f"{data.address} is taken", field="address", code="address_taken")
    await _check_targets(session, targets=data.targets, field="targets", department=department)
    alias = Alias(
        address=data.address,
        domain_id=domain.id,
        department_id=data.department_id,
        targets=list(data.targets),
    )
    session.add(alias)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"{data.address} is taken", field="address", code="address_taken") from exc
    await session.refresh(alias)
    audit.record(
        session,
        actor=actor,
        action="alias.create",
        target_type="alias",
        target_id=alias.id,
        after=data.model_dump(mode="json"),
    )
    return alias


async def delete_alias(session: AsyncSession, *, actor: Principal, alias_id: uuid.UUID) -> None:
    alias = await repository.alias(session, alias_id)
    if alias is None:
        raise NotFound(f"no alias {alias_id}")
    await session.delete(alias)
    audit.record(
        session,
        actor=actor,
        action="alias.delete",
        target_type="alias",
        target_id=alias.id,
        before={"address": alias.address, "targets": alias.targets},
    )


# ---------------------------------------------------------------- mail rules


async def put_rules(
    session: AsyncSession, *, actor: Principal, mailbox_id: uuid.UUID, data: s.RulesIn
) -> MailRule:
    """Validate a Sieve script on the real server, store it, and queue its deployment."""
    mailbox = await get_mailbox(session, principal=actor, mailbox_id=mailbox_id, lock=True)
    script = data.script if data.script is not None else compile_rules(data.rules or [])
    field = "script" if data.script is not None else "rules"
    department = await repository.department(session, mailbox.department_id)
    targets = redirect_targets(script)
    try:
        normalised = [s.normalise_address(t) for t in targets]
    except ValueError as exc:
        raise Unprocessable(
            f"a redirect target is not a valid address: {exc}", field=field
        ) from exc
    await _check_targets(
        session, targets=normalised, field=f"{field}.redirect", department=department
    )
    try:
        async with ManageSieve(mailbox.address) as sieve:
            await sieve.check(script)
    except SieveError as exc:
        line, message = first_error(exc.message)
        where = f" on line {line}" if line else ""
        raise Unprocessable(
            f"the Sieve script does not compile{where}: {message}",
            field=field,
            code="sieve_invalid",
            line=line,
        ) from exc
    except SieveUnavailable as exc:
        raise Unavailable(
            f"cannot validate the script now: {exc}", code="mail_server_unavailable"
        ) from exc
    rule = await repository.rule(session, mailbox.id, lock=True)
    form = {"rules": [r.model_dump() for r in data.rules]} if data.rules is not None else None
    if rule is None:
        rule = MailRule(mailbox_id=mailbox.id, script=script, form=form, version=1)
        session.add(rule)
    else:
        rule.script, rule.form, rule.version = script, form, rule.version + 1
        rule.updated_at = datetime.now(UTC)
    rule.status, rule.status_reason = RuleStatus.PENDING.value, None
    await session.flush()
    await session.refresh(rule)
    audit.record(
        session,
        actor=actor,
        action="mailbox.rules",
        target_type="mailbox",
        target_id=mailbox.id,
        after={"version": rule.version, "script": script},
    )
    enqueue_after_commit(
        session,
        "provisioning",
        "deploy_rules",
        job_id=f"deploy-rules:{mailbox.id}:{rule.version}",
        mailbox_id=str(mailbox.id),
        version=rule.version,
    )
    return rule


async def get_rules(
    session: AsyncSession, *, principal: Principal, mailbox_id: uuid.UUID
) -> MailRule:
    mailbox = await get_mailbox(session, principal=principal, mailbox_id=mailbox_id)
    rule = await repository.rule(session, mailbox.id)
    if rule is None:
        raise NotFound(f"mailbox {mailbox_id} has no rules")
    return rule


# ---------------------------------------------------------------- configuration requests


class _MailboxRef(Strict):
    mailbox_id: uuid.UUID


class _QuotaChange(_MailboxRef):
    quota_bytes: s.Bytes


class _AllocationChange(Strict):
    capacity_bytes: s.Bytes | None = None
    max_mailboxes: StrictInt | None = None
    default_quota_bytes: s.Bytes | None = None


_PAYLOADS: dict[RequestKind, type[BaseModel]] = {
    RequestKind.CREATE_MAILBOX: s.MailboxCreate,
    RequestKind.CHANGE_QUOTA: _QuotaChange,
    RequestKind.CHANGE_ALLOCATION: _AllocationChange,
    RequestKind.SUSPEND_MAILBOX: _MailboxRef,
    RequestKind.DELETE_MAILBOX: _MailboxRef,
}


def _parse_payload(kind: RequestKind, payload: dict[str, Any]) -> BaseModel:
    try:
        return _PAYLOADS[kind].model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise Unprocessable(
            f"payload.{where}: {error['msg']}", field=f"payload.{where}", code="invalid_payload"
        ) from exc


async def file_request(
    session: AsyncSession, *, actor: Principal, data: s.RequestCreate
) -> ProvisioningRequest:
    """File a configuration request for the department the payload concerns."""
    kind = data.kind
    payload = _parse_payload(kind, data.payload)
    if isinstance(payload, _MailboxRef):
        mailbox = await get_mailbox(session, principal=actor, mailbox_id=payload.mailbox_id)
        department_id = mailbox.department_id
    elif isinstance(payload, s.MailboxCreate):
        department_id = payload.department_id
    elif actor.role is Role.MANAGER and len(actor.department_ids) == 1:
        department_id = next(iter(actor.department_ids))
    else:
        department_id = uuid.UUID(str(data.payload.get("department_id", uuid.UUID(int=0))))
    department = await _named_department(session, department_id, field="payload.department_id")
    require_scope(actor, department.id)
    request = ProvisioningRequest(
        kind=kind.value,
        payload=payload.model_dump(mode="json", exclude_none=True),
        reason=data.reason,
        department_id=department.id,
        requested_by=actor.id,
        status=RequestStatus.PENDING.value,
    )
    session.add(request)
    await session.flush()
    await session.refresh(request)
    audit.record(
        session,
        actor=actor,
        action="request.file",
        target_type="request",
        target_id=request.id,
        after={"kind": kind.value, "payload": request.payload},
    )
    return request


async def get_request(
    session: AsyncSession, *, principal: Principal, request_id: uuid.UUID, lock: bool = False
) -> ProvisioningRequest:
    request = await repository.request(session, request_id, lock=lock)
    if request is None:
        raise NotFound(f"no request {request_id}")
    require_visible(principal, request.department_id)
    return request


async def decide_request(
    session: AsyncSession, *, actor: Principal, request_id: uuid.UUID, approve: bool, reason: str
) -> ProvisioningRequest:
    request = await get_request(session, principal=actor, request_id=request_id, lock=True)
    if request.status != RequestStatus.PENDING:
        raise Conflict(f"the request is {request.status}, not pending", code="invalid_state")
    request.status = (RequestStatus.APPROVED if approve else RequestStatus.REJECTED).value
    request.decided_by, request.decision_reason = actor.id, reason
    request.decided_at = datetime.now(UTC)
    await session.flush()
    audit.record(
        session,
        actor=actor,
        action="request.approve" if approve else "request.reject",
        target_type="request",
        target_id=request.id,
        before={"status": RequestStatus.PENDING.value},
        after={"status": request.status, "reason": reason},
    )
    if approve:
        enqueue_after_commit(
            session,
            "provisioning",
            "carry_out_request",
            job_id=f"request:{request.id}",
            request_id=str(request.id),
        )
    return request


async def carry_out(
    session: AsyncSession, *, actor: Principal, request: ProvisioningRequest
) -> dict[str, Any]:
    """Do what an approved request asks, as the approver; DomainError says why not."""
    kind = RequestKind(request.kind)
    payload = _parse_payload(kind, request.payload)
    if isinstance(payload, s.MailboxCreate):
        created = await create_mailbox(session, actor=actor, data=payload)
        return {"mailbox_id": str(created.id), "address": created.address}
    if isinstance(payload, _QuotaChange):
        mailbox = await update_mailbox(
            session,
            actor=actor,
            mailbox_id=payload.mailbox_id,
            data=s.MailboxUpdate(quota_bytes=payload.quota_bytes),
        )
        return {"mailbox_id": str(mailbox.id), "quota_bytes": mailbox.quota_bytes}
    if isinstance(payload, _AllocationChange):
        department = await update_department(
            session,
            actor=actor,
            department_id=request.department_id,
            data=s.DepartmentUpdate(**payload.model_dump(exclude_none=True)),
        )
        return {
            "department_id": str(department.id),
            "capacity_bytes": department.capacity_bytes,
            "max_mailboxes": department.max_mailboxes,
        }
    assert isinstance(payload, _MailboxRef)
    if kind is RequestKind.SUSPEND_MAILBOX:
        mailbox = await change_status(
            session,
            actor=actor,
            mailbox_id=payload.mailbox_id,
            action="suspend",
            reason=f"request {request.id}",
        )
    else:
        mailbox = await delete_mailbox(session, actor=actor, mailbox_id=payload.mailbox_id)
    return {"mailbox_id": str(mailbox.id), "status": mailbox.status}


async def request_credential(
    session: AsyncSession, request: ProvisioningRequest, viewer: Principal
) -> dict[str, Any] | None:
    """For a completed create request: the new mailbox's pickup token, for whoever filed or
    approved it, until it is picked up; not for other readers of requests, and not a
    credential a password reset made since."""
    result = request.result or {}
    if request.kind != RequestKind.CREATE_MAILBOX or "mailbox_id" not in result:
        return None
    if viewer.id not in (request.requested_by, request.decided_by):
        return None
    mailbox = await repository.mailbox(session, uuid.UUID(result["mailbox_id"]))
    credential = None if mailbox is None else await first_credential(session, mailbox)
    return None if credential is None else {"pickup_token": credential.pickup_token}


# ---------------------------------------------------------------- API keys


async def create_api_key(
    session: AsyncSession, *, actor: Principal, data: s.ApiKeyCreate
) -> tuple[ApiKey, str]:
    role = data.role
    if role is Role.MANAGER and len(data.department_ids) != 1:
        raise Unprocessable("a manager key needs exactly one department", field="department_ids")
    if data.department_ids and role not in SCOPED_ROLES:
        raise Unprocessable(
            f"a {role.value} key acts in every department; only manager and onboarding keys "
            "take department_ids",
            field="department_ids",
        )
    for department_id in data.department_ids:
        if await repository.department(session, department_id) is None:
            raise Unprocessable(f"no department {department_id}", field="department_ids")
    created = new_api_key(name=data.name, role=role, department_ids=data.department_ids)
    session.add(created.row)
    await session.flush()
    await session.refresh(created.row)
    audit.record(
        session,
        actor=actor,
        action="apikey.create",
        target_type="api_key",
        target_id=created.row.id,
        after={"name": data.name, "role": role.value},
    )
    return created.row, created.key


async def revoke_api_key(session: AsyncSession, *, actor: Principal, key_id: uuid.UUID) -> ApiKey:
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key {key_id}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        audit.record(
            session, actor=actor, action="apikey.revoke", target_type="api_key", target_id=row.id
        )
    return row
