"""The local mail stack: Dovecot and Postfix rendered from deploy/ templates and run on loopback.

Every stack lives in its own state directory with its own ports, so a developer's
`make up` and the test suite's stack run side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from shared.passwords import hash_password
from shared.settings import Settings

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "deploy"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
POSTFIX_MAIN_CF = Path("/etc/postfix/main.cf")


class StackError(RuntimeError):
    """The mail stack could not be rendered, started or stopped; the message says why."""


def render_template(text: str, values: dict[str, str]) -> str:
    """Fill `{{name}}` placeholders; an unknown name is an error, not an empty string."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise StackError(f"template placeholder {{{{{name}}}}} has no value")
        return values[name]

    return _PLACEHOLDER.sub(fill, text)


@dataclass(frozen=True)
class StackPaths:
    """Where one stack keeps its configuration, runtime files, logs and mail."""

    root: Path

    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot" / "dovecot.conf"

    @property
    def postfix_dir(self) -> Path:
        return self.root / "postfix" / "config"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    @property
    def postfix_pid_file(self) -> Path:
        return self.root / "postfix" / "queue" / "pid" / "master.pid"

    @property
    def dovecot_pid_file(self) -> Path:
        return self.run_dir / "dovecot" / "master.pid"


def template_values(settings: Settings) -> dict[str, str]:
    """The placeholder values for one stack, from settings."""
    paths = StackPaths(settings.resolved_state_dir)
    url = make_url(settings.database_url)
    pg_host = url.host or "127.0.0.1"
    pg_port = str(url.port or 5432)
    pg_password = url.password or ""
    connect = f"host={pg_host} port={pg_port} dbname={url.database} user={url.username}"
    if pg_password:
        connect += f" password={pg_password}"
    instance = "mailops-" + hashlib.sha256(str(paths.root).encode()).hexdigest()[:10]
    return {
        "instance_name": instance,
        "state_dir": str(paths.root),
        "run_dir": str(paths.run_dir),
        "log_dir": str(paths.log_dir),
        "mail_root": str(paths.mail_root),
        "config_dir": str(paths.postfix_dir),
        "listen": settings.mail_listen,
        "lmtp_host": settings.mail_host,
        "postfix_interfaces": "all" if settings.mail_listen == "0.0.0.0" else settings.mail_listen,
        "trusted_networks": settings.trusted_networks,
        "auth_penalty_mode": "0600" if settings.auth_penalty else "0",
        "hostname": settings.hostname,
        "imap_port": str(settings.imap_port),
        "smtp_port": str(settings.smtp_port),
        "lmtp_port": str(settings.lmtp_port),
        "sieve_port": str(settings.sieve_port),
        "mail_uid": str(settings.mail_uid),
        "mail_gid": str(settings.mail_gid),
        "pg_connect": connect,
        "pg_host": f"{pg_host}:{pg_port}",
        "pg_user": url.username or "postgres",
        "pg_password": pg_password,
        "pg_dbname": url.database or "mailops",
    }


def _write(path: Path, text: str, mode: int) -> None:
    """Replace the file with `text`, never readable beyond `mode`: written beside it with
    that mode from its creation, then renamed over it (a chmod after the write would leave
    a moment in which any user could read the database password)."""
    partial = path.with_name(path.name + ".new")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    os.chmod(partial, mode)  # the umask may have taken bits the daemons need
    os.replace(partial, path)


def render(settings: Settings) -> StackPaths:
    """Write the stack's Dovecot and Postfix configuration into its state directory."""
    paths = StackPaths(settings.resolved_state_dir)
    values = template_values(settings)
    targets = {
        "dovecot/dovecot.conf.tmpl": paths.dovecot_conf,
        "dovecot/sql.conf.ext.tmpl": paths.root / "dovecot" / "sql.conf.ext",
        "postfix/main.cf.tmpl": paths.postfix_dir / "main.cf",
        "postfix/master.cf.tmpl": paths.postfix_dir / "master.cf",
        "postfix/pgsql-domains.cf.tmpl": paths.postfix_dir / "pgsql-domains.cf",
        "postfix/pgsql-mailboxes.cf.tmpl": paths.postfix_dir / "pgsql-mailboxes.cf",
        "postfix/pgsql-aliases.cf.tmpl": paths.postfix_dir / "pgsql-aliases.cf",
    }
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o755)
    for directory in (
        paths.run_dir,
        paths.log_dir,
        paths.postfix_dir,
        paths.root / "dovecot" / "state",
        paths.root / "postfix" / "queue",
    ):
        directory.mkdir(parents=True, exist_ok=True)
    for template, target in targets.items():
        text = render_template((TEMPLATE_DIR / template).read_text(), values)
        # Configs hold the database password: readable by root and the daemons' groups only.
        _write(
            target,
            text,
            0o644 if target.name in {"main.cf", "master.cf", "dovecot.conf"} else 0o640,
        )
    master_users = paths.root / "dovecot" / "master-users"
    _write(
        master_users,
        f"{settings.master_user}:{hash_password(settings.master_password.get_secret_value())}\n",
        0o640,
    )
    paths.mail_root.mkdir(exist_ok=True)
    data_dir = paths.root / "postfix" / "data"
    data_dir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        os.chown(paths.mail_root, settings.mail_uid, settings.mail_gid)
        shutil.chown(data_dir, user="postfix")
        for secret in (master_users, paths.root / "dovecot" / "sql.conf.ext"):
            shutil.chown(secret, group="dovecot")
        for map_file in paths.postfix_dir.glob("pgsql-*.cf"):
            shutil.chown(map_file, group="postfix")
    return paths


def _require(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise StackError(
            f"{binary} is not installed; run `make mail-packages` (as root) "
            "or install dovecot-imapd dovecot-lmtpd dovecot-pgsql dovecot-sieve "
            "dovecot-managesieved postfix postfix-pgsql"
        )
    return path


def _register_postfix_config_dir(config_dir: Path) -> None:
    """Postfix only runs `-c DIR` for directories the default main.cf lists."""
    postconf = _require("postconf")
    current = subprocess.run(
        [postconf, "-h", "alternate_config_directories"], capture_output=True, text=True, check=True
    ).stdout.split()
    if str(config_dir) in current:
        return
    if os.geteuid() != 0:
        raise StackError(
            f"add {config_dir} to alternate_config_directories in "
            f"{POSTFIX_MAIN_CF} (needs root), then run again"
        )
    joined = " ".join([*current, str(config_dir)])
    subprocess.run([postconf, "-e", f"alternate_config_directories = {joined}"], check=True)


def port_answers(host: str, port: int, greeting: bytes, timeout: float = 2.0) -> bool:
    """True when the server on host:port sends a greeting starting with `greeting`."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            return conn.recv(256).startswith(greeting)
    except OSError:
        return False


def read_pid(pid_file: Path) -> int | None:
    """The pid in the file if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    pid: int | None
    ports: dict[str, tuple[int, bool]]

    @property
    def running(self) -> bool:
        return self.pid is not None and all(ok for _, ok in self.ports.values())


def status(settings: Settings) -> list[DaemonStatus]:
    """Each daemon's pid (if running) and whether each of its ports answers."""
    paths = StackPaths(settings.resolved_state_dir)
    host = settings.mail_host
    return [
        DaemonStatus(
            "dovecot",
            read_pid(paths.dovecot_pid_file),
            {
                "imap": (settings.imap_port, port_answers(host, settings.imap_port, b"* OK")),
                "lmtp": (settings.lmtp_port, port_answers(host, settings.lmtp_port, b"220")),
                "sieve": (settings.sieve_port, port_answers(host, settings.sieve_port, b'"IMPL')),
            },
        ),
        DaemonStatus(
            "postfix",
            read_pid(paths.postfix_pid_file),
            {
                "smtp": (
                    settings.smtp_port,
                    port_answers(settings.smtp_host, settings.smtp_port, b"220"),
                ),
            },
        ),
    ]


def _wait_for(check: str, condition: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise StackError(f"{check} did not come up within {timeout:.0f}s; log {log}:\n{tail}")


def start_dovecot(settings: Settings, paths: StackPaths) -> None:
    if read_pid(paths.dovecot_pid_file) is not None:
        return
    dovecot = _require("dovecot")
    log = paths.log_dir / "dovecot-start.log"
    with log.open("w+") as out:
        # Output goes to a file: the daemon inherits it, so a pipe would never close.
        result = subprocess.run(
            [dovecot, "-c", str(paths.dovecot_conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.seek(0)
        if result.returncode != 0:
            output = out.read().strip()
            hint = (
                "\nanother stack or mail server holds these ports: stop it, or set "
                "MAILOPS_IMAP_PORT / _LMTP_PORT / _SIEVE_PORT to free ones"
                if "Address already in use" in output
                else ""
            )
            raise StackError(f"dovecot failed to start: {output}{hint}")
    _wait_for(
        "dovecot IMAP",
        lambda: port_answers(settings.mail_host, settings.imap_port, b"* OK"),
        20,
        paths.log_dir / "dovecot.log",
    )


def start_postfix(settings: Settings, paths: StackPaths) -> None:
    if read_pid(paths.postfix_pid_file) is not None:
        return
    postfix = _require("postfix")
    _register_postfix_config_dir(paths.postfix_dir)
    log = paths.log_dir / "postfix-start.log"
    with log.open("ab") as out:
        # start-fg: the background `start` reports fatal errors only to syslog.
        subprocess.Popen(
            [postfix, "-c", str(paths.postfix_dir), "start-fg"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _wait_for(
        "postfix SMTP",
        lambda: port_answers(settings.mail_host, settings.smtp_port, b"220"),
        30,
        log,
    )


def up(settings: Settings) -> StackPaths:
    """Render the configuration and start both daemons; return once both answer."""
    paths = render(settings)
    start_dovecot(settings, paths)
    start_postfix(settings, paths)
    return paths


def run_foreground(settings: Settings, daemon: str) -> None:
    """Render the configuration and become the daemon (for containers: PID 1, logs to stdout)."""
    paths = render(settings)
    if daemon == "dovecot":
        os.execv(_require("dovecot"), ["dovecot", "-F", "-c", str(paths.dovecot_conf)])
    elif daemon == "postfix":
        _register_postfix_config_dir(paths.postfix_dir)
        postfix = _require("postfix")
        os.execv(postfix, ["postfix", "-c", str(paths.postfix_dir), "start-fg"])
    raise StackError(f"unknown daemon {daemon!r}; choose dovecot or postfix")


def _terminate(pid_file: Path, timeout: float = 10.0) -> None:
    pid = read_pid(pid_file)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and read_pid(pid_file) == pid:
        time.sleep(0.05)
    if read_pid(pid_file) == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_dovecot(settings: Settings) -> None:
    _terminate(StackPaths(settings.resolved_state_dir).dovecot_pid_file)


def stop_postfix(settings: Settings) -> None:
    _terminate(StackPaths(settings.resolved_state_dir).postfix_pid_file)


def down(settings: Settings) -> None:
    """Stop both daemons of this stack (others are left alone)."""
    stop_postfix(settings)
    stop_dovecot(settings)
