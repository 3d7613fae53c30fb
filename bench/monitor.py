"""Benchmark: a full inspection over 1,000 mailboxes, and a /metrics scrape at that size.

Goals (issue 5): the inspection (every check, quota and backup freshness included) in
≤ 5 s; a /metrics scrape in ≤ 50 ms. Runs against its own database and mail stack on
free loopback ports; prints one table. `python bench/monitor.py [--mailboxes N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, private_environment

os.environ.update(
    {
        **private_environment("monitor", tempfile.mkdtemp(prefix="mailops-bench-monitor-")),
        "MAILOPS_MONITOR_PROBE_ADDRESS": "probe@bench.test",
        # No network here: point DNS at a closed port so it answers `unknown` at once, and
        # leave the (not running) APIs out of the platform check.
        "MAILOPS_MONITOR_DNS_RESOLVER": f"127.0.0.1:{free_port()}",
        "MAILOPS_MONITOR_DNS_TIMEOUT_SECONDS": "0.5",
        "MAILOPS_MONITOR_READYZ_URLS": "[]",
        "MAILOPS_MONITOR_METRICS_CACHE_SECONDS": "0",
        "MAILOPS_LOG_LEVEL": "WARNING",
    }
)

import httpx
from sqlalchemy import insert

from services.monitor import reports
from services.monitor.checks import CHECKS, CheckContext
from shared import mailstack
from shared.database_admin import drop_database, upgrade
from shared.db import get_engine, unit_of_work
from shared.imap import check, imap_session
from shared.models import Department, Domain, Mailbox
from shared.models.backup import BackupPolicy, Snapshot
from shared.models.monitor import ReportKind
from shared.passwords import hash_password
from shared.queue import close_pool
from shared.settings import get_settings


async def seed(count: int) -> list[str]:
    """`count` active mailboxes in 10 departments, each with a snapshot 0-36 h old."""
    rng = random.Random(5)
    password_hash = hash_password("bench-password-123")
    async with unit_of_work() as session:
        domain = Domain(name="bench.test")
        session.add(domain)
        await session.flush()
        departments = []
        for index in range(10):
            department = Department(
                name=f"bench-{index}",
                domain_id=domain.id,
                capacity_bytes=10**12,
                max_mailboxes=count,
                default_quota_bytes=10**8,
            )
            session.add(department)
            departments.append(department)
        await session.flush()
        for department in departments[:5]:
            session.add(
                BackupPolicy(
                    department_id=department.id,
                    interval_seconds=6 * 3600,
                    keep_last=7,
                    keep_daily=7,
                    keep_weekly=4,
                    keep_monthly=3,
                )
            )
        rows = [
            {
                "id": uuid.uuid4(),
                "address": f"user{i:05d}@bench.test",
                "domain_id": domain.id,
                "department_id": departments[i % 10].id,
                "password_hash": password_hash,
                "quota_bytes": 200_000 if i % 50 == 0 else 10**8,
                "status": "active",
            }
            for i in range(count)
        ]
        await session.execute(insert(Mailbox), rows)
        now = time.time()
        from datetime import UTC, datetime

        await session.execute(
            insert(Snapshot),
            [
                {
                    "mailbox_id": row["id"],
                    "seq": 1,
                    "status": "committed",
                    "completed_at": datetime.fromtimestamp(now - rng.uniform(0, 36 * 3600), tz=UTC),
                }
                for row in rows
            ],
        )
    return [str(r["address"]) for r in rows]


async def fill(addresses: list[str]) -> None:
    """Put mail in every 50th mailbox (past 80% of its 200 kB quota) and 1 message elsewhere."""
    settings = get_settings()
    body = b"From: a@x.test\r\nSubject: bench\r\n\r\n" + b"y" * 170_000

    async def one(address: str, size_body: bytes) -> None:
        async with imap_session(address, settings=settings) as client:
            check(await client.append(size_body, mailbox="INBOX"), "APPEND")

    small = b"From: a@x.test\r\nSubject: bench\r\n\r\nhello\r\n"
    targets = [(a, body if i % 50 == 0 else small) for i, a in enumerate(addresses) if i % 10 == 0]
    for start in range(0, len(targets), 8):
        await asyncio.gather(*(one(a, b) for a, b in targets[start : start + 8]))


async def quota_over_imap(address: str) -> None:
    async with imap_session(address, settings=get_settings()) as client:
        check(await client.getquotaroot("INBOX"), "GETQUOTAROOT")


async def main(count: int) -> None:
    settings = get_settings()
    await asyncio.to_thread(upgrade, settings.database_url)
    mailstack.up(settings)
    results: list[tuple[str, float, str]] = []
    try:
        started = time.perf_counter()
        addresses = await seed(count)
        await fill(addresses)
        print(f"seeded {count} mailboxes in {time.perf_counter() - started:.1f} s", flush=True)
        context = CheckContext(settings)

        for run in ("cold", "warm"):
            for name in ("quota", "backup_freshness"):
                measurement = await CHECKS[name].run(context)
                results.append(
                    (
                        f"{name} check ({run})",
                        measurement.duration_seconds,
                        f"{measurement.outcome.status}: {measurement.outcome.message}",
                    )
                )
        # The alternative to one doveadm call: IMAP GETQUOTAROOT per mailbox as the master
        # user (a login each), 4 connections at a time, on a sample scaled to the full count.
        sample = addresses[:200]
        started = time.perf_counter()
        for begin in range(0, len(sample), 4):
            await asyncio.gather(*(quota_over_imap(a) for a in sample[begin : begin + 4]))
        per_mailbox = (time.perf_counter() - started) / len(sample)
        results.append(
            (
                f"quota over IMAP GETQUOTAROOT, {count} mailboxes (from {len(sample)})",
                per_mailbox * count,
                f"{per_mailbox * 1000:.1f} ms per mailbox (master login each)",
            )
        )
        for run in range(3):
            started = time.perf_counter()
            async with unit_of_work() as session:
                report = await reports.inspect(session, kind=ReportKind.DAILY, settings=settings)
            elapsed = time.perf_counter() - started
            slowest = sorted(report.body["checks"], key=lambda c: -c["duration_seconds"])[:3]
            results.append(
                (
                    f"full daily inspection #{run + 1}",
                    elapsed,
                    f"{report.status}; near quota {report.body['near_quota_count']}, "
                    f"stale {report.body['stale_backup_count']}; slowest "
                    + ", ".join(f"{c['name']} {c['duration_seconds']:.2f}s" for c in slowest),
                )
            )

        from services.monitor.app import create_app

        app = create_app()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://monitor") as http:
            await http.get("/metrics")
            uncached = []
            for _ in range(50):
                started = time.perf_counter()
                response = await http.get("/metrics")
                uncached.append(time.perf_counter() - started)
            app.state.check_metrics.cache_seconds = 60.0
            cached = []
            for _ in range(50):
                started = time.perf_counter()
                response = await http.get("/metrics")
                cached.append(time.perf_counter() - started)
        lines = len(response.text.splitlines())
        results.append(
            (
                "/metrics scrape, DB read each time (median of 50)",
                statistics.median(uncached),
                f"p95 {sorted(uncached)[47] * 1000:.1f} ms; {lines} lines",
            )
        )
        results.append(
            (
                "/metrics scrape, cached snapshot (median of 50)",
                statistics.median(cached),
                f"p95 {sorted(cached)[47] * 1000:.1f} ms",
            )
        )
    finally:
        mailstack.down(settings)
        await close_pool()
        await get_engine().dispose()
        await drop_database(settings.database_url)
    print(f"\n| work ({count} mailboxes) | wall | notes |\n|---|---|---|")
    for label, seconds, note in results:
        shown = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
        print(f"| {label} | {shown} | {note} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mailboxes", type=int, default=1000)
    asyncio.run(main(parser.parse_args().mailboxes))
