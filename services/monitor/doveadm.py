"""`doveadm` against the stack's Dovecot configuration: one process for many users."""

from __future__ import annotations

from services.monitor.commands import run_command
from shared.mailstack import StackPaths
from shared.settings import Settings


class DoveadmError(RuntimeError):
    """doveadm is missing or failed; the message says why."""


async def doveadm(settings: Settings, *args: str, time_limit: float) -> str:
    """Run `doveadm -c <conf> -f tab ARGS` and return its output."""
    conf = StackPaths(settings.resolved_state_dir).dovecot_conf
    try:
        code, out, err = await run_command(
            "doveadm", "-c", str(conf), "-f", "tab", *args, time_limit=time_limit
        )
    except FileNotFoundError as exc:
        raise DoveadmError("doveadm is not installed here") from exc
    if code:
        raise DoveadmError(
            f"doveadm {args[0]} {args[1] if len(args) > 1 else ''} failed "
            f"({code}): {err.strip()[:300]}"
        )
    return out
