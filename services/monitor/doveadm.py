"""`doveadm` against the stack's Dovecot configuration: one process for many users."""

from __future__ import annotations

import asyncio

from shared.mailstack import StackPaths
from shared.settings import Settings


class DoveadmError(RuntimeError):
    """doveadm is missing or failed; the message says why."""


async def doveadm(settings: Settings, *args: str, time_limit: float, stdin: bytes = b"") -> str:
    """Run `doveadm -c <conf> -f tab ARGS` and return its output."""
    conf = StackPaths(settings.resolved_state_dir).dovecot_conf
    try:
        process = await asyncio.create_subprocess_exec(
            "doveadm",
            "-c",
            str(conf),
            "-f",
            "tab",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise DoveadmError("doveadm is not installed here") from exc
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), time_limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode:
        raise DoveadmError(
            f"doveadm {args[0]} {args[1] if len(args) > 1 else ''} failed "
            f"({process.returncode}): {err.decode(errors='replace').strip()[:300]}"
        )
    return out.decode(errors="replace")
