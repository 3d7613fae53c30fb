"""The shared schema's tables, one module per area; Dovecot and Postfix read only views."""

from shared.models.core import (
    Alias,
    ApiKey,
    AuditEvent,
    Department,
    Domain,
    Mailbox,
    MailboxStatus,
    Role,
)

__all__ = [
    "Alias",
    "ApiKey",
    "AuditEvent",
    "Department",
    "Domain",
    "Mailbox",
    "MailboxStatus",
    "Role",
]
