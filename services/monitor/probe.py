"""The monitor's own probe mailbox, which the imap and delivery checks log in to.

It is `monitor_probe_address` if set, else `probe@<the oldest domain>`, in a department of
its own (`mailops-monitor`) so reports and backup freshness can leave it out. Its password
is random and never kept: the checks log in as the master user, as backups do.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from services.monitor import repository
from shared.db import unit_of_work
from shared.models import Department, Mailbox, MailboxStatus
from shared.passwords import generate_password, hash_password
from shared.settings import Settings

PROBE_DEPARTMENT = repository.PROBE_DEPARTMENT
PROBE_QUOTA_BYTES = 100 * 2**20


class NoProbeDomain(LookupError):
    """There is no domain yet to host the probe mailbox."""


async def ensure_probe_mailbox(settings: Settings) -> str:
    """The probe mailbox's address, creating it (active) if it is missing."""
    for _ in range(2):
        try:
            return await _ensure(settings)
        except IntegrityError:
            continue  # another process created it at the same moment; read theirs
    return await _ensure(settings)


async def _ensure(settings: Settings) -> str:
    async with unit_of_work() as session:
        configured = settings.monitor_probe_address.strip().lower()
        domain = await repository.probe_domain(session, configured.partition("@")[2] or None)
        if domain is None:
            raise NoProbeDomain(
                "no domain to host the probe mailbox; create a domain "
                "(or set MAILOPS_MONITOR_PROBE_ADDRESS to an address in one)"
            )
        address = configured or f"probe@{domain.name}"
        mailbox = await repository.live_mailbox(session, address)
        if mailbox is not None:
            if mailbox.status != MailboxStatus.ACTIVE:
                mailbox.status = MailboxStatus.ACTIVE.value
                mailbox.status_reason = "reactivated by the monitor's probe"
            return address
        department = await repository.department_named(session, PROBE_DEPARTMENT)
        if department is None:
            department = Department(
                name=PROBE_DEPARTMENT,
                domain_id=domain.id,
                capacity_bytes=PROBE_QUOTA_BYTES,
                max_mailboxes=1,
                default_quota_bytes=PROBE_QUOTA_BYTES,
            )
            session.add(department)
            await session.flush()
        session.add(
            Mailbox(
                address=address,
                domain_id=domain.id,
                department_id=department.id,
                display_name="mailops monitor probe",
                password_hash=hash_password(generate_password()),
                quota_bytes=PROBE_QUOTA_BYTES,
                status=MailboxStatus.ACTIVE.value,
            )
        )
        await session.flush()
        return address
