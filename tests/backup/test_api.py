"""The backup API: roles, bad input as problem+json naming the field, and jobs end to end."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select

from services.backup import repository, service
from services.backup.engine.backup import backup_mailbox
from shared import queue
from shared.db import unit_of_work
from shared.models import AuditEvent, Department, Mailbox, MailboxStatus
from shared.models.backup import BackupRun
from shared.settings import get_settings
from tests.backup import helpers
from tests.backup.helpers import auth, problem_field
from tests.conftest import run_worker

pytestmark = pytest.mark.usefixtures("mail_stack")


def request_restore(api, key: str, mailbox_id, *, target=None, **fields):  # type: ignore[no-untyped-def]
    """POST /v1/restores as `key` for the mailbox: into its own folders unless `target`
    says otherwise; `fields` (snapshot_id, at, folders, message_ids) as JSON gives them."""
    body = {"mailbox_id": str(mailbox_id), "target": target or {"mode": "original"}, **fields}
    return api.post("/v1/restores", json=body, headers=auth(key))


async def test_backup_request_runs_and_reports_counts(api, api_key_for, seed, corpus) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(7))
    key = await api_key_for("operator")
    accepted = await api.post(
        "/v1/backups", json={"mailbox_id": str(mailbox.id)}, headers=auth(key)
    )
    assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
    assert accepted.headers["location"] == f"/v1/backups/{accepted.json()['id']}"
    await run_worker("backup")
    viewer = await api_key_for("viewer")
    run = (await api.get(accepted.headers["location"], headers=auth(viewer))).json()
    assert run["status"] == "succeeded"
    assert (run["messages_fetched"], run["mailboxes_done"]) == (7, 1)
    assert run["bytes_read"] > 0 and run["bytes_stored"] > 0 and run["duration_seconds"] >= 0

    listed = (await api.get(f"/v1/snapshots?mailbox_id={mailbox.id}", headers=auth(viewer))).json()
    assert [x["message_count"] for x in listed] == [7]
    detail = (await api.get(f"/v1/snapshots/{listed[0]['id']}", headers=auth(viewer))).json()
    folders = {f["name"]: f["messages"] for f in detail["folders"]}
    assert folders["INBOX"] == 7 and folders["Sent"] == 0
    found = await api.get(
        f"/v1/snapshots/{listed[0]['id']}/messages",
        params={"q": "Bericht 3 ", "folder": "INBOX"},
        headers=auth(key),
    )
    assert [m["subject"] for m in found.json()] == ["Bericht 3 — Übersicht"]
    assert found.json()[0]["from"].startswith("Jörg Müller")
    export = await api.get(f"/v1/snapshots/{listed[0]['id']}/export", headers=auth(key))
    assert export.status_code == 200 and export.content.count(b"\nFrom MAILER-DAEMON ") == 6


async def test_exports_beyond_those_a_process_streams_at_once_are_told_to_retry(
    api, api_key_for, seed, storage, corpus, monkeypatch
) -> None:
    monkeypatch.setattr(service, "EXPORTS_AT_ONCE", 1)
    monkeypatch.setattr(service, "_exports", asyncio.Semaphore(1))
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(2))
    snap, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    key = await api_key_for("operator")
    streaming = service.export_mbox(snap.id, None, storage, actor=helpers.OPERATOR)
    assert await anext(streaming) == b""

    busy = await api.get(f"/v1/snapshots/{snap.id}/export", headers=auth(key))
    assert busy.status_code == 503 and busy.headers["retry-after"] == "60"
    assert busy.json()["code"] == "exports_busy"
    await streaming.aclose()
    again = await api.get(f"/v1/snapshots/{snap.id}/export", headers=auth(key))
    assert again.status_code == 200 and again.content.startswith(b"From MAILER-DAEMON ")


async def test_viewer_reads_but_cannot_start_backups_or_restores(api, api_key_for, seed) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    viewer = await api_key_for("viewer")
    refused = await api.post(
        "/v1/backups", json={"mailbox_id": str(mailbox.id)}, headers=auth(viewer)
    )
    assert refused.status_code == 403
    assert (await api.get("/v1/policies", headers=auth(viewer))).status_code == 200
    assert (await api.post("/v1/verify", headers=auth(viewer))).status_code == 403
    assert (await api.get("/v1/policies")).status_code == 401


async def test_bad_backup_and_restore_input_is_a_4xx_naming_the_field(
    api, api_key_for, seed, storage, corpus
) -> None:
    key = await api_key_for("operator")
    both = await api.post(
        "/v1/backups", json={"all": True, "mailbox_id": str(uuid.uuid4())}, headers=auth(key)
    )
    assert both.status_code == 422
    unknown = await api.post(
        "/v1/backups", json={"mailbox_id": str(uuid.uuid4())}, headers=auth(key)
    )
    assert unknown.status_code == 404 and problem_field(unknown) == "mailbox_id"
    not_uuid = await api.post("/v1/backups", json={"mailbox_id": "nope"}, headers=auth(key))
    assert not_uuid.status_code == 422 and problem_field(not_uuid) == "mailbox_id"

    department = await seed.department()
    one = await seed.mailbox("pw-1234567890", department=department)
    other = await seed.mailbox("pw-1234567890", department=department)
    await helpers.append(other.address, "INBOX", corpus(1))
    others_snapshot, _ = await backup_mailbox(mailbox_id=other.id, run_id=None, storage=storage)

    def restore(**fields):
        return request_restore(api, key, one.id, **fields)

    missing = await restore(snapshot_id=str(uuid.uuid4()))
    assert missing.status_code == 404 and problem_field(missing) == "snapshot_id"
    foreign = await restore(snapshot_id=str(others_snapshot.id))
    assert foreign.status_code == 422 and problem_field(foreign) == "snapshot_id"
    none_yet = await restore(at="2000-01-01T00:00:00Z")
    assert none_yet.status_code == 422 and problem_field(none_yet) == "at"
    neither = await restore()
    assert neither.status_code == 422 and problem_field(neither) == "snapshot_id"
    both = await restore(snapshot_id=str(others_snapshot.id), at="2024-05-01T12:00:00Z")
    assert both.status_code == 422 and problem_field(both) == "at"
    naive = await restore(at="2024-05-01T12:00:00")
    assert naive.status_code == 422 and problem_field(naive) == "at"
    for target, field in (
        ({"mode": "original", "folder": "Restored"}, "target.folder"),
        (
            {"mode": "folder", "folder": "Restored", "mailbox_id": str(other.id)},
            "target.mailbox_id",
        ),
        ({"mode": "folder"}, "target.folder"),
    ):
        mixed = await restore(snapshot_id=str(others_snapshot.id), target=target)
        assert mixed.status_code == 422 and problem_field(mixed) == field, target
    scopes = await api.post("/v1/backups", json={}, headers=auth(key))
    assert scopes.status_code == 422 and problem_field(scopes) == "mailbox_id"
    two = await api.post(
        "/v1/backups", json={"all": True, "mailbox_id": str(one.id)}, headers=auth(key)
    )
    assert two.status_code == 422 and problem_field(two) == "all"
    for bad in ("a.b", "/x", "a//b", "~x", "x\x01y", "", "z" * 300):
        rejected = await request_restore(
            api,
            key,
            other.id,
            snapshot_id=str(others_snapshot.id),
            target={"mode": "folder", "folder": bad},
        )
        assert rejected.status_code == 422, bad
        assert problem_field(rejected) == "target.folder"
    await helpers.append(other.address, "Z" * 200, corpus(1, seed=98))
    long_snapshot, _ = await backup_mailbox(mailbox_id=other.id, run_id=None, storage=storage)
    too_long = await request_restore(
        api,
        key,
        other.id,
        snapshot_id=str(long_snapshot.id),
        target={"mode": "folder", "folder": "R" * 100},
    )
    assert too_long.status_code == 422 and problem_field(too_long) == "target.folder"
    assert "Z" * 200 in too_long.json()["detail"]
    inbox = await api.get(
        f"/v1/snapshots/{long_snapshot.id}/messages", params={"folder": "INBOX"}, headers=auth(key)
    )
    picked = await request_restore(
        api,
        key,
        other.id,
        snapshot_id=str(long_snapshot.id),
        message_ids=[inbox.json()[0]["id"]],
        target={"mode": "folder", "folder": "R" * 100},
    )
    assert picked.status_code == 202, "the long folder is not one the restore makes"
    wrong_folder = await request_restore(
        api, key, other.id, snapshot_id=str(others_snapshot.id), folders=["Nope"]
    )
    assert wrong_folder.status_code == 422 and problem_field(wrong_folder) == "folders"
    policy = await api.put(
        f"/v1/departments/{department.id}/backup-policy",
        json={"interval_seconds": 5, "keep_last": 3},
        headers=auth(key),
    )
    assert policy.status_code == 422 and problem_field(policy) == "interval_seconds"
    nowhere = await api.put(
        f"/v1/departments/{uuid.uuid4()}/backup-policy",
        json={"interval_seconds": 3600, "keep_last": 3},
        headers=auth(key),
    )
    assert nowhere.status_code == 404
    for jobs, parameter in (
        ("backups", "run_id"),
        ("restores", "restore_id"),
        ("verify", "verify_id"),
    ):
        unknown = await api.get(f"/v1/{jobs}/{uuid.uuid4()}", headers=auth(key))
        assert unknown.status_code == 404 and problem_field(unknown) == parameter
    no_export = await api.get(f"/v1/snapshots/{uuid.uuid4()}/export", headers=auth(key))
    assert no_export.status_code == 404 and problem_field(no_export) == "snapshot_id"
    assert no_export.headers["content-type"] == "application/problem+json"
    no_folder = await api.get(
        f"/v1/snapshots/{others_snapshot.id}/export",
        params={"folder": "Nowhere"},
        headers=auth(key),
    )
    assert no_folder.status_code == 422 and problem_field(no_folder) == "folder"


async def test_restore_message_ids_outside_the_snapshot_or_its_chosen_folders_are_a_422(
    api, api_key_for, seed, storage, corpus
) -> None:
    key = await api_key_for("operator")
    mailbox, snapshot = await helpers.backed_up(
        seed, storage, {"INBOX": corpus(2, seed=87), "Archive": corpus(1, seed=88)}
    )
    listed = await api.get(
        f"/v1/snapshots/{snapshot.id}/messages", params={"folder": "Archive"}, headers=auth(key)
    )
    archived = listed.json()[0]["id"]

    def restore(**fields):
        return request_restore(api, key, mailbox.id, snapshot_id=str(snapshot.id), **fields)

    # More ids than PostgreSQL takes parameters in one statement.
    many = await restore(message_ids=[archived, *range(10**9, 10**9 + 40_000)])
    assert many.status_code == 422 and problem_field(many) == "message_ids"
    elsewhere = await restore(folders=["INBOX"], message_ids=[archived])
    assert elsewhere.status_code == 422 and problem_field(elsewhere) == "message_ids"
    assert "INBOX" in elsewhere.json()["detail"]
    assert (await restore(folders=["Archive"], message_ids=[archived])).status_code == 202


async def test_nul_characters_unrepresentable_times_and_an_empty_span_are_a_422_naming_the_field(
    api, api_key_for, seed, storage, corpus
) -> None:
    key = await api_key_for("operator")
    mailbox, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(1, seed=105)})
    messages = f"/v1/snapshots/{snapshot.id}/messages"
    for param, value in (
        ("folder", "a\x00b"),
        ("q", "\x00"),
        ("from", "x\x00"),
        ("since", "0001-01-01T00:00:00+01:00"),
        ("until", "9999-12-31T23:59:59-01:00"),
    ):
        answer = await api.get(messages, params={param: value}, headers=auth(key))
        assert answer.status_code == 422 and problem_field(answer) == param, (param, answer.text)
    naive = await api.get(messages, params={"since": "2000-01-01T00:00:00"}, headers=auth(key))
    assert naive.status_code == 200 and len(naive.json()) == 1
    backwards = {"since": "2025-01-01T00:00:00Z", "until": "2024-01-01T00:00:00Z"}
    answer = await api.get(messages, params=backwards, headers=auth(key))
    assert answer.status_code == 422 and problem_field(answer) == "until", answer.text
    hold = await api.put(
        f"/v1/snapshots/{snapshot.id}/hold", json={"reason": "case\x001"}, headers=auth(key)
    )
    assert hold.status_code == 422 and problem_field(hold) == "reason"
    late = await request_restore(api, key, mailbox.id, at="9999-12-31T23:59:59-01:00")
    assert late.status_code == 422 and problem_field(late) == "at"


async def test_support_restores_into_a_folder_and_other_departments_need_admin(
    api, api_key_for, seed, storage, corpus
) -> None:
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    stranger = await seed.mailbox("pw-1234567890")  # another department
    await helpers.append(mailbox.address, "INBOX", corpus(4))
    snapshot, _ = await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage)
    support = await api_key_for("support")
    operator = await api_key_for("operator")
    admin = await api_key_for("admin")

    def restore(key, target):
        return request_restore(api, key, mailbox.id, snapshot_id=str(snapshot.id), target=target)

    assert (await restore(support, {"mode": "original"})).status_code == 403
    into_other = {"mode": "mailbox", "mailbox_id": str(stranger.id)}
    assert (await restore(operator, into_other)).status_code == 403
    assert (await restore(admin, into_other)).status_code == 202
    accepted = await restore(support, {"mode": "folder", "folder": "Wiederhergestellt"})
    assert accepted.status_code == 202
    await run_worker("backup")
    job = (await api.get(f"/v1/restores/{accepted.json()['id']}", headers=auth(support))).json()
    assert (job["status"], job["total"], job["restored"], job["skipped"]) == ("succeeded", 4, 4, 0)
    state = await helpers.state(mailbox.address)
    assert state["Wiederhergestellt/INBOX"] == state["INBOX"]
    assert await helpers.state(stranger.address) == {"INBOX": state["INBOX"]}


async def test_a_snapshots_mail_stays_with_the_department_it_was_backed_up_in(
    api, api_key_for, seed, storage, corpus
) -> None:
    hr, sales = await seed.department(), await seed.department()
    mover = await seed.mailbox("pw-1234567890", department=hr)
    hr_colleague = await seed.mailbox("pw-1234567890", department=hr)
    sales_colleague = await seed.mailbox("pw-1234567890", department=sales)
    await helpers.append(mover.address, "INBOX", corpus(2, seed=133))
    snapshot, _ = await backup_mailbox(mailbox_id=mover.id, run_id=None, storage=storage)
    assert snapshot.department_id == hr.id
    async with unit_of_work() as session:  # the employee moves from HR to Sales
        row = await session.get(Mailbox, mover.id)
        assert row is not None
        row.department_id = sales.id
    operator = await api_key_for("operator")

    def restore_into(target: Mailbox):  # type: ignore[no-untyped-def]
        return request_restore(
            api,
            operator,
            mover.id,
            snapshot_id=str(snapshot.id),
            target={"mode": "mailbox", "mailbox_id": str(target.id)},
        )

    refused = await restore_into(sales_colleague)
    assert refused.status_code == 403 and problem_field(refused) == "target.mailbox_id"
    assert (await restore_into(hr_colleague)).status_code == 202
    own = await request_restore(api, operator, mover.id, snapshot_id=str(snapshot.id))
    assert own.status_code == 202, "back to its own mailbox, wherever that is now"


async def test_policies_are_set_per_department_audited_and_listed_with_the_default(
    api, api_key_for, seed, db_session
) -> None:
    department = await seed.department()
    key = await api_key_for("operator")
    body = {"interval_seconds": 3600, "keep_last": 24, "keep_daily": 7, "keep_weekly": 4}
    url = f"/v1/departments/{department.id}/backup-policy"
    # Two first PUTs at once (a client's retry): one creates the policy, the other sets it.
    puts = await asyncio.gather(*(api.put(url, json=body, headers=auth(key)) for _ in "ab"))
    assert sorted(p.status_code for p in puts) == [200, 201]
    assert all(p.json()["keep_monthly"] == 0 for p in puts)
    shorter = await api.put(url, json={**body, "keep_last": 3}, headers=auth(key))
    assert shorter.status_code == 200
    events = (
        await db_session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "backup_policy.set")
            .where(AuditEvent.target_id == str(department.id))
            .order_by(AuditEvent.id)
        )
    ).all()
    assert [e.before and e.before["keep_last"] for e in events] == [None, 24, 24]
    assert events[-1].after["keep_last"] == 3
    body = {**body, "keep_last": 3}
    listed = (await api.get("/v1/policies", headers=auth(key))).json()
    assert any(p["is_default"] for p in listed)
    assert {
        **body,
        "keep_monthly": 0,
        "department_id": str(department.id),
        "is_default": False,
    } in listed


async def test_final_backup_job_from_provisioning_snapshots_a_deleting_mailbox(
    api, api_key_for, seed, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890", status=MailboxStatus.DELETING)
    await helpers.append(mailbox.address, "INBOX", corpus(3))
    await queue.enqueue(
        "backup", "final_backup", job_id=f"final-backup:{mailbox.id}", mailbox_id=str(mailbox.id)
    )
    await run_worker("backup")
    key = await api_key_for("viewer")
    listed = (await api.get(f"/v1/snapshots?mailbox_id={mailbox.id}", headers=auth(key))).json()
    assert [x["message_count"] for x in listed] == [3]


async def test_a_request_whose_job_cannot_be_queued_is_a_503_and_its_run_is_recorded(
    api, api_key_for, seed, db_session, monkeypatch
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    key = await api_key_for("operator")
    await queue.close_pool()
    monkeypatch.setattr(get_settings(), "redis_url", "redis://127.0.0.1:1")  # nothing listens
    try:
        answer = await api.post(
            "/v1/backups", json={"mailbox_id": str(mailbox.id)}, headers=auth(key)
        )
    finally:
        monkeypatch.undo()
        await queue.close_pool()
    assert answer.status_code == 503 and answer.headers["retry-after"] == "30"
    assert answer.json()["code"] == "queue_unavailable"
    runs = await db_session.scalars(select(BackupRun).where(BackupRun.mailbox_id == mailbox.id))
    [run] = runs
    assert run.status == "queued"  # the sweep ends it: its job is gone
    # Where to look it up, so that trying again is not a second backup.
    assert answer.headers["location"] == answer.json()["location"] == f"/v1/backups/{run.id}"
    assert f"look it up at /v1/backups/{run.id}" in answer.json()["detail"]


async def test_snapshots_list_a_page_at_a_time_with_a_link_to_the_next(
    api, api_key_for, seed, storage, corpus
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    await helpers.append(mailbox.address, "INBOX", corpus(1, seed=108))
    made = [
        (await backup_mailbox(mailbox_id=mailbox.id, run_id=None, storage=storage))[0].id
        for _ in range(3)
    ]
    key = await api_key_for("viewer")
    first = await api.get(
        "/v1/snapshots", params={"mailbox_id": str(mailbox.id), "limit": 2}, headers=auth(key)
    )
    assert [x["id"] for x in first.json()] == [str(made[2]), str(made[1])]
    link, rel = first.headers["link"].split("; ")
    assert rel == 'rel="next"'
    async with unit_of_work() as session:  # prune deletes the page's last one meanwhile
        assert await repository.delete_snapshots(session, [made[1]]) == 1
    rest = await api.get(link.strip("<>"), headers=auth(key))
    assert rest.status_code == 200, rest.text
    assert [x["id"] for x in rest.json()] == [str(made[0])] and "link" not in rest.headers
    unknown = await api.get(
        "/v1/snapshots", params={"before": str(uuid.uuid4())}, headers=auth(key)
    )
    assert unknown.status_code == 404 and problem_field(unknown) == "before"


async def test_unknown_mailboxes_and_folders_in_reads_are_a_4xx_naming_them(
    api, api_key_for, seed, storage, corpus
) -> None:
    key = await api_key_for("operator")
    _, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(1, seed=123)})
    unknown = await api.get(f"/v1/snapshots?mailbox_id={uuid.uuid4()}", headers=auth(key))
    assert unknown.status_code == 404 and problem_field(unknown) == "mailbox_id"
    alone = await api.get("/v1/snapshots?before_time=2024-01-01T00:00:00Z", headers=auth(key))
    assert alone.status_code == 422 and problem_field(alone) == "before_time"
    no_folder = await api.get(
        f"/v1/snapshots/{snapshot.id}/messages", params={"folder": "Nope"}, headers=auth(key)
    )
    assert no_folder.status_code == 422 and problem_field(no_folder) == "folder"


@pytest.mark.parametrize("status", [MailboxStatus.DELETING, MailboxStatus.PURGED])
async def test_a_restore_into_a_mailbox_that_cannot_receive_mail_is_a_422_in_every_mode(
    api, api_key_for, seed, storage, corpus, status
) -> None:
    key = await api_key_for("operator")
    mailbox, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(1, seed=124)})
    async with unit_of_work() as session:
        row = await session.get(Mailbox, mailbox.id)
        assert row is not None
        row.status = status.value
    for target in ({"mode": "original"}, {"mode": "folder", "folder": "Restored"}):
        refused = await request_restore(
            api, key, mailbox.id, snapshot_id=str(snapshot.id), target=target
        )
        assert refused.status_code == 422 and problem_field(refused) == "mailbox_id", target
        assert status.value in refused.json()["detail"]
    if status is MailboxStatus.DELETING:  # a leaver's mail still goes to a colleague
        department = await seed.session.get(Department, mailbox.department_id)
        colleague = await seed.mailbox("pw-1234567890", department=department)
        handed_over = await request_restore(
            api,
            key,
            mailbox.id,
            snapshot_id=str(snapshot.id),
            target={"mode": "mailbox", "mailbox_id": str(colleague.id)},
        )
        assert handed_over.status_code == 202, handed_over.text


async def test_head_on_an_export_answers_its_headers_without_reading_the_snapshot(
    api, api_key_for, seed, storage, corpus, db_session
) -> None:
    key = await api_key_for("operator")
    mailbox, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(1, seed=125)})
    with helpers.corrupted(storage, await helpers.message_blob(mailbox.id)):  # a GET would stop
        head = await api.head(f"/v1/snapshots/{snapshot.id}/export", headers=auth(key))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("application/mbox")
    assert head.headers["content-disposition"] == (
        f'attachment; filename="snapshot-{snapshot.id}.mbox"'
    )
    exports = select(AuditEvent).where(
        AuditEvent.action == "snapshot.export", AuditEvent.target_id == str(snapshot.id)
    )
    assert (await db_session.scalars(exports)).all() == [], "no mail left the platform"


async def test_numbers_and_booleans_of_another_json_type_are_a_422_not_converted(
    api, api_key_for, seed
) -> None:
    """A `keep_last` of true would keep one snapshot; an `all` of "yes" back up everything."""
    key = await api_key_for("operator")
    department = await seed.department()
    mailbox = await seed.mailbox("pw-1234567890", department=department)
    policy = f"/v1/departments/{department.id}/backup-policy"
    for body, field in (
        ({"interval_seconds": 3600, "keep_last": True}, "keep_last"),
        ({"interval_seconds": "3600", "keep_last": 3}, "interval_seconds"),
        ({"interval_seconds": 3600.0, "keep_last": 3}, "interval_seconds"),
    ):
        refused = await api.put(policy, json=body, headers=auth(key))
        assert refused.status_code == 422 and problem_field(refused) == field, body
    everything = await api.post("/v1/backups", json={"all": "yes"}, headers=auth(key))
    assert everything.status_code == 422 and problem_field(everything) == "all"
    fraction = await api.post("/v1/verify", json={"fraction": True}, headers=auth(key))
    assert fraction.status_code == 422 and problem_field(fraction) == "fraction"
    ids = await request_restore(api, key, mailbox.id, at="2030-01-01T00:00:00Z", message_ids=[True])
    assert ids.status_code == 422 and problem_field(ids) == "message_ids.0"


async def test_a_snapshots_messages_come_a_page_at_a_time_with_a_link_to_the_next(
    api, api_key_for, seed, storage, corpus
) -> None:
    key = await api_key_for("support")
    _, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(3, seed=127)})
    first = await api.get(
        f"/v1/snapshots/{snapshot.id}/messages", params={"limit": 2}, headers=auth(key)
    )
    assert len(first.json()) == 2
    following = first.links["next"]["url"]
    assert "offset=2" in following and "limit=2" in following
    last = await api.get(following, headers=auth(key))
    assert len(last.json()) == 1 and "link" not in last.headers
    ids = [m["id"] for m in first.json() + last.json()]
    assert len(set(ids)) == 3


async def test_restores_and_exports_are_in_the_audit_trail(
    api, api_key_for, seed, storage, corpus, db_session
) -> None:
    """Someone's mail, put back or leaving the platform whole: who asked, and for what."""
    key = await api_key_for("operator")
    mailbox, snapshot = await helpers.backed_up(seed, storage, {"INBOX": corpus(1, seed=133)})
    restored = await request_restore(
        api,
        key,
        mailbox.id,
        snapshot_id=str(snapshot.id),
        target={"mode": "folder", "folder": "Restored"},
    )
    assert restored.status_code == 202
    exported = await api.get(
        f"/v1/snapshots/{snapshot.id}/export", params={"folder": "INBOX"}, headers=auth(key)
    )
    assert exported.status_code == 200
    events = {
        e.action: e
        for e in await db_session.scalars(
            select(AuditEvent).where(AuditEvent.action.in_(["restore.request", "snapshot.export"]))
        )
        if e.target_id in (str(mailbox.id), str(snapshot.id))
    }
    request, export = events["restore.request"], events["snapshot.export"]
    assert request.after["restore_id"] == restored.json()["id"]
    assert (request.after["target"], request.after["target_folder"]) == ("folder", "Restored")
    assert export.after == {"mailbox_id": str(mailbox.id), "folders": ["INBOX"]}
    assert request.actor_name == export.actor_name != "system"
