"""Running the mail stack's command-line tools (doveadm, postqueue, postsuper) with a deadline."""

from __future__ import annotations

import asyncio
from asyncio.subprocess import DEVNULL, PIPE, Process


async def run_command(*args: str, time_limit: float, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run ARGS feeding `stdin`; return (exit code, stdout, stderr).

    A run past `time_limit` is killed and raises TimeoutError; a missing binary raises
    FileNotFoundError, for the caller to say which tool is not installed.
    """
    process = await asyncio.create_subprocess_exec(
        *args, stdin=PIPE if stdin else DEVNULL, stdout=PIPE, stderr=PIPE
    )

    async def outcome() -> tuple[bytes, bytes]:
        if stdin:
            await _feed(process, stdin)
        return await process.communicate()

    try:
        out, err = await asyncio.wait_for(outcome(), time_limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _feed(process: Process, data: bytes) -> None:
    """Hand `data` to the tool. One that exits before reading it (a configuration it cannot
    read, say) answers with its exit code and stderr, not with a broken pipe: uvloop raises
    RuntimeError for a write to the closed pipe, asyncio's own loop BrokenPipeError."""
    assert process.stdin is not None
    try:
        process.stdin.write(data)
        await process.stdin.drain()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):
        pass
    process.stdin.close()
