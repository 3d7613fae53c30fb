"""API keys: `Authorization: Bearer <key>`, stored only as a SHA-256 hash, each with a role."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import transaction
from shared.errors import Forbidden, Unauthorized
from shared.models import ApiKey, Role

KEY_PREFIX = "mo_"


def hash_api_key(key: str) -> str:
    # Keys are 256-bit random strings: a fast hash suffices, no brute force can reach them.
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewApiKey:
    key: str
    row: ApiKey


def new_api_key(*, name: str, role: Role, department_ids: Iterable[uuid.UUID] = ()) -> NewApiKey:
    """A fresh key and its row to insert; the plaintext key is shown once and never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        role=role.value,
        department_ids=list(department_ids),
        key_hash=hash_api_key(key),
        key_prefix=key[:10],
    )
    return NewApiKey(key=key, row=row)


# The roles an API key's department_ids limit; the others act in every department, so a
# scope on one of their keys is refused rather than ignored.
SCOPED_ROLES = frozenset({Role.MANAGER, Role.ONBOARDING})


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's identity, role and department scope."""

    id: uuid.UUID
    name: str
    role: Role
    department_ids: frozenset[uuid.UUID] = field(default_factory=frozenset)

    @classmethod
    def of(cls, row: ApiKey) -> Principal:
        """The principal an API key row stands for."""
        return cls(
            id=row.id,
            name=row.name,
            role=Role(row.role),
            department_ids=frozenset(row.department_ids),
        )

    def can_act_in(self, department_id: uuid.UUID) -> bool:
        """True when this principal's scope covers the department."""
        if self.role not in SCOPED_ROLES:
            return True
        if self.role is Role.ONBOARDING and not self.department_ids:
            return True
        return department_id in self.department_ids


# scope="function": commit before the response is sent, so a client that got its 201 can
# read what it made (FastAPI would otherwise finish the dependency after sending).
SessionDep = Annotated[AsyncSession, Depends(transaction, scope="function")]


# Declares the scheme in each service's OpenAPI document (a generated client, and the docs'
# Authorize button, then send the key); the 401 is ours, as problem+json.
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    bearerFormat="mo_…",
    description="An API key (`mailops apikey create`, or POST /v1/api-keys as an admin)",
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


async def current_principal(session: SessionDep, bearer: Bearer) -> Principal:
    """The principal behind the request's bearer key; 401 if there is none or it is unknown."""
    key = bearer.credentials.strip() if bearer is not None else ""
    if not key:
        raise Unauthorized("Send an API key as `Authorization: Bearer <key>`.")
    row = await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
    )
    if row is None:
        raise Unauthorized("The API key is unknown or revoked.")
    now = datetime.now(UTC)
    # Record use at most once a minute: a write per request would serialise busy callers.
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return Principal.of(row)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting the given roles (and always `admin`); 403 for the rest."""
    allowed = {Role.ADMIN, *roles}

    async def check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise Forbidden(
                f"Role {principal.role.value!r} may not do this; it needs one of: {names}."
            )
        return principal

    return check
