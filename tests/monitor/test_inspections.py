"""Quota, backup freshness and integrity, and the daily report that lists what needs follow-up."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete

from services.monitor.checks import CHECKS, CheckContext
from shared.db import unit_of_work
from shared.imap import check, imap_session
from shared.models.backup import BackupBlob, BackupPack, PruneRun, Snapshot, VerifyRun
from shared.settings import Settings
from tests.mail import message
from tests.monitor.conftest import Api

pytestmark = pytest.mark.usefixtures("mail_stack")


async def fill(address: str, settings: Settings, size: int) -> None:
    """APPEND one message of about `size` bytes (as the master user)."""
    async with imap_session(address, settings=settings) as client:
        body = message(address, "filler", "x" * 76 + "\n") + b"y" * size
        check(await client.append(body, mailbox="INBOX"), "APPEND")


async def test_mailbox_past_80_percent_of_quota_shows_in_the_quota_check_and_daily_report(
    settings: Settings, seed, operator: Api
) -> None:
    full = await seed.mailbox("pw-1234567890", quota_bytes=200_000)
    await fill(full.address, settings, 170_000)
    outcome = (await CHECKS["quota"].run(CheckContext(settings))).outcome
    assert outcome.status in ("warn", "fail"), outcome.message
    (entry,) = [m for m in outcome.details["near_quota"] if m["address"] == full.address]
    assert entry["level"] == "warn" and 0.8 <= entry["ratio"] < 0.95
    assert {g.name for g in outcome.gauges} >= {"mailops_mailboxes_over_quota_ratio"}

    response = await operator.post("/v1/reports", {"kind": "daily"})
    assert response.status_code == 201, response.text
    report = response.json()
    assert full.address in [m["address"] for m in report["body"]["near_quota"]]
    assert {c["name"] for c in report["body"]["checks"]} == set(CHECKS)
    assert response.headers["location"] == f"/v1/reports/{report['id']}"
    page = await operator.get(response.headers["location"], headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert full.address in page.text and "Mailboxes near quota" in page.text


async def test_mailbox_whose_last_snapshot_is_older_than_its_policy_shows_as_stale(
    settings: Settings, seed, operator: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "monitor_backup_grace_seconds", 0)
    department = await seed.department()
    stale = await seed.mailbox("pw-1234567890", department=department)
    fresh = await seed.mailbox("pw-1234567890", department=department)
    now = datetime.now(UTC)
    await seed.backup_policy(department)
    async with unit_of_work() as session:
        for mailbox, age in ((stale, timedelta(hours=2)), (fresh, timedelta(minutes=10))):
            session.add(
                Snapshot(mailbox_id=mailbox.id, seq=1, status="committed", completed_at=now - age)
            )
    outcome = (await CHECKS["backup_freshness"].run(CheckContext(settings))).outcome
    assert outcome.status == "fail", outcome.message
    stale_addresses = [m["address"] for m in outcome.details["stale"]]
    assert stale.address in stale_addresses and fresh.address not in stale_addresses
    (entry,) = [m for m in outcome.details["stale"] if m["address"] == stale.address]
    assert entry["interval_seconds"] == 3600 and entry["age_seconds"] >= 7200
    oldest = [g for g in outcome.gauges if g.name == "mailops_backup_oldest_age_seconds"]
    assert oldest and oldest[0].value >= 7200
    [stamp] = [
        g.value
        for g in outcome.gauges
        if g.name == "mailops_backup_oldest_last_success_timestamp_seconds"
    ]
    assert stamp <= (datetime.now(UTC) - timedelta(hours=2)).timestamp() + 1

    report = (await operator.post("/v1/reports", {"kind": "weekly"})).json()
    assert stale.address in [m["address"] for m in report["body"]["stale_backups"]]
    listed = (await operator.get("/v1/reports", params={"kind": "weekly"})).json()
    assert [r["id"] for r in listed] == [report["id"]]


async def test_backup_integrity_reports_the_store_its_older_keys_holds_and_last_prune(
    settings: Settings, seed
) -> None:
    async def store() -> dict[str, float]:
        outcome = (await CHECKS["backup_integrity"].run(CheckContext(settings))).outcome
        return {g.name: g.value for g in outcome.gauges}

    before = await store()
    async with unit_of_work() as session:
        pack = BackupPack(id=uuid.uuid4(), size=1000)
        session.add(pack)
        await session.flush()
        for offset, key_id in ((0, settings.backup_key_id), (400, "retired")):
            session.add(
                BackupBlob(
                    hash=os.urandom(32),
                    pack_id=pack.id,
                    offset=offset,
                    length=400,
                    size=380,
                    key_id=key_id,
                )
            )
        mailbox = await seed.mailbox("pw-1234567890")
        session.add(
            Snapshot(
                mailbox_id=mailbox.id,
                seq=1,
                status="committed",
                completed_at=datetime.now(UTC),
                held_at=datetime.now(UTC),
                held_by="test",
                hold_reason="audit",
            )
        )
        session.add(PruneRun(status="succeeded", started_at=datetime.now(UTC)))
    after = await store()

    assert after["mailops_backup_held_snapshots"] - before["mailops_backup_held_snapshots"] == 1
    last_prune = after["mailops_backup_last_prune_timestamp_seconds"]
    assert abs(last_prune - datetime.now(UTC).timestamp()) < 60
    assert after["mailops_backup_store_bytes"] - before["mailops_backup_store_bytes"] == 1000
    unused = "mailops_backup_store_unused_bytes"
    assert after[unused] - before[unused] == 200
    older = "mailops_backup_older_key_blobs"
    assert after[older] - before[older] == 1
    unreadable = "mailops_backup_unreadable_key_blobs"  # "retired" is in no setting
    assert after[unreadable] - before[unreadable] == 1
    async with unit_of_work() as session:  # rows with no pack file: no later prune's concern
        await session.execute(delete(BackupBlob).where(BackupBlob.pack_id == pack.id))
        await session.execute(delete(BackupPack).where(BackupPack.id == pack.id))


async def test_an_hourly_departments_mailbox_is_stale_within_a_quarter_hour_of_its_interval(
    settings: Settings, seed
) -> None:
    """Not after the whole hour's grace that a daily policy gets: one missed hourly backup
    shows."""
    department = await seed.department()
    await seed.backup_policy(department)  # hourly
    late = await seed.mailbox("pw-1234567890", department=department)
    async with unit_of_work() as session:
        completed = datetime.now(UTC) - timedelta(minutes=80)
        session.add(Snapshot(mailbox_id=late.id, seq=1, status="committed", completed_at=completed))
    outcome = (await CHECKS["backup_freshness"].run(CheckContext(settings))).outcome
    assert late.address in [m["address"] for m in outcome.details["stale"]]


async def test_backup_integrity_fails_naming_the_mailboxes_the_last_verify_found_damaged(
    settings: Settings, seed
) -> None:
    mailbox = await seed.mailbox("pw-1234567890")
    damage = [
        {"blob": "00", "mailboxes": [{"mailbox_id": str(mailbox.id), "address": mailbox.address}]}
    ]
    async with unit_of_work() as session:
        session.add(
            VerifyRun(
                status="failed",
                finished_at=datetime.now(UTC) + timedelta(days=3650),  # the latest, whatever ran
                blobs_checked=10,
                blobs_damaged=1,
                damage=damage,
            )
        )
        session.add(  # one stopped after (its timeout): it did not read everything
            VerifyRun(
                status="failed",
                reason="abandoned while running: its job is gone",
                finished_at=datetime.now(UTC) + timedelta(days=3650, hours=1),
                blobs_checked=3,
            )
        )
    outcome = (await CHECKS["backup_integrity"].run(CheckContext(settings))).outcome
    assert outcome.status == "fail"
    assert f"the last verify found 1 damaged blobs, in the backups of {mailbox.address}" in (
        outcome.message
    )
    assert outcome.details["verify_damaged_mailboxes"] == [mailbox.address]
    async with unit_of_work() as session:  # a clean verify after it clears it
        session.add(
            VerifyRun(
                status="succeeded",
                finished_at=datetime.now(UTC) + timedelta(days=3651),
                blobs_checked=10,
            )
        )
    outcome = (await CHECKS["backup_integrity"].run(CheckContext(settings))).outcome
    assert outcome.details["verify_damaged_blobs"] == 0
    async with unit_of_work() as session:  # later tests' verifies are the latest again
        await session.execute(delete(VerifyRun).where(VerifyRun.finished_at > datetime.now(UTC)))
