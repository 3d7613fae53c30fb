"""What every benchmark needs: a private mailops environment beside anything else running,
and the CPU its processes used.

Its own database, Redis queue prefix, state dir and free loopback ports, so a benchmark's
Dovecot and Postfix never meet a developer's stack or the test suite's.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_environment(name: str, state_dir: Path | str) -> dict[str, str]:
    """MAILOPS_* settings for a benchmark's own database, queue, state dir and ports."""
    run = uuid.uuid4().hex[:8]
    database = f"mailops_bench_{name}_{run}"
    return {
        "MAILOPS_ENVIRONMENT": "test",
        "MAILOPS_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        "MAILOPS_REDIS_URL": "redis://127.0.0.1:6379/14",
        "MAILOPS_STATE_DIR": str(state_dir),
        "MAILOPS_IMAP_PORT": str(free_port()),
        "MAILOPS_SMTP_PORT": str(free_port()),
        "MAILOPS_LMTP_PORT": str(free_port()),
        "MAILOPS_SIEVE_PORT": str(free_port()),
        "MAILOPS_MASTER_PASSWORD": f"bench-{uuid.uuid4().hex}",
        "MAILOPS_AUTH_PENALTY": "false",
        "MAILOPS_QUEUE_PREFIX": f"mailops-bench-{run}",
    }


def tree_cpu(root: int | None) -> float:
    """CPU seconds used so far by a process and its descendants, live or reaped."""
    if root is None:
        return 0.0
    parents: dict[int, int] = {}
    cpu: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total / os.sysconf("SC_CLK_TCK")
