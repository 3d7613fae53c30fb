"""Postfix's queue as data: `postqueue -j` to read it, `postsuper -d` to remove a message."""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.monitor.commands import run_command
from shared.mailstack import StackPaths
from shared.settings import Settings

QUEUES = ("active", "deferred", "hold", "incoming", "maildrop")


class QueueUnavailable(RuntimeError):
    """Postfix's queue could not be read (Postfix down, or no access to its config)."""


@dataclass(frozen=True)
class QueuedMessage:
    queue_id: str
    queue_name: str
    arrival_time: float
    sender: str
    recipients: tuple[str, ...]
    reason: str


def postfix_config_dir(settings: Settings) -> str:
    return str(StackPaths(settings.resolved_state_dir).postfix_dir)


async def read_queue(settings: Settings, time_limit: float = 10.0) -> list[QueuedMessage]:
    """Every message in Postfix's queues (one `postqueue -j` call)."""
    try:
        code, out, err = await run_command(
            "postqueue", "-c", postfix_config_dir(settings), "-j", time_limit=time_limit
        )
    except FileNotFoundError as exc:
        raise QueueUnavailable("postqueue is not installed here") from exc
    if code != 0:
        raise QueueUnavailable(f"postqueue failed: {(err or out).strip()[:300]}")
    messages = []
    for line in out.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        recipients = entry.get("recipients", [])
        messages.append(
            QueuedMessage(
                queue_id=entry["queue_id"],
                queue_name=entry["queue_name"],
                arrival_time=float(entry["arrival_time"]),
                sender=entry.get("sender", ""),
                recipients=tuple(r.get("address", "") for r in recipients),
                reason="; ".join(r["delay_reason"] for r in recipients if r.get("delay_reason")),
            )
        )
    return messages


async def remove(settings: Settings, queue_ids: list[str], time_limit: float = 30.0) -> None:
    """Delete messages from the queue by id (`postsuper -d -` reading ids from stdin)."""
    if not queue_ids:
        return
    try:
        code, out, err = await run_command(
            "postsuper",
            "-c",
            postfix_config_dir(settings),
            "-d",
            "-",
            time_limit=time_limit,
            stdin="\n".join(queue_ids).encode() + b"\n",
        )
    except FileNotFoundError as exc:
        raise QueueUnavailable("postsuper is not installed here") from exc
    if code:
        raise QueueUnavailable(f"postsuper failed: {(err or out).strip()[:300]}")
