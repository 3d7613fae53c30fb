"""Running the mail stack's command-line tools (doveadm, postqueue, postsuper) with a deadline."""

from __future__ import annotations

import asyncio


async def run_command(*args: str, time_limit: float, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run ARGS feeding `stdin`; return (exit code, stdout, stderr).

    A run past `time_limit` is killed and raises TimeoutError; a missing binary raises
    FileNotFoundError, for the caller to say which tool is not installed.
    """
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), time_limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
