"""Backup and restore, side by side with mbsync (isync) on one Dovecot and one corpus.

    .venv/bin/python bench/backup.py                      # 20 mailboxes x 500 messages
    .venv/bin/python bench/backup.py --mailboxes 4 --messages 200   # a quick run

Starts its own database and Dovecot/Postfix on free ports (like the tests), fills the
mailboxes over IMAP, then times (a) full backup vs mbsync full pull (alternating, each from
empty, --full-rounds times; the medians), (b) a second run with
nothing changed (mbsync: median of 5 runs; mailops: the first run in a new process, and the
median of 5 more in that process, as a long-running worker runs them), (c) restore into
empty mailboxes vs mbsync push, and reports (d) store size vs the Maildir and the backup
process's peak RSS; then a key rotation: one prune re-sealing the whole store under a new
key, against the time of a full backup (the alternative: back everything up again); the
phases after it run under the new key.
mailops phases run in a child process so their peak RSS is their own;
each backup phase is one multi-mailbox run (`backup_mailboxes`, what a department or `all`
run executes). Also prints the CPU seconds of mailops, Dovecot and PostgreSQL during (a),
(unless --scale-mailboxes 0) (b) at 10x the messages per folder, and (unless --big-folder 0)
the peak RSS of backup and restore with one folder of 100,000 messages. Prints Markdown.

Where the time goes: MAILOPS_BENCH_PROFILE=DIR writes a cProfile of each mailops phase to
DIR (slows Python code ~2x: ratios from such a run are not comparable); MAILOPS_BENCH_SAMPLE=
PREFIX writes every thread's innermost frame, sampled each 5 ms, to PREFIX-<phase>-N.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import private_environment, tree_cpu  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from services.backup.engine.imap import AppendItem

FOLDERS = ("INBOX", "Sent", "Archive", "Projekte/Überblick")
FLAGS = ([], ["\\Seen"], ["\\Seen", "\\Answered"], ["\\Seen", "$Label1"], ["\\Flagged"])


def corpus_message(rng: random.Random, i: int, mailbox: int, sender: str | None = None) -> bytes:
    """A message with a lognormal text size; 4% carry a 0.1-1.5 MB attachment."""
    msg = EmailMessage()
    msg["From"] = sender or f"Sender {i % 97} <s{i % 97}@example.test>"
    msg["To"] = f"user{mailbox}@bench.test"
    msg["Subject"] = f"Message {i} about topic {rng.randint(1, 500)}"
    msg["Message-ID"] = f"<bench-{mailbox}-{i}-{rng.random()}@example.test>"
    msg["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    words = int(min(rng.lognormvariate(6.0, 1.0), 20_000))
    text = " ".join(
        rng.choice(
            (
                "lorem",
                "ipsum",
                "dolor",
                "amet",
                "quarterly",
                "budget",
                "meeting",
                "report",
                "invoice",
                "contract",
            )
        )
        for _ in range(words)
    )
    msg.set_content(text + "\n")
    if rng.random() < 0.04:
        msg.add_attachment(
            rng.randbytes(rng.randint(100_000, 1_500_000)),
            maintype="application",
            subtype="pdf",
            filename=f"doc{i}.pdf",
        )
    return bytes(msg).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class Memos:
    """Internal mail (`--internal-share`): that share of each mailbox's messages are copies
    of memos written by one of `authors` colleagues, about COPIES_PER_MEMO copies each
    (the author's own and the recipients'). A recipient's copy carries its own delivery
    headers, as one delivered alone by Postfix and Dovecot LMTP does."""

    share: float
    authors: int
    pool: int

    def copy(self, k: int, mailbox: int) -> bytes:
        author = k % self.authors
        sent = _memo(k, author)
        if mailbox == author:
            return sent
        return (
            b"Return-Path: <user%d@bench.test>\r\nDelivered-To: user%d@bench.test\r\n"
            b"Received: from mx.bench.test by mail.bench.test with LMTP id memo%d\r\n"
            b"\tfor <user%d@bench.test>; Mon, 01 Jan 2024 10:00:01 +0000\r\n"
            % (author, mailbox, k, mailbox)
        ) + sent


@functools.cache
def _memo(k: int, author: int) -> bytes:
    """Made once: a MIME boundary is random, and every copy must carry the same body."""
    return corpus_message(random.Random(f"memo-{k}"), k, author, sender=f"user{author}@bench.test")


COPIES_PER_MEMO = 3
NO_MEMOS = Memos(0.0, 1, 1)


def mailbox_message(rng: random.Random, i: int, mailbox: int, memos: Memos) -> bytes:
    # With no internal mail no random number is drawn: the corpus stays what it was.
    if memos.share and rng.random() < memos.share:
        return memos.copy(rng.randrange(memos.pool), mailbox)
    return corpus_message(rng, i, mailbox)


def append_item(data: bytes, flags: list[str], when: datetime) -> AppendItem:
    """An APPEND of `data` (imported late, as every mailops module here)."""
    from services.backup.engine.imap import AppendItem

    async def once() -> AsyncIterator[bytes]:
        yield data

    return AppendItem(flags=flags, internal_date=when, size=len(data), chunks=once())


async def fill(
    addresses: list[str], messages: int, first_index: int = 0, memos: Memos = NO_MEMOS
) -> None:
    from services.backup.engine import utf7
    from services.backup.engine.imap import master_connection, quote

    async def one(index: int, address: str) -> None:
        rng = random.Random(index)
        start = datetime(2024, 1, 1, tzinfo=UTC)
        async with master_connection(address) as imap:
            for folder in FOLDERS:
                await imap.command(b"CREATE " + quote(utf7.encode(folder)), check=False)
            for base in range(0, messages, 50):
                batch = [
                    mailbox_message(rng, i, index, memos)
                    for i in range(base, min(messages, base + 50))
                ]
                folder = FOLDERS[(base // 50) % len(FOLDERS)]
                await imap.append_many(
                    utf7.encode(folder),
                    [
                        append_item(d, rng.choice(FLAGS), start + timedelta(minutes=i))
                        for i, d in enumerate(batch)
                    ],
                )

    sem = asyncio.Semaphore(4)

    async def limited(i: int, a: str) -> None:
        async with sem:
            await one(i, a)

    await asyncio.gather(*(limited(i, a) for i, a in enumerate(addresses, first_index)))


async def create_mailboxes(count: int, prefix: str) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from shared.db import unit_of_work
    from shared.models import Department, Domain, Mailbox
    from shared.passwords import hash_password

    password_hash = hash_password("bench-password-123")
    async with unit_of_work() as session:
        domain = await session.scalar(select(Domain).where(Domain.name == "bench.test"))
        if domain is None:
            domain = Domain(name="bench.test")
            session.add(domain)
            await session.flush()
        department = Department(
            name=f"bench-{prefix}-{uuid.uuid4().hex[:6]}",
            domain_id=domain.id,
            capacity_bytes=10**12,
            max_mailboxes=1000,
            default_quota_bytes=10**10,
        )
        session.add(department)
        await session.flush()
        rows = [
            Mailbox(
                address=f"{prefix}{i}@bench.test",
                domain_id=domain.id,
                department_id=department.id,
                password_hash=password_hash,
                quota_bytes=10**10,
                status="active",
            )
            for i in range(count)
        ]
        session.add_all(rows)
        await session.flush()
        return [(str(r.id), r.address) for r in rows]


# ---------------------------------------------------------------- mailops phases (child)


async def phase_backup(mailbox_ids: list[str]) -> dict[str, float]:
    """One backup run over the mailboxes, as a department or `all` run does it."""
    from services.backup.engine.backup import backup_mailboxes
    from services.backup.engine.storage import default_storage

    storage = default_storage()
    started, loop_cpu = time.perf_counter(), time.thread_time()
    outcomes = await backup_mailboxes(
        mailbox_ids=[uuid.UUID(m) for m in mailbox_ids], run_id=None, storage=storage
    )
    seconds, loop_cpu = time.perf_counter() - started, time.thread_time() - loop_cpu
    failed = [o.error for o in outcomes if o.error is not None]
    assert not failed, failed
    fetched = sum(o.counters.messages_fetched for o in outcomes)
    snapshots = {str(o.mailbox_id): str(o.snapshot.id) for o in outcomes if o.snapshot}
    return {  # type: ignore[dict-item]
        "seconds": seconds,
        "loop_cpu_seconds": loop_cpu,
        "fetched": fetched,
        "snapshots": snapshots,
    }


async def phase_again(mailbox_ids: list[str]) -> dict[str, float]:
    """(b): the unchanged run in a fresh process (engine, first connection, mapper set-up and
    statement compilation inside the timed region), then ROUNDS more in the same process,
    as a long-running worker runs them (median)."""
    first = await phase_backup(mailbox_ids)
    warm = [float(str((await phase_backup(mailbox_ids))["seconds"])) for _ in range(ROUNDS)]
    return {**first, "warm_seconds": statistics.median(warm)}


async def phase_unchanged(groups: dict[str, list[str]]) -> dict[str, float]:
    """Unchanged runs over each group of mailboxes, alternating, ROUNDS times: the median
    seconds of each (both groups warm alike, unlike the first run of (b))."""
    from services.backup.engine.backup import backup_mailboxes
    from services.backup.engine.storage import default_storage

    storage = default_storage()
    times: dict[str, list[float]] = {name: [] for name in groups}
    for _ in range(ROUNDS):
        for name, ids in groups.items():
            started = time.perf_counter()
            outcomes = await backup_mailboxes(
                mailbox_ids=[uuid.UUID(m) for m in ids], run_id=None, storage=storage
            )
            times[name].append(time.perf_counter() - started)
            assert sum(o.counters.messages_fetched for o in outcomes) == 0
            assert all(o.error is None for o in outcomes)
    return {name: statistics.median(values) for name, values in times.items()}


ROUNDS = 5


async def phase_restore(pairs: list[tuple[str, str, str]]) -> dict[str, float]:
    """(source mailbox id, snapshot id, target mailbox id) each, restored in parallel."""
    from services.backup import service
    from shared.db import unit_of_work
    from shared.models.backup import JobStatus, RestoreJob
    from shared.settings import get_settings

    ids = []
    async with unit_of_work() as session:
        for source, snapshot, target in pairs:
            job = RestoreJob(
                status=JobStatus.QUEUED.value,
                mailbox_id=uuid.UUID(source),
                snapshot_id=uuid.UUID(snapshot),
                target_mode="mailbox",
                target_mailbox_id=uuid.UUID(target),
            )
            session.add(job)
            await session.flush()
            ids.append(job.id)
    sem = asyncio.Semaphore(max(1, get_settings().backup_imap_connections // 2))

    async def one(job_id: uuid.UUID) -> None:
        async with sem:
            result = await service.execute_restore(job_id)
            assert result == "succeeded", result

    started = time.perf_counter()
    await asyncio.gather(*(one(j) for j in ids))
    return {"seconds": time.perf_counter() - started}


async def phase_rekey(_: object) -> dict[str, float]:
    """One prune, its clock past the packs' grace, run with a new current key (the old one
    kept for reading, as `rotate_key` set them): it re-seals every blob under the new key."""
    from services.backup import service

    started = time.perf_counter()
    result = await service.prune(now=datetime.now(UTC) + service.PACK_GRACE + timedelta(minutes=1))
    seconds = time.perf_counter() - started
    assert result.skipped is None and result.older_key_blobs == 0, result
    return {"seconds": seconds, "resealed": result.resealed, "packs": result.repacked}


def rotate_key(env: dict[str, str]) -> None:
    """What an operator does: a new key under a new id, the old one kept for reading, in the
    environment of every process started from now on."""
    from shared.settings import get_settings

    settings = get_settings()
    old = {settings.backup_key_id: settings.backup_key.get_secret_value()}
    env["MAILOPS_BACKUP_PREVIOUS_KEYS"] = json.dumps(old)
    env["MAILOPS_BACKUP_KEY_ID"], env["MAILOPS_BACKUP_KEY"] = "bench-2", uuid.uuid4().hex
    os.environ.update(env)


def _sampled(main: Any, out: Path) -> dict[str, float]:
    import collections
    import threading

    counts: collections.Counter[str] = collections.Counter()
    done = threading.Event()
    main_id = threading.get_ident()

    def sample() -> None:
        while not done.wait(0.005):
            for ident, frame in sys._current_frames().items():
                if ident == threading.get_ident():
                    continue
                where = f"{frame.f_code.co_filename.split('/')[-1]}:{frame.f_code.co_name}"
                ours = frame
                while ours is not None and "/work/" not in ours.f_code.co_filename:
                    ours = ours.f_back
                mine = f"{ours.f_code.co_name}:{ours.f_lineno}" if ours is not None else "-"
                counts[f"{'main' if ident == main_id else 'thread'} {where} <- {mine}"] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        return dict(asyncio.run(main()))
    finally:
        done.set()
        total = sum(counts.values()) or 1
        out.write_text("".join(f"{n / total:6.1%} {n:6d} {k}\n" for k, n in counts.most_common(60)))


def child(phase: str, argument: str) -> None:
    import uvloop

    from shared.db import get_engine

    if os.environ.get("MAILOPS_BENCH_LOOP", "uvloop") == "uvloop":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as `mailops worker` runs

    async def main() -> dict[str, float]:
        try:
            if phase == "backup":
                return await phase_backup(json.loads(argument))
            if phase == "again":
                return await phase_again(json.loads(argument))
            if phase == "unchanged":
                return await phase_unchanged(json.loads(argument))
            if phase == "rekey":
                return await phase_rekey(json.loads(argument))
            return await phase_restore(json.loads(argument))
        finally:
            await get_engine().dispose()

    profile_dir = os.environ.get("MAILOPS_BENCH_PROFILE")
    sample_file = os.environ.get("MAILOPS_BENCH_SAMPLE")
    if sample_file:  # a low-overhead sampler: every thread's innermost frame each 5 ms
        n = len(list(Path(sample_file).parent.glob(f"{Path(sample_file).name}-{phase}-*")))
        result = _sampled(main, Path(f"{sample_file}-{phase}-{n}.txt"))
    elif profile_dir:  # cProfile the phase: MAILOPS_BENCH_PROFILE=DIR writes DIR/<phase>-N.prof
        import cProfile

        with cProfile.Profile() as profiler:
            result = asyncio.run(main())
        out = Path(profile_dir)
        out.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(out / f"{phase}-{len(list(out.glob(phase + '-*')))}.prof")
    else:
        result = asyncio.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))


def run_child(phase: str, argument: object, root: Path = ROOT) -> dict[str, object]:
    """A phase in a new process, from this checkout or the one at `root`."""
    settle_disk()
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "backup.py"), "--phase", phase, json.dumps(argument)],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- mbsync


def mbsync_config(
    path: Path, maildir: Path, addresses: list[str], sync: str, env: dict[str, str], state: Path
) -> None:
    parts = []
    for i, address in enumerate(addresses):
        (maildir / str(i)).mkdir(parents=True, exist_ok=True)
        parts.append(f"""
IMAPAccount a{i}
Host 127.0.0.1
Port {env["MAILOPS_IMAP_PORT"]}
User "{address}*mailops-master"
Pass "{env["MAILOPS_MASTER_PASSWORD"]}"
SSLType None
AuthMechs LOGIN

IMAPStore r{i}
Account a{i}

MaildirStore l{i}
Path {maildir}/{i}/
Inbox {maildir}/{i}/INBOX
SubFolders Verbatim

Channel c{i}
Far :r{i}:
Near :l{i}:
Patterns *
Create {"Near" if sync == "Pull" else "Far"}
Sync {sync}
SyncState {state}/{i}-
""")
    path.write_text("".join(parts))


def settle_disk() -> None:
    """Write out dirty pages before a timed phase, so that what the previous phase wrote or
    deleted (a 473 MB Maildir, the packs) is not flushed during the next tool's fsyncs."""
    os.sync()


def timed(command: list[str]) -> float:
    settle_disk()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def postmaster() -> int | None:
    """The local PostgreSQL's postmaster (its backends and their CPU are its children)."""
    for pid_file in Path("/var/lib/postgresql").glob("*/main/postmaster.pid"):
        with contextlib.suppress(OSError, ValueError):
            return int(pid_file.read_text().split()[0])
    return None


class CpuMeter:
    """CPU seconds of Dovecot, PostgreSQL and this script's children over a phase."""

    def __init__(self, dovecot: int | None) -> None:
        self.roots = {"Dovecot": dovecot, "PostgreSQL": postmaster()}

    def __enter__(self) -> CpuMeter:
        self.start = {name: tree_cpu(pid) for name, pid in self.roots.items()}
        self.start["children"] = _children_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {name: tree_cpu(pid) - self.start[name] for name, pid in self.roots.items()}
        self.used["children"] = _children_cpu() - self.start["children"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def baseline_backup(root: Path, sources: list[tuple[str, str]], work: Path) -> float:
    """The checkout at `root`'s full backup of the corpus, from empty, leaving the store empty."""
    asyncio.run(forget_backups(work / "state" / "backup"))
    seconds = float(str(run_child("backup", [m for m, _ in sources], root)["seconds"]))
    asyncio.run(forget_backups(work / "state" / "backup"))
    return seconds


async def forget_backups(store: Path) -> None:
    """Empty the catalog and the pack store: the next backup is a full one again."""
    from sqlalchemy import text

    from shared.db import get_engine

    async with get_engine().begin() as connection:
        await connection.execute(
            text(
                "TRUNCATE backup_messages, backup_folders, snapshots, backup_blobs, "
                "backup_packs, restore_jobs, backup_verify_runs"
            )
        )
    await get_engine().dispose()
    shutil.rmtree(store, ignore_errors=True)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------- orchestration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mailboxes", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument(
        "--scale-mailboxes",
        type=int,
        default=2,
        help="mailboxes with 10x the messages for (b)'s scaling check (0: skip it)",
    )
    parser.add_argument(
        "--big-folder",
        type=int,
        default=100_000,
        help="messages in one folder for the memory check of backup, a flag change on every "
        "message, and restore (0: skip it)",
    )
    parser.add_argument(
        "--full-rounds", type=int, default=3, help="alternating runs of (a), from empty each"
    )
    parser.add_argument(
        "--internal-share",
        type=float,
        default=0.0,
        help="share of each mailbox's messages that are internal memos, in about "
        f"{COPIES_PER_MEMO} mailboxes each (default 0: every message in one mailbox only)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit (e.g. `git worktree add /tmp/before HEAD~1`) whose "
        "full backup also runs in each (a) round, on the same corpus: before and after in one run",
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("argument", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child(args.phase, args.argument)
        return
    if shutil.which("mbsync") is None:
        sys.exit("mbsync (Debian package isync) is not installed")
    work = Path(tempfile.mkdtemp(prefix="mailops-bench-"))
    work.chmod(0o755)  # the daemons' own users must reach the state dir inside
    env = private_environment("backup", work / "state")
    os.environ.update(env)

    from shared import mailstack
    from shared.database_admin import drop_database, upgrade
    from shared.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    try:
        paths = mailstack.up(settings)
        results = run(args, work, env, mailstack.read_pid(paths.dovecot_pid_file))
    finally:
        mailstack.down(settings)
        asyncio.run(drop_database(settings.database_url))
        shutil.rmtree(work, ignore_errors=True)
    print(results)


def run(args: argparse.Namespace, work: Path, env: dict[str, str], dovecot: int | None) -> str:
    from shared.db import get_engine

    async def setup() -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
        sources = await create_mailboxes(args.mailboxes, "src")
        ours = await create_mailboxes(args.mailboxes, "dst")
        theirs = await create_mailboxes(args.mailboxes, "mbs")
        started = time.perf_counter()
        share = args.internal_share
        memos = Memos(
            share,
            args.mailboxes,
            max(1, round(share * args.mailboxes * args.messages / COPIES_PER_MEMO)),
        )
        await fill([a for _, a in sources], args.messages, memos=memos)
        print(
            f"filled {args.mailboxes}x{args.messages} in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        await get_engine().dispose()
        return sources, ours, theirs

    sources, ours, theirs = asyncio.run(setup())
    addresses = [a for _, a in sources]
    maildir, state = work / "maildir", work / "mbsync-state"
    maildir.mkdir()
    state.mkdir()
    pull = work / "pull.rc"
    mbsync_config(pull, maildir, addresses, "Pull", env, state)

    # (a) alternates the two tools from empty, --full-rounds times: one pull's time moves by
    # a third from run to run on this machine, so the table shows the medians.
    full_rounds: list[tuple[float, float]] = []
    baseline_rounds: list[float] = []
    full_peak = 0.0
    for round_ in range(args.full_rounds):
        if round_:
            shutil.rmtree(maildir)
            shutil.rmtree(state)
            maildir.mkdir()
            state.mkdir()
            mbsync_config(pull, maildir, addresses, "Pull", env, state)
            asyncio.run(forget_backups(work / "state" / "backup"))
        with CpuMeter(dovecot) as theirs_cpu:
            mbsync_full = timed(["mbsync", "-c", str(pull), "-a", "-q"])
        # The baseline goes first in even rounds, last in odd ones; in the last round first,
        # so that (b) and (c) start from this checkout's store.
        baseline_last = round_ % 2 == 1 and round_ < args.full_rounds - 1
        if args.baseline and not baseline_last:
            baseline_rounds.append(baseline_backup(args.baseline, sources, work))
        with CpuMeter(dovecot) as ours_cpu:
            full = run_child("backup", [m for m, _ in sources])
        full_rounds.append((float(str(full["seconds"])), mbsync_full))
        if args.baseline and baseline_last:
            baseline_rounds.append(baseline_backup(args.baseline, sources, work))
        full_peak = max(full_peak, float(str(full["peak_rss_mb"])))
    mbsync_again = statistics.median(
        timed(["mbsync", "-c", str(pull), "-a", "-q"]) for _ in range(ROUNDS)
    )
    again = run_child("again", [m for m, _ in sources])

    push_state = work / "push-state"
    push_state.mkdir()
    push = work / "push.rc"
    mbsync_config(push, maildir, [a for _, a in theirs], "Push", env, push_state)
    mbsync_push = timed(["mbsync", "-c", str(push), "-a", "-q"])
    snapshots = dict(full["snapshots"])  # type: ignore[call-overload]
    restored = run_child(
        "restore", [[m, snapshots[m], t] for (m, _), (t, _) in zip(sources, ours, strict=True)]
    )
    store = du(work / "state" / "backup")
    maildir_size = du(maildir)
    peak = max(full_peak, float(str(again["peak_rss_mb"])), float(str(restored["peak_rss_mb"])))
    rotate_key(env)
    rekey = run_child("rekey", None)

    scaling = ""
    if args.scale_mailboxes:
        scaling, scaling_peak = scale_check(args, sources[: args.scale_mailboxes])
        peak = max(peak, scaling_peak)

    big = ""
    if args.big_folder:
        big, big_peak = big_folder_check(args.big_folder)
        peak = max(peak, big_peak)

    def row(name: str, ours_s: float, theirs_s: float, goal: str) -> str:
        return f"| {name} | {ours_s:.2f} s | {theirs_s:.2f} s | {ours_s / theirs_s:.2f}x | {goal} |"

    lines = [
        f"Corpus: {args.mailboxes} mailboxes x {args.messages} messages, "
        f"{maildir_size / 1e6:.0f} MB as Maildir; "
        f"fetched {full['fetched']} then {again['fetched']} messages.",
        "",
        "| work | mailops | mbsync | ratio | goal |",
        "|---|---|---|---|---|",
        row(
            f"(a) full backup vs full pull, median of {len(full_rounds)}",
            statistics.median(ours for ours, _ in full_rounds),
            statistics.median(theirs for _, theirs in full_rounds),
            "≤ 0.5x",
        ),
        row(
            "(b) second run, unchanged, in a new process",
            float(str(again["seconds"])),
            mbsync_again,
            "≤ 0.5x",
        ),
        row(
            "(b) the same in a worker that has run before",
            float(str(again["warm_seconds"])),
            mbsync_again,
            "≤ 0.5x",
        ),
        row(
            "(c) restore into empty mailboxes vs push",
            float(restored["seconds"]),
            mbsync_push,
            "≤ 1.0x",
        ),  # type: ignore[arg-type]
        f"| (d) store size vs Maildir | {store / 1e6:.0f} MB | {maildir_size / 1e6:.0f} MB | "
        f"{store / maildir_size:.2f}x | ≤ 0.6x |",
        f"| (d) peak RSS of the backup process | {peak:.0f} MB | | | ≤ 256 MB |",
    ]
    lines += [
        "",
        "(a) round by round, mailops vs mbsync: "
        + ", ".join(f"{o:.2f} s vs {m:.2f} s ({o / m:.2f}x)" for o, m in full_rounds)
        + ".",
        "",
        f"CPU seconds during the last (a): mailops {float(str(full['cpu_seconds'])):.1f} "
        f"(its event-loop thread {float(str(full['loop_cpu_seconds'])):.1f}, "
        f"wall {float(str(full['seconds'])):.1f}), its Dovecot {ours_cpu.used['Dovecot']:.1f}, "
        f"PostgreSQL {ours_cpu.used['PostgreSQL']:.1f}; mbsync {theirs_cpu.used['children']:.1f} "
        f"(wall {mbsync_full:.1f}), its Dovecot {theirs_cpu.used['Dovecot']:.1f}, "
        f"PostgreSQL {theirs_cpu.used['PostgreSQL']:.1f}.",
    ]
    full_median = statistics.median(ours for ours, _ in full_rounds)
    lines += [
        "",
        f"Key rotation: one prune re-sealed the {rekey['resealed']:.0f} blobs of "
        f"{rekey['packs']:.0f} packs ({store / 1e6:.0f} MB) under a new key in "
        f"{rekey['seconds']:.2f} s ({store / 1e6 / rekey['seconds']:.0f} MB/s, "
        f"its process {rekey['cpu_seconds']:.1f} CPU-s with start-up), "
        f"{rekey['seconds'] / full_median:.2f}x the time of backing the corpus up again.",
    ]
    if baseline_rounds:
        lines += [
            "",
            f"(a) against the baseline {args.baseline}, round by round: "
            + ", ".join(
                f"{o:.2f} s vs {b:.2f} s ({o / b:.2f}x)"
                for (o, _), b in zip(full_rounds, baseline_rounds, strict=True)
            )
            + f"; medians {statistics.median(o for o, _ in full_rounds):.2f} s vs "
            f"{statistics.median(baseline_rounds):.2f} s.",
        ]
    if scaling:
        lines += ["", scaling]
    if big:
        lines += ["", big]
    return "\n".join(lines)


def scale_check(args: argparse.Namespace, small: list[tuple[str, str]]) -> tuple[str, float]:
    """(b) at 10x the messages per folder: as many mailboxes as `small`, each with 10x the
    messages, backed up once; then unchanged runs of both groups, alternating."""
    from shared.db import get_engine

    count, messages = len(small), args.messages * 10

    async def setup() -> list[tuple[str, str]]:
        big = await create_mailboxes(count, "big")
        started = time.perf_counter()
        await fill([a for _, a in big], messages, first_index=1000)
        print(f"filled {count}x{messages} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        await get_engine().dispose()
        return big

    big = asyncio.run(setup())
    full = run_child("backup", [m for m, _ in big])
    timed_runs = run_child(
        "unchanged", {"small": [m for m, _ in small], "big": [m for m, _ in big]}
    )
    one, ten = float(str(timed_runs["small"])), float(str(timed_runs["big"]))
    peak = max(float(str(full["peak_rss_mb"])), float(str(timed_runs["peak_rss_mb"])))
    line = (
        f"(b) at 10x messages per folder: an unchanged run of {count} mailboxes x {messages} "
        f"messages took {ten * 1000:.1f} ms, of {count} x {args.messages} {one * 1000:.1f} ms "
        f"(medians of {ROUNDS} alternating runs): {ten / one:.2f}x, goal ≤ 1.2x. "
        f"Their full backup: {float(str(full['seconds'])):.2f} s, peak RSS {peak:.0f} MB."
    )
    return line, peak


def small_message(i: int) -> bytes:
    """A short text message (the big-folder check is about counts, not bytes)."""
    return (
        b"From: Sender %d <s%d@example.test>\r\nTo: big@bench.test\r\n"
        b"Subject: Notice %d\r\nMessage-ID: <big-%d@example.test>\r\n"
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\n" % (i % 97, i % 97, i, i)
    ) + b"Line of the notice body.\r\n" * (8 + i % 40)


async def fill_folder(address: str, count: int) -> None:
    from services.backup.engine.imap import master_connection

    start = datetime(2024, 1, 1, tzinfo=UTC)
    async with master_connection(address) as imap:
        for base in range(0, count, 500):
            await imap.append_many(
                "INBOX",
                [
                    append_item(small_message(i), [], start + timedelta(seconds=i))
                    for i in range(base, min(count, base + 500))
                ],
            )


async def mark_all_seen(address: str) -> None:
    from services.backup.engine.imap import master_connection

    async with master_connection(address) as imap:
        await imap.command(b"SELECT INBOX")
        await imap.command(b"STORE 1:* +FLAGS.SILENT (\\Seen)")


def big_folder_check(count: int) -> tuple[str, float]:
    """Peak RSS of the backup process with one folder of `count` messages: its full backup,
    an incremental run after a flag change on every message, its restore into an empty
    mailbox, and the same restore again (every message already there: all skipped)."""
    from shared.db import get_engine

    async def setup() -> list[tuple[str, str]]:
        mailboxes = await create_mailboxes(2, "huge")
        await fill_folder(mailboxes[0][1], count)
        await get_engine().dispose()
        return mailboxes

    (source, address), (target, _) = asyncio.run(setup())
    figures: list[tuple[str, dict[str, object]]] = []
    full = run_child("backup", [source])
    figures.append(("full backup", full))
    asyncio.run(mark_all_seen(address))
    figures.append(("a flag change on every message", run_child("backup", [source])))
    snapshot = dict(full["snapshots"])[source]  # type: ignore[call-overload]
    for name in ("restore into an empty mailbox", "the same restore again (all skipped)"):
        figures.append((name, run_child("restore", [[source, snapshot, target]])))
    peak = max(float(str(f["peak_rss_mb"])) for _, f in figures)
    line = (
        f"One folder of {count:,} messages, peak RSS of the backup process: "
        + "; ".join(
            f"{name} {float(str(f['seconds'])):.1f} s, {float(str(f['peak_rss_mb'])):.0f} MB"
            for name, f in figures
        )
        + " (goal: ≤ 256 MB)."
    )
    return line, peak


if __name__ == "__main__":
    main()
