"""Benchmark: onboarding N mailboxes through the provisioning API until each logs in over IMAP.

Goal (issue 3): ≥ 40 accounts/s end to end on 2 cores; the peer figure is Microsoft
Graph's documented write limit of 20 requests/s. Like an HR script, a client creates each
mailbox (`POST /v1/mailboxes`), picks up its password (`POST /v1/credentials/pickup`),
waits for `status: active` (one `GET /v1/mailboxes?status=provisioning` for all waiting
mailboxes at a time) and logs in over IMAP as the user.

    .venv/bin/python bench/onboarding.py                      # 1,000 mailboxes, 16 in flight
    .venv/bin/python bench/onboarding.py --mailboxes 50 --concurrency 8   # a quick run

Starts its own database, Dovecot/Postfix on free loopback ports, one uvicorn provisioning
API process and one provisioning worker process, and removes all of it at the end (also on
failure or timeout). Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, private_environment, tree_cpu  # noqa: E402

PEER_WRITES_PER_SECOND = 20.0  # Microsoft Graph's documented write limit
GOAL_PER_SECOND = 40.0


STATE_DIR = tempfile.mkdtemp(prefix="mailops-bench-onboarding-")
API_PORT = free_port()
ENVIRONMENT = {
    **private_environment("onboarding", STATE_DIR),
    "MAILOPS_LOG_LEVEL": "WARNING",
}
os.environ.update(ENVIRONMENT)

import httpx  # noqa: E402

from shared import mailstack  # noqa: E402
from shared.auth import new_api_key  # noqa: E402
from shared.database_admin import drop_database, upgrade  # noqa: E402
from shared.db import get_engine, unit_of_work  # noqa: E402
from shared.imap import quoted  # noqa: E402
from shared.models import Role  # noqa: E402
from shared.settings import get_settings  # noqa: E402

DOMAIN = "onboarding.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- CPU accounting


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def dovecot_pid() -> int | None:
    return mailstack.read_pid(mailstack.StackPaths(Path(STATE_DIR)).dovecot_pid_file)


# ---------------------------------------------------------------- the private platform


def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
    log = open(Path(STATE_DIR) / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**os.environ, **ENVIRONMENT},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's group, SIGKILL it after 10 s."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except ProcessLookupError:
            pass


def log_tail(name: str, lines: int = 15) -> str:
    try:
        text = (Path(STATE_DIR) / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


async def wait_ready(http: httpx.AsyncClient, api: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError(f"the API exited ({api.returncode}):\n{log_tail('api')}")
        try:
            if (await http.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the API was not ready within 60 s:\n{log_tail('api')}")


async def admin_key() -> str:
    made = new_api_key(name="bench-onboarding", role=Role.ADMIN)
    async with unit_of_work() as session:
        session.add(made.row)
    return made.key


# ---------------------------------------------------------------- the HR script


@dataclass
class Results:
    create_latency: list[float] = field(default_factory=list)
    pickup_latency: list[float] = field(default_factory=list)
    active_after: list[float] = field(default_factory=list)  # create sent -> seen active
    end_to_end: list[float] = field(default_factory=list)  # create sent -> IMAP login OK
    status_polls: int = 0
    login_retries: int = 0
    first_create: float = 0.0
    last_login: float = 0.0


def check_status(response: httpx.Response, expected: int, what: str) -> dict:
    if response.status_code != expected:
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:300]}")
    return response.json()


class ActiveWatch:
    """Tells each waiting mailbox when the worker has made it active, polling for all at once.

    An HR script onboarding a cohort does not poll every mailbox: it asks for the
    department's mailboxes still `provisioning` (one request, whatever the number waiting);
    every waiting mailbox created before that request and not in its answer is ready.
    """

    def __init__(self, http: httpx.AsyncClient, department_id: str, results: Results) -> None:
        self.http, self.department_id, self.results = http, department_id, results
        self.waiting: dict[str, asyncio.Event] = {}
        self.wake = asyncio.Event()

    async def until_active(self, mailbox_id: str) -> None:
        event = self.waiting.setdefault(mailbox_id, asyncio.Event())
        self.wake.set()
        await event.wait()

    async def still_provisioning(self) -> set[str]:
        ids: set[str] = set()
        params = {"department_id": self.department_id, "status": "provisioning", "limit": "500"}
        while True:
            page = check_status(await self.http.get("/v1/mailboxes", params=params), 200, "list")
            ids.update(item["id"] for item in page["items"])
            if not page["next_cursor"]:
                return ids
            params["cursor"] = page["next_cursor"]

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            await asyncio.sleep(0.05)
            asked_for = list(self.waiting)  # all committed: each create answered already
            self.results.status_polls += 1
            provisioning = await self.still_provisioning()
            for mailbox_id in asked_for:
                if mailbox_id not in provisioning:
                    self.waiting.pop(mailbox_id).set()  # active (or failed: the login says)
            if not self.waiting:
                self.wake.clear()


async def imap_login(address: str, password: str) -> bool:
    """Log in over IMAP as the user and out again: True if Dovecot said OK to LOGIN."""
    settings = get_settings()
    reader, writer = await asyncio.open_connection(settings.mail_host, settings.imap_port)
    try:
        await reader.readline()  # greeting
        writer.write(f"a LOGIN {quoted(address)} {quoted(password)}\r\nb LOGOUT\r\n".encode())
        while not (line := await reader.readline()).startswith(b"a "):
            if not line:
                return False
        return line.startswith(b"a OK")
    finally:
        writer.close()


async def onboard(
    http: httpx.AsyncClient,
    watch: ActiveWatch,
    index: int,
    department_id: str,
    results: Results,
    deadline: float,
) -> None:
    address = f"user{index:05d}@{DOMAIN}"
    started = time.perf_counter()
    created = check_status(
        await http.post(
            "/v1/mailboxes",
            json={
                "address": address,
                "display_name": f"Bench User {index}",
                "department_id": department_id,
            },
        ),
        201,
        f"create {address}",
    )
    results.create_latency.append(time.perf_counter() - started)
    picked = time.perf_counter()
    token = created["credential"]["pickup_token"]
    password = check_status(
        await http.post("/v1/credentials/pickup", json={"pickup_token": token}), 200, "pickup"
    )["password"]
    results.pickup_latency.append(time.perf_counter() - picked)
    # Only active mailboxes may log in (a failed login costs Dovecot's 2 s failure delay).
    await asyncio.wait_for(watch.until_active(created["id"]), deadline - time.monotonic())
    results.active_after.append(time.perf_counter() - started)
    while not await imap_login(address, password):
        mailbox = check_status(await http.get(f"/v1/mailboxes/{created['id']}"), 200, "get")
        if mailbox["status"] == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"{address} cannot log in: {mailbox['status']} {mailbox}")
        results.login_retries += 1
        await asyncio.sleep(0.2)
    done = time.perf_counter()
    results.end_to_end.append(done - started)
    results.last_login = max(results.last_login, done)


async def run(count: int, concurrency: int, seconds: float) -> list[tuple[str, str]]:
    settings = get_settings()
    await asyncio.to_thread(upgrade, settings.database_url)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        mailstack.up(settings)
        api = spawn("api", ["serve", "provisioning", "--port", str(API_PORT)])
        processes.append(api)
        worker = spawn("worker", ["worker", "provisioning"])
        processes.append(worker)
        key = await admin_key()
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{API_PORT}",
            headers={"Authorization": f"Bearer {key}"},
            limits=limits,
            timeout=60,
        ) as http:
            await wait_ready(http, api)
            check_status(await http.post("/v1/domains", json={"name": DOMAIN}), 201, "domain")
            department = check_status(
                await http.post(
                    "/v1/departments",
                    json={
                        "name": "bench-onboarding",
                        "domain": DOMAIN,
                        "capacity_bytes": (count + 1) * 10**8,
                        "max_mailboxes": count + 1,  # + the warm-up mailbox
                        "default_quota_bytes": 10**8,
                    },
                ),
                201,
                "department",
            )
            # Warm-up outside the timing: one mailbox through the whole path (imports,
            # connection pools, Dovecot's auth and imap processes).
            results = Results()
            watch = ActiveWatch(http, department["id"], results)
            watcher = asyncio.create_task(watch.run())
            deadline = time.monotonic() + seconds
            await onboard(http, watch, 99999, department["id"], results, deadline)
            results = watch.results = Results()

            cpu_before = {
                "api": tree_cpu(api.pid),
                "worker": tree_cpu(worker.pid),
                "dovecot": tree_cpu(dovecot_pid()),
                "client": time.process_time(),
                "machine": machine_cpu_seconds(),
            }
            semaphore = asyncio.Semaphore(concurrency)

            async def limited(index: int) -> None:
                async with semaphore:
                    await onboard(http, watch, index, department["id"], results, deadline)

            results.first_create = time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(*(limited(i) for i in range(count))),
                timeout=max(1.0, deadline - time.monotonic()),
            )
            watcher.cancel()
            cpu = {
                "api": tree_cpu(api.pid) - cpu_before["api"],
                "worker": tree_cpu(worker.pid) - cpu_before["worker"],
                "dovecot": tree_cpu(dovecot_pid()) - cpu_before["dovecot"],
                "client": time.process_time() - cpu_before["client"],
                "machine": machine_cpu_seconds() - cpu_before["machine"],
            }
    except BaseException:
        for name in ("api", "worker")[: len(processes)]:
            print(f"--- {name} log tail ---\n{log_tail(name)}", file=sys.stderr)
        raise
    finally:
        for process in processes:
            stop(process)
        mailstack.down(settings)
        await get_engine().dispose()
        await drop_database(settings.database_url)
        shutil.rmtree(STATE_DIR, ignore_errors=True)
    return table(count, concurrency, results, cpu)


def _ms(values: list[float], quantile: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000:.0f} ms"


def table(count: int, concurrency: int, r: Results, cpu: dict[str, float]) -> list[tuple[str, str]]:
    wall = r.last_login - r.first_create
    rate = count / wall
    other = cpu["machine"] - cpu["api"] - cpu["worker"] - cpu["dovecot"] - cpu["client"]
    per = 1000 / count
    return [
        ("mailboxes / client concurrency", f"{count} / {concurrency} in flight"),
        ("wall, first create → last IMAP login", f"{wall:.1f} s"),
        (
            "**accounts/s end to end**",
            f"**{rate:.1f}/s** (goal ≥ {GOAL_PER_SECOND:.0f}/s: "
            f"{'met' if rate >= GOAL_PER_SECOND else 'missed'}; "
            f"{rate / PEER_WRITES_PER_SECOND:.2f}x Graph's 20 writes/s)",
        ),
        (
            "create latency (POST /v1/mailboxes)",
            f"p50 {_ms(r.create_latency, 0.5)}, p99 {_ms(r.create_latency, 0.99)}, "
            f"mean {statistics.mean(r.create_latency) * 1000:.0f} ms",
        ),
        (
            "password pickup latency",
            f"p50 {_ms(r.pickup_latency, 0.5)}, p99 {_ms(r.pickup_latency, 0.99)}",
        ),
        (
            "create → status active (worker)",
            f"p50 {_ms(r.active_after, 0.5)}, p99 {_ms(r.active_after, 0.99)}",
        ),
        (
            "create → first IMAP login OK",
            f"p50 {_ms(r.end_to_end, 0.5)}, p99 {_ms(r.end_to_end, 0.99)}; "
            f"{r.status_polls} status polls, {r.login_retries} login retries",
        ),
        (
            "CPU per account (ms): API / worker / Dovecot / client / other",
            f"{cpu['api'] * per:.1f} / {cpu['worker'] * per:.1f} / {cpu['dovecot'] * per:.1f}"
            f" / {cpu['client'] * per:.1f} / {other * per:.1f} (other: PostgreSQL, Redis, OS)",
        ),
        (
            "machine CPU busy",
            f"{cpu['machine']:.0f} s of {wall * (os.cpu_count() or 1):.0f} core-s "
            f"({cpu['machine'] / (wall * (os.cpu_count() or 1)) * 100:.0f}%)",
        ),
    ]


def render(rows: list[tuple[str, str]]) -> str:
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=900, help="give up after (s)")
    args = parser.parse_args()
    rows = asyncio.run(run(args.mailboxes, args.concurrency, args.timeout))
    print(render(rows))


if __name__ == "__main__":
    main()
