"""Request and response bodies of the provisioning API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, Field, StrictBool, StrictInt, model_validator

from services.provisioning.rules import Rule
from shared.models import Role
from shared.models.provisioning import RequestKind
from shared.schemas import FromRow, Strict, field_error


def normalise_address(value: str) -> str:
    """A valid RFC 5321/6531 address, lower-cased; internationalised addresses accepted."""
    try:
        # Internal domains need not be globally deliverable; `.test` is allowed for
        # staging stacks, the other special-use names (.local, .invalid) are refused.
        result = validate_email(
            value,
            check_deliverability=False,
            allow_smtputf8=True,
            globally_deliverable=False,
            test_environment=True,
        )
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return result.normalized.lower()


def normalise_domain(value: str) -> str:
    return normalise_address(f"postmaster@{value}").split("@", 1)[1]


Address = Annotated[
    str,
    Field(max_length=254, json_schema_extra={"format": "email"}),
    AfterValidator(normalise_address),
]
DomainName = Annotated[
    str,
    Field(min_length=1, max_length=253, json_schema_extra={"format": "hostname"}),
    AfterValidator(normalise_domain),
]
Bytes = Annotated[StrictInt, Field(gt=0, le=2**62, description="A size in bytes, > 0")]
Targets = Annotated[list[Address], Field(min_length=1, max_length=50)]


class DomainCreate(Strict):
    name: DomainName


class DomainOut(FromRow):
    id: uuid.UUID
    name: str
    created_at: datetime


class DepartmentCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    domain: DomainName
    capacity_bytes: Bytes
    max_mailboxes: StrictInt = Field(gt=0, le=1_000_000)
    default_quota_bytes: Bytes
    confidential: StrictBool = False
    external_forwarding: StrictBool = False

    @model_validator(mode="after")
    def _default_fits(self) -> DepartmentCreate:
        if self.default_quota_bytes > self.capacity_bytes:
            raise field_error(
                "default_quota_bytes", "default_quota_bytes is larger than capacity_bytes"
            )
        return self


class DepartmentUpdate(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    capacity_bytes: Bytes | None = None
    max_mailboxes: StrictInt | None = Field(default=None, gt=0, le=1_000_000)
    default_quota_bytes: Bytes | None = None
    confidential: StrictBool | None = None
    external_forwarding: StrictBool | None = None


class Usage(BaseModel):
    allocated_bytes: int
    mailboxes: int


class DepartmentOut(BaseModel):
    id: uuid.UUID
    name: str
    domain: str
    capacity_bytes: int
    max_mailboxes: int
    default_quota_bytes: int
    confidential: bool
    external_forwarding: bool
    usage: Usage
    created_at: datetime


class MailboxCreate(Strict):
    address: Address
    display_name: str = Field(default="", max_length=200)
    department_id: uuid.UUID
    quota_bytes: Bytes | None = None


class MailboxUpdate(Strict):
    display_name: str | None = Field(default=None, max_length=200)
    quota_bytes: Bytes | None = None
    department_id: uuid.UUID | None = None


class CredentialOut(BaseModel):
    pickup_token: str
    expires_at: datetime


class MailboxOut(BaseModel):
    id: uuid.UUID
    address: str
    display_name: str
    status: str
    status_reason: str | None
    quota_bytes: int
    department_id: uuid.UUID
    forwarding: Forwarding
    created_at: datetime
    purge_after: datetime | None = None
    credential: CredentialOut | None = None


class MailboxPage(BaseModel):
    items: list[MailboxOut]
    next_cursor: str | None


class Forwarding(Strict):
    targets: Annotated[list[Address], Field(max_length=50)]
    keep_copy: StrictBool = True


class CredentialPickupIn(Strict):
    pickup_token: str = Field(min_length=1, max_length=100)


class PickedUpCredential(BaseModel):
    address: str
    password: str


class AliasCreate(Strict):
    address: Address
    targets: Targets
    department_id: uuid.UUID | None = Field(
        default=None, description="The department whose forwarding policy applies"
    )


class AliasOut(FromRow):
    id: uuid.UUID
    address: str
    targets: list[str]
    department_id: uuid.UUID | None
    created_at: datetime


class RulesIn(Strict):
    """Either a raw Sieve `script` or the JSON rule form `rules` (compiled to Sieve)."""

    script: str | None = Field(default=None, max_length=64_000)
    rules: list[Rule] | None = Field(default=None, max_length=100)

    @model_validator(mode="after")
    def _exactly_one(self) -> RulesIn:
        if (self.script is None) == (self.rules is None):
            raise field_error("script", "give either script (Sieve) or rules (the JSON rule form)")
        return self


class RulesOut(BaseModel):
    mailbox_id: uuid.UUID
    script: str
    rules: list[dict[str, Any]] | None
    status: str
    status_reason: str | None
    version: int
    updated_at: datetime
    deployed_at: datetime | None


class RequestCreate(Strict):
    kind: RequestKind
    payload: dict[str, Any]
    reason: str = Field(default="", max_length=2000)


class Decision(Strict):
    reason: str = Field(default="", max_length=2000)


class RequestOut(FromRow):
    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    reason: str
    department_id: uuid.UUID
    status: str
    requested_by: uuid.UUID
    decided_by: uuid.UUID | None
    decision_reason: str | None
    result: dict[str, Any] | None
    failure_reason: str | None
    created_at: datetime
    decided_at: datetime | None
    completed_at: datetime | None


class AuditEventOut(FromRow):
    id: int
    occurred_at: datetime
    actor_id: uuid.UUID | None
    actor_name: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class ApiKeyCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Role
    department_ids: list[uuid.UUID] = Field(default_factory=list)


class ApiKeyOut(FromRow):
    id: uuid.UUID
    name: str
    role: str
    department_ids: list[uuid.UUID]
    key_prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The API key; shown only in this response")
