"""The real Dovecot + Postfix stack reads the shared schema."""

from __future__ import annotations

import smtplib
import uuid

import pytest

from shared import mailstack
from shared.imap import check, imap_session
from shared.models import MailboxStatus
from shared.settings import Settings
from tests.conftest import Seed
from tests.mail import can_log_in, send, wait_for_subject

pytestmark = pytest.mark.usefixtures("mail_stack")


async def test_active_mailbox_logs_in_over_imap_with_its_password(seed: Seed) -> None:
    mailbox = await seed.mailbox("correct horse battery")
    assert await can_log_in(mailbox.address, "correct horse battery")
    assert not await can_log_in(mailbox.address, "wrong password")


async def test_inactive_mailbox_cannot_log_in(seed: Seed) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    mailbox.status = MailboxStatus.SUSPENDED
    await seed.session.commit()
    assert not await can_log_in(mailbox.address, "pw-1234567890")


async def test_mail_sent_over_smtp_arrives_in_the_inbox(seed: Seed, settings: Settings) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    subject = f"hello {uuid.uuid4().hex}"
    send(settings, mailbox.address, subject)
    assert await wait_for_subject(mailbox.address, subject)


async def test_sessions_one_after_another_each_see_only_their_own_mailbox(
    seed: Seed, settings: Settings
) -> None:
    # Dovecot's imap processes serve one session after another (service_count > 1).
    first, second = await seed.mailbox("pw-first-123456"), await seed.mailbox("pw-second-12345")
    for mailbox in (first, second):
        send(settings, mailbox.address, f"for {mailbox.address}")
        assert await wait_for_subject(mailbox.address, f"for {mailbox.address}")
    for mailbox, password in [(first, "pw-first-123456"), (second, "pw-second-12345")] * 4:
        async with imap_session(mailbox.address, password) as client:
            check(await client.select("INBOX"), "SELECT")
            fetched = check(await client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"), "")
            subjects = [bytes(line).strip() for line in fetched.lines if b"Subject:" in line]
        assert subjects == [f"Subject: for {mailbox.address}".encode()]


async def test_mail_to_an_unknown_address_is_refused_at_rcpt(
    seed: Seed, settings: Settings
) -> None:
    await seed.department()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(settings, f"nobody-{uuid.uuid4().hex[:6]}@{seed.domain_name}", "lost")
    [(code, _)] = refused.value.recipients.values()
    assert code == 550


async def test_master_user_opens_any_mailbox_even_a_suspended_one(seed: Seed) -> None:
    mailbox = await seed.mailbox("pw-1234567890", status=MailboxStatus.SUSPENDED)
    async with imap_session(mailbox.address) as client:
        assert client.get_state() == "AUTH"


async def test_suspended_mailbox_still_receives_mail(seed: Seed, settings: Settings) -> None:
    mailbox = await seed.mailbox("pw-1234567890", status=MailboxStatus.SUSPENDED)
    subject = f"while away {uuid.uuid4().hex}"
    send(settings, mailbox.address, subject)
    assert await wait_for_subject(mailbox.address, subject)


def test_stack_status_reports_both_daemons_and_their_ports(settings: Settings) -> None:
    daemons = {d.name: d for d in mailstack.status(settings)}
    assert daemons["dovecot"].running and daemons["postfix"].running
    assert daemons["dovecot"].ports["imap"] == (settings.imap_port, True)
    assert daemons["postfix"].ports["smtp"] == (settings.smtp_port, True)
