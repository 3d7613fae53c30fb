"""`mailops`: run and operate the mailops platform from a shell.

Start with `mailops up` (everything on this machine) or the individual commands below.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated

import httpx
import typer
from sqlalchemy.engine import make_url

from cli import fail
from cli.backup import backup_app
from shared import mailstack
from shared.settings import get_settings


def _without_password(url: str) -> str:
    """A database URL as it may be printed."""
    return make_url(url).render_as_string(hide_password=True)


app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="The shared PostgreSQL schema.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for the three services.", no_args_is_help=True)
stack_app = typer.Typer(help="The local Dovecot + Postfix mail stack.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(apikey_app, name="apikey")
app.add_typer(stack_app, name="stack")
app.add_typer(backup_app, name="backup")

SERVICE_PORTS = {"provisioning": 8001, "backup": 8002, "monitor": 8003}
ServiceName = Annotated[
    str, typer.Argument(help="provisioning, backup or monitor", metavar="SERVICE")
]


def _check_service(service: str) -> None:
    if service not in SERVICE_PORTS:
        fail(f"unknown service {service!r}; choose one of: {', '.join(SERVICE_PORTS)}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database if missing and migrate it to the newest schema."""
    from shared.database_admin import upgrade

    try:
        upgrade(get_settings().database_url)
    except OSError as exc:
        fail(
            f"cannot reach PostgreSQL at {_without_password(get_settings().database_url)}: "
            f"{exc}; "
            "is it running? set MAILOPS_DATABASE_URL to point elsewhere"
        )
    typer.echo("database is at the newest schema")


async def _create_api_key(
    name: str, role: str, departments: list[uuid.UUID], *, replacing: bool = False
) -> str:
    """A new key, as the API makes one (checked, audited, by the CLI's user); `replacing`:
    the unrevoked keys of that name are revoked first."""
    from sqlalchemy import select

    from services.provisioning import schemas as s
    from services.provisioning import service
    from shared.auth import Principal
    from shared.db import get_engine, unit_of_work
    from shared.models import ApiKey, Role

    actor = Principal(id=uuid.UUID(int=0), name=f"cli:{getpass.getuser()}", role=Role.ADMIN)
    try:
        async with unit_of_work() as session:
            if replacing:
                earlier = await session.scalars(
                    select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
                )
                for key_id in list(earlier):
                    await service.revoke_api_key(session, actor=actor, key_id=key_id)
            data = s.ApiKeyCreate(name=name, role=Role(role), department_ids=departments)
            _, key = await service.create_api_key(session, actor=actor, data=data)
    finally:
        await get_engine().dispose()
    return key


@apikey_app.command("create")
def apikey_create(
    role: Annotated[
        str, typer.Option(help="admin, operator, manager, support, onboarding or viewer")
    ],
    name: Annotated[str, typer.Option(help="Who or what uses the key, e.g. 'hr-onboarding'")],
    department: Annotated[
        list[uuid.UUID] | None,
        typer.Option(
            help="Department id the key is scoped to (manager: one; onboarding: repeatable)"
        ),
    ] = None,
) -> None:
    """Create an API key; the key is printed once, as the last line of output."""
    from shared.errors import DomainError
    from shared.models import Role

    roles = [r.value for r in Role]
    if role not in roles:
        fail(f"unknown role {role!r}; choose one of: {', '.join(roles)}")
    try:
        key = asyncio.run(_create_api_key(name, role, department or []))
    except DomainError as exc:  # as the API would answer: a manager's one department, say
        detail = exc.detail.replace("department_ids", "--department")
        named = exc.field != "department_ids" or "--department" in detail
        fail(detail if named else f"{detail} (--department)")
    typer.echo(f"created {role} key {name!r}; store it now, it is not shown again:")
    typer.echo(key)


@stack_app.command("up")
def stack_up() -> None:
    """Render the Dovecot and Postfix configuration and start both; wait until they answer."""
    settings = get_settings()
    try:
        paths = mailstack.up(settings)
    except mailstack.StackError as exc:
        fail(str(exc))
    typer.echo(f"mail stack up in {paths.root}")
    _print_stack_status()


@stack_app.command("run")
def stack_run(daemon: Annotated[str, typer.Argument(help="dovecot or postfix")]) -> None:
    """Render the configuration and run one daemon in the foreground (for containers)."""
    try:
        mailstack.run_foreground(get_settings(), daemon)
    except mailstack.StackError as exc:
        fail(str(exc))


PROBE_GREETINGS = {"imap": b"* OK", "lmtp": b"220", "smtp": b"220", "sieve": b'"IMPL'}


@stack_app.command("probe")
def stack_probe(protocol: Annotated[str, typer.Argument(help="imap, lmtp, sieve or smtp")]) -> None:
    """Exit 0 if the protocol's port greets as it should (container healthchecks)."""
    if protocol not in PROBE_GREETINGS:
        fail(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROBE_GREETINGS)}")
    settings = get_settings()
    host = settings.smtp_host if protocol == "smtp" else settings.mail_host
    port = getattr(settings, f"{protocol}_port")
    if not mailstack.port_answers(host, port, PROBE_GREETINGS[protocol]):
        fail(f"{protocol} on {host}:{port} does not answer")


@stack_app.command("down")
def stack_down() -> None:
    """Stop this stack's Dovecot and Postfix (other stacks are left alone)."""
    mailstack.down(get_settings())
    typer.echo("mail stack stopped")


def _print_stack_status() -> bool:
    all_up = True
    for daemon in mailstack.status(get_settings()):
        state = f"running (pid {daemon.pid})" if daemon.pid else "stopped"
        ports = ", ".join(
            f"{name} {port} {'answers' if ok else 'silent'}"
            for name, (port, ok) in daemon.ports.items()
        )
        typer.echo(f"{daemon.name:8} {state:22} {ports}")
        all_up = all_up and daemon.running
    return all_up


@stack_app.command("status")
def stack_status() -> None:
    """Show each daemon and whether its ports answer; exit 1 unless all are up."""
    if not _print_stack_status():
        raise typer.Exit(1)


@app.command()
def serve(
    service: ServiceName,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default 8001, 8002, 8003)")] = None,
) -> None:
    """Run one service's HTTP API."""
    import uvicorn

    _check_service(service)
    uvicorn.run(
        f"services.{service}.app:create_app",
        factory=True,
        host=host,
        port=port or SERVICE_PORTS[service],
        log_config=None,
    )


@app.command()
def worker(service: ServiceName) -> None:
    """Run one service's job worker (arq)."""
    import importlib

    import uvloop
    from arq.worker import run_worker

    _check_service(service)
    module = importlib.import_module(f"services.{service}.worker")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as uvicorn runs the APIs
    run_worker(module.WorkerSettings)


@app.command("probe-api")
def probe_api(url: Annotated[str, typer.Argument(help="The service's base URL")]) -> None:
    """Exit 0 if the service at URL is ready (`GET /readyz` is 200)."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/readyz", timeout=3)
    except httpx.HTTPError as exc:
        fail(f"{url} unreachable: {exc}")
    if response.status_code != 200:
        fail(f"{url} is not ready: {response.text}")


def _process_dir() -> Path:
    path = get_settings().resolved_state_dir / "run" / "processes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _spawn(name: str, args: list[str]) -> None:
    pid_file = _process_dir() / f"{name}.pid"
    if mailstack.read_pid(pid_file) is not None:
        return
    log = get_settings().resolved_state_dir / "log" / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file.write_text(str(process.pid))


def _wait_ready(url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


@app.command()
def up() -> None:
    """Start everything here: migrate, mail stack, the three APIs and three workers."""
    typer.echo("1/4 migrating the database")
    db_upgrade()
    typer.echo("2/4 starting Dovecot and Postfix")
    stack_up()
    typer.echo("3/4 starting the APIs and workers")
    for service, port in SERVICE_PORTS.items():
        _spawn(f"api-{service}", ["serve", service, "--port", str(port)])
        _spawn(f"worker-{service}", ["worker", service])
    logs = get_settings().resolved_state_dir / "log"
    for service, port in SERVICE_PORTS.items():
        url = f"http://127.0.0.1:{port}"
        if not _wait_ready(url):
            fail(f"the {service} API did not become ready at {url}; see {logs}/api-{service}.log")
        typer.echo(f"   {service:13} {url}  (docs: {url}/docs)")
    typer.echo("4/4 creating an admin API key (the one an earlier `mailops up` made is revoked)")
    key = asyncio.run(_create_api_key("first-admin", "admin", [], replacing=True))
    typer.echo(f"mailops is up; logs in {logs}. Stop it with `mailops down`.")
    typer.echo("admin API key (shown once):")
    typer.echo(key)


@app.command()
def down() -> None:
    """Stop what `mailops up` started: APIs, workers and the mail stack."""
    for pid_file in sorted(_process_dir().glob("*.pid")):
        if pid := mailstack.read_pid(pid_file):
            os.killpg(pid, signal.SIGTERM)
        pid_file.unlink()
    stack_down()
    typer.echo("mailops is down")


if __name__ == "__main__":  # `python -m cli.main ...`, as from cron
    app()
