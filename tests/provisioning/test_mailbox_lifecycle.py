"""Mailboxes made through the API work on the real Dovecot and Postfix."""

from __future__ import annotations

import smtplib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq import Retry
from sqlalchemy import func, select, update

from services.backup import tasks as backup_tasks
from services.provisioning import tasks
from shared import queue
from shared.db import get_engine
from shared.models import Mailbox
from shared.models.backup import backup_lock_key
from tests.conftest import run_worker
from tests.mail import can_log_in, send, wait_for_subject
from tests.provisioning.conftest import Api, address_in

pytestmark = pytest.mark.usefixtures("mail_stack")


async def _create(api: Api, department: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {
        "address": address_in(department),
        "display_name": "Ada",
        "department_id": department["id"],
        **fields,
    }
    response = await api.post("/v1/mailboxes", body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _ready(api: Api, department: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A mailbox created, prepared by the worker, and its password picked up."""
    mailbox = await _create(api, department)
    await run_worker()
    picked = await api.client.post(
        "/v1/credentials/pickup", json={"pickup_token": mailbox["credential"]["pickup_token"]}
    )
    assert picked.status_code == 200, picked.text
    return mailbox, picked.json()["password"]


async def test_created_mailbox_logs_in_with_its_picked_up_password_and_receives_mail(
    admin: Api, department: Any, settings: Any
) -> None:
    mailbox = await _create(admin, await department())
    assert mailbox["status"] == "provisioning"
    await run_worker()
    assert (await admin.get(f"/v1/mailboxes/{mailbox['id']}")).json()["status"] == "active"
    token = mailbox["credential"]["pickup_token"]
    picked = await admin.client.post("/v1/credentials/pickup", json={"pickup_token": token})
    assert picked.status_code == 200
    assert picked.headers["cache-control"] == "no-store"
    assert picked.json()["address"] == mailbox["address"]
    assert await can_log_in(mailbox["address"], picked.json()["password"])
    subject = f"welcome {uuid.uuid4().hex}"
    send(settings, mailbox["address"], subject)
    assert await wait_for_subject(mailbox["address"], subject)


async def test_a_mailbox_dovecot_cannot_prepare_says_why_and_ends_failed_after_its_last_try(
    admin: Api, department: Any, settings: Any, unused_tcp_port: int, monkeypatch: Any
) -> None:
    mailbox = await _create(admin, await department())
    monkeypatch.setattr(settings, "imap_port", unused_tcp_port)  # nothing listens there
    with pytest.raises(Retry):
        await tasks.prepare_mailbox({"job_try": 1}, mailbox["id"])
    waiting = (await admin.get(f"/v1/mailboxes/{mailbox['id']}")).json()
    assert waiting["status"] == "provisioning"
    assert waiting["status_reason"].startswith("mail server not ready (try 1): IMAP server")
    assert await tasks.prepare_mailbox({"job_try": tasks.MAX_TRIES}, mailbox["id"]) == "failed"
    failed = (await admin.get(f"/v1/mailboxes/{mailbox['id']}")).json()
    assert failed["status"] == "failed"
    assert f"after {tasks.MAX_TRIES} tries" in failed["status_reason"]


async def test_a_mailbox_suspended_while_dovecot_prepares_it_stays_suspended(
    admin: Api, department: Any
) -> None:
    mailbox = await _create(admin, await department())
    assert (await admin.post(f"/v1/mailboxes/{mailbox['id']}/suspend")).status_code == 200
    assert await tasks.prepare_mailbox({"job_try": 1}, mailbox["id"]) == "nothing to do"
    assert (await admin.get(f"/v1/mailboxes/{mailbox['id']}")).json()["status"] == "suspended"


async def test_the_password_is_handed_out_once_then_410(admin: Api, department: Any) -> None:
    mailbox = await _create(admin, await department())
    token = mailbox["credential"]["pickup_token"]
    assert (
        await admin.client.post("/v1/credentials/pickup", json={"pickup_token": token})
    ).status_code == 200
    again = await admin.client.post("/v1/credentials/pickup", json={"pickup_token": token})
    assert again.status_code == 410
    assert again.headers["content-type"] == "application/problem+json"


async def _sealed_password(db_session: Any, mailbox: dict[str, Any]) -> bytes | None:
    from shared.models.provisioning import CredentialPickup

    db_session.expire_all()
    return await db_session.scalar(
        select(CredentialPickup.sealed_password).where(
            CredentialPickup.mailbox_id == uuid.UUID(mailbox["id"])
        )
    )


async def test_a_picked_up_password_is_kept_nowhere_but_as_its_hash(
    admin: Api, department: Any, db_session: Any
) -> None:

    mailbox = await _create(admin, await department())
    token = mailbox["credential"]["pickup_token"]
    sealed = await _sealed_password(db_session, mailbox)
    picked = await admin.client.post("/v1/credentials/pickup", json={"pickup_token": token})
    password = picked.json()["password"].encode()
    assert sealed and password not in sealed
    assert await _sealed_password(db_session, mailbox) is None


async def test_an_expired_pickup_is_410_and_the_sweep_erases_its_password(
    admin: Api, department: Any, db_session: Any
) -> None:
    from shared.models.provisioning import CredentialPickup

    mailbox = await _create(admin, await department())
    await db_session.execute(
        update(CredentialPickup)
        .where(CredentialPickup.mailbox_id == uuid.UUID(mailbox["id"]))
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    await db_session.commit()
    response = await admin.client.post(
        "/v1/credentials/pickup", json={"pickup_token": mailbox["credential"]["pickup_token"]}
    )
    assert response.status_code == 410
    assert response.json()["code"] == "credential_expired"
    assert (await tasks.sweep({}))["expired_pickups"] >= 1  # its sealed password erased
    assert await _sealed_password(db_session, mailbox) is None


async def test_password_reset_gives_a_new_password_and_the_old_one_stops_working(
    admin: Api, department: Any
) -> None:
    mailbox, old_password = await _ready(admin, await department())
    reset = await admin.post(f"/v1/mailboxes/{mailbox['id']}/reset-password")
    assert reset.status_code == 200
    new = await admin.client.post(
        "/v1/credentials/pickup", json={"pickup_token": reset.json()["credential"]["pickup_token"]}
    )
    assert not await can_log_in(mailbox["address"], old_password)
    assert await can_log_in(mailbox["address"], new.json()["password"])


async def test_suspended_mailbox_cannot_log_in_but_keeps_receiving_and_reactivates(
    admin: Api, department: Any, settings: Any
) -> None:
    mailbox, password = await _ready(admin, await department())
    suspended = await admin.post(f"/v1/mailboxes/{mailbox['id']}/suspend")
    assert suspended.json()["status"] == "suspended"
    assert not await can_log_in(mailbox["address"], password)
    subject = f"while suspended {uuid.uuid4().hex}"
    send(settings, mailbox["address"], subject)
    assert await wait_for_subject(mailbox["address"], subject)
    assert (await admin.post(f"/v1/mailboxes/{mailbox['id']}/reactivate")).status_code == 200
    assert await can_log_in(mailbox["address"], password)


async def test_an_alias_delivers_to_every_target(
    admin: Api, department: Any, settings: Any
) -> None:
    dept = await department()
    first, second = await _create(admin, dept), await _create(admin, dept)
    await run_worker()
    alias = address_in(dept, "team")
    response = await admin.post(
        "/v1/aliases", {"address": alias, "targets": [first["address"], second["address"]]}
    )
    assert response.status_code == 201, response.text
    subject = f"to the team {uuid.uuid4().hex}"
    send(settings, alias, subject)
    assert await wait_for_subject(first["address"], subject)
    assert await wait_for_subject(second["address"], subject)


async def test_forwarding_with_keep_copy_delivers_to_both(
    admin: Api, department: Any, settings: Any
) -> None:
    dept = await department()
    source, target = await _create(admin, dept), await _create(admin, dept)
    await run_worker()
    response = await admin.put(
        f"/v1/mailboxes/{source['id']}/forwarding",
        {"targets": [target["address"]], "keep_copy": True},
    )
    assert response.status_code == 200, response.text
    subject = f"forwarded {uuid.uuid4().hex}"
    send(settings, source["address"], subject)
    assert await wait_for_subject(target["address"], subject)
    assert await wait_for_subject(source["address"], subject)


async def test_a_sieve_rule_from_the_api_files_matching_mail_into_its_folder(
    admin: Api, department: Any, settings: Any
) -> None:
    mailbox = await _create(admin, await department())
    response = await admin.put(
        f"/v1/mailboxes/{mailbox['id']}/rules",
        {
            "rules": [
                {
                    "action": "fileinto",
                    "folder": "Archive",
                    "when": {"header": "subject", "match": "contains", "value": "invoice"},
                }
            ]
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"
    await run_worker()
    rules = await admin.get(f"/v1/mailboxes/{mailbox['id']}/rules")
    assert rules.json()["status"] == "deployed", rules.text
    subject = f"invoice {uuid.uuid4().hex}"
    send(settings, mailbox["address"], subject)
    assert await wait_for_subject(mailbox["address"], subject, folder="Archive")


async def test_a_sieve_script_that_does_not_compile_is_422_with_its_line(
    admin: Api, department: Any
) -> None:
    mailbox = await _create(admin, await department())
    response = await admin.put(
        f"/v1/mailboxes/{mailbox['id']}/rules",
        {"script": 'require "fileinto";\n\nif bogus { keep; }\n'},
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "sieve_invalid"
    assert problem["line"] == 3
    assert problem["errors"][0]["field"] == "script"


async def test_delete_queues_a_final_backup_and_holds_the_address_until_purged(
    admin: Api, department: Any, db_session: Any
) -> None:
    dept = await department()
    mailbox = await _create(admin, dept)
    await run_worker()
    deleted = await admin.delete(f"/v1/mailboxes/{mailbox['id']}")
    assert deleted.status_code == 202
    assert deleted.json()["status"] == "deleting"
    pool = await queue.get_pool()
    assert await pool.zscore(queue.queue_name("backup"), f"final-backup:{mailbox['id']}")
    again = await admin.post(
        "/v1/mailboxes", {"address": mailbox["address"], "department_id": dept["id"]}
    )
    assert again.status_code == 409
    assert again.json()["errors"][0]["field"] == "address"
    await _past_retention(db_session, mailbox["id"])
    assert await backup_tasks.final_backup({}, mailbox["id"]) == "succeeded"
    assert await tasks.purge_mailbox({"job_try": 1}, mailbox["id"]) == "purged"
    assert (await admin.get(f"/v1/mailboxes/{mailbox['id']}")).status_code == 404
    reused = await admin.post(
        "/v1/mailboxes", {"address": mailbox["address"], "department_id": dept["id"]}
    )
    assert reused.status_code == 201


async def _past_retention(db_session: Any, mailbox_id: str) -> None:
    await db_session.execute(
        update(Mailbox)
        .where(Mailbox.id == uuid.UUID(mailbox_id))
        .values(purge_after=datetime.now(UTC) - timedelta(seconds=1))
    )
    await db_session.commit()


async def _deleted(admin: Api, department: Any) -> dict[str, Any]:
    """A mailbox made, prepared by the worker, and deleted."""
    mailbox = await _create(admin, await department())
    await run_worker()
    await admin.delete(f"/v1/mailboxes/{mailbox['id']}")
    return mailbox


async def test_a_mailbox_is_purged_only_after_its_final_backup_succeeded(
    admin: Api, department: Any, db_session: Any
) -> None:
    mailbox = await _deleted(admin, department)
    pool = await queue.get_pool()
    final_job = queue.final_backup_job_id(uuid.UUID(mailbox["id"]))
    await pool.zrem(queue.queue_name("backup"), final_job)  # as if Redis had lost it
    await pool.delete(f"arq:job:{final_job}")
    await _past_retention(db_session, mailbox["id"])

    assert (
        await tasks.purge_mailbox({"job_try": 1}, mailbox["id"]) == "waiting for the final backup"
    )
    waiting = (await admin.get(f"/v1/mailboxes/{mailbox['id']}")).json()
    assert waiting["status"] == "deleting"
    assert "final backup" in waiting["status_reason"]
    assert await pool.zscore(queue.queue_name("backup"), final_job), "asked for again"

    assert await backup_tasks.final_backup({}, mailbox["id"]) == "succeeded"
    assert await tasks.purge_mailbox({"job_try": 1}, mailbox["id"]) == "purged"


async def test_no_purge_while_a_backup_of_the_mailbox_runs(
    admin: Api, department: Any, db_session: Any
) -> None:
    mailbox = await _deleted(admin, department)
    assert await backup_tasks.final_backup({}, mailbox["id"]) == "succeeded"
    await _past_retention(db_session, mailbox["id"])
    key = backup_lock_key(uuid.UUID(mailbox["id"]))
    async with get_engine().connect() as backup:
        await backup.execute(select(func.pg_advisory_lock(func.hashtext(key))))
        assert await tasks.purge_mailbox({}, mailbox["id"]) == "not due: a backup of it is running"
        await backup.execute(select(func.pg_advisory_unlock(func.hashtext(key))))
    assert await tasks.purge_mailbox({}, mailbox["id"]) == "purged"


async def test_mail_to_a_deleted_mailbox_is_refused(
    admin: Api, department: Any, settings: Any
) -> None:
    mailbox = await _create(admin, await department())
    await admin.delete(f"/v1/mailboxes/{mailbox['id']}")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(settings, mailbox["address"], "too late")


async def test_every_change_writes_an_audit_event_without_secrets(
    admin: Api, department: Any, db_session: Any
) -> None:
    mailbox = await _create(admin, await department())
    await admin.post(f"/v1/mailboxes/{mailbox['id']}/suspend")
    events = (await admin.get("/v1/audit-events", params={"target": mailbox["id"]})).json()
    assert [e["action"] for e in events] == ["mailbox.suspend", "mailbox.create"]
    assert events[1]["actor_name"] == "test-admin"
    row = await db_session.scalar(select(Mailbox).where(Mailbox.id == uuid.UUID(mailbox["id"])))
    text = str(events)
    assert mailbox["credential"]["pickup_token"] not in text
    assert row.password_hash not in text
