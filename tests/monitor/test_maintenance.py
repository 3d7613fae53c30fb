"""Maintenance jobs: dry run by default, per-department settings, audited, and stored."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from services.monitor import mailqueue, maintenance
from services.monitor.maintenance import MaintenanceJob
from shared import mailstack
from shared.db import unit_of_work
from shared.errors import Unavailable
from shared.imap import check, imap_session
from shared.models import AuditEvent
from shared.models.monitor import MaintenanceRun
from shared.settings import Settings
from tests.conftest import Seed
from tests.mail import message, send
from tests.monitor.conftest import Api

pytestmark = pytest.mark.usefixtures("mail_stack")


async def put(address: str, settings: Settings, folder: str, age: timedelta, *, seen: bool) -> None:
    """APPEND a message with an arrival date `age` ago (as the master user)."""
    async with imap_session(address, settings=settings) as client:
        check(
            await client.append(
                message(address, f"aged {age}"),
                mailbox=folder,
                flags="(\\Seen)" if seen else None,
                date=datetime.now(UTC) - age,
            ),
            "APPEND",
        )


async def count(address: str, settings: Settings, folder: str) -> int:
    async with imap_session(address, settings=settings) as client:
        selected = check(await client.select(folder), "SELECT")
    exists = [line for line in selected.lines if line.endswith(b"EXISTS")]
    return int(exists[0].split()[0])


async def test_old_trash_is_counted_in_a_dry_run_and_expunged_only_where_the_department_enabled_it(
    settings: Settings, seed, operator: Api
) -> None:
    keeping, cleaning = await seed.department(), await seed.department()
    kept = await seed.mailbox("pw-1234567890", department=keeping)
    cleaned = await seed.mailbox("pw-1234567890", department=cleaning)
    for mailbox in (kept, cleaned):
        await put(mailbox.address, settings, "Trash", timedelta(days=40), seen=True)
        await put(mailbox.address, settings, "Trash", timedelta(days=1), seen=True)
    settings_url = f"/v1/departments/{cleaning.id}/maintenance-settings"
    assert (await operator.get(settings_url)).json()["expunge_enabled"] is False
    enabled = await operator.client.put(
        settings_url,
        json={"trash_retention_days": 30, "expunge_enabled": True},
        headers=operator._headers(),
    )
    assert enabled.status_code == 200, enabled.text

    dry = await operator.post("/v1/maintenance/expunge-trash-junk")
    assert dry.status_code == 201, dry.text
    assert dry.json()["dry_run"] is True
    found = {m["address"]: m for m in dry.json()["summary"]["mailboxes"]}
    assert found[kept.address]["messages"] == 1 and found[cleaned.address]["messages"] == 1
    assert await count(cleaned.address, settings, "Trash") == 2

    real = await operator.post("/v1/maintenance/expunge-trash-junk", {"dry_run": False})
    actions = {m["address"]: m["action"] for m in real.json()["summary"]["mailboxes"]}
    assert actions[cleaned.address] == "expunged"
    assert actions[kept.address] == "would expunge"
    assert await count(cleaned.address, settings, "Trash") == 1
    assert await count(kept.address, settings, "Trash") == 2

    async with unit_of_work() as session:
        audited = list(
            await session.scalars(
                select(AuditEvent.action).where(
                    AuditEvent.action.like("monitor.maintenance%"),
                    AuditEvent.occurred_at > datetime.now(UTC) - timedelta(minutes=5),
                )
            )
        )
    assert "monitor.maintenance.expunge-trash-junk" in audited
    assert "monitor.maintenance_settings.set" in audited


async def test_unread_mail_older_than_the_followup_age_is_reported_with_count_and_oldest(
    settings: Settings, seed, operator: Api
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await put(mailbox.address, settings, "INBOX", timedelta(days=20), seen=False)
    await put(mailbox.address, settings, "INBOX", timedelta(days=30), seen=False)
    await put(mailbox.address, settings, "INBOX", timedelta(days=40), seen=True)
    response = await operator.post("/v1/maintenance/unread-followup")
    assert response.status_code == 201, response.text
    (entry,) = [
        m for m in response.json()["summary"]["mailboxes"] if m["address"] == mailbox.address
    ]
    assert entry["unread_older"] == 2
    assert entry["oldest"].startswith((datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%d"))


async def test_deferred_cleanup_reports_without_removing_by_default(operator: Api) -> None:
    response = await operator.post("/v1/maintenance/deferred-cleanup", {"older_than_days": 3})
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["dry_run"] is True and run["summary"]["action"] == "would remove"
    runs = (await operator.get("/v1/maintenance/runs")).json()
    assert run["id"] in [r["id"] for r in runs]


async def test_deferred_cleanup_removes_mail_stuck_in_the_real_postfix_queue(
    spare_stack: Settings, seed: Seed
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    mailstack.stop_dovecot(spare_stack)  # Postfix cannot hand the mail to LMTP: deferred
    try:
        send(spare_stack, mailbox.address, "stuck")
        deadline = time.monotonic() + 20
        while not (stuck := await _deferred(spare_stack)):
            assert time.monotonic() < deadline, "the message never reached the deferred queue"
            await asyncio.sleep(0.2)
        (queued,) = stuck
        assert queued.recipients == (mailbox.address,)
        dry, dry_summary = await maintenance.deferred_cleanup(
            settings=spare_stack, older_than_days=0, dry_run=True
        )
        assert (dry, dry_summary["action"]) == (1, "would remove")
        assert await _deferred(spare_stack) == stuck
        removed, summary = await maintenance.deferred_cleanup(
            settings=spare_stack, older_than_days=0, dry_run=False
        )
        assert (removed, summary["action"]) == (1, "removed")
        assert summary["messages"][0]["queue_id"] == queued.queue_id
        assert await _deferred(spare_stack) == []
    finally:
        mailstack.start_dovecot(spare_stack, mailstack.StackPaths(spare_stack.resolved_state_dir))


async def _deferred(settings: Settings) -> list[mailqueue.QueuedMessage]:
    return [m for m in await mailqueue.read_queue(settings) if m.queue_name == "deferred"]


async def test_unknown_maintenance_job_and_bad_settings_are_422_naming_the_field(
    operator: Api, seed
) -> None:
    assert (await operator.post("/v1/maintenance/defrag")).json()["errors"][0]["field"] == "job"
    department = await seed.department()
    response = await operator.client.put(
        f"/v1/departments/{department.id}/maintenance-settings",
        json={"trash_retention_days": 0},
        headers=operator._headers(),
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "trash_retention_days"


@pytest.mark.parametrize("job", list(MaintenanceJob))
async def test_a_job_that_cannot_reach_the_mail_server_is_unavailable_and_records_nothing(
    settings: Settings, job: MaintenanceJob, seed: Seed, tmp_path
) -> None:
    await seed.mailbox("pw-1234567890")  # something for the job to look at
    nowhere = settings.model_copy(update={"state_dir": tmp_path})  # no stack configured here
    async with unit_of_work() as session:
        with pytest.raises(Unavailable) as raised:
            await maintenance.run(session, settings=nowhere, job=job, dry_run=True, actor=None)
        assert await session.scalar(select(MaintenanceRun)) is None
    assert raised.value.status == 503 and raised.value.code == "mail_server_unavailable"
    assert str(raised.value).startswith(f"{job.value} could not reach the mail server: ")
