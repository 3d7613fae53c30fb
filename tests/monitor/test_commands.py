"""The mail tools' runner: a tool that exits at once (here, on a configuration it cannot
read) answers with its exit code and stderr; under uvloop, as `mailops serve` and the
workers run, where a write to its already closed stdin once raised RuntimeError (a 500)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from services.monitor.commands import run_command

DOVEADM = ("doveadm", "-c", "/nonexistent/dovecot.conf", "-f", "tab", "fetch", "-A", "uid", "ALL")


def test_a_tool_that_exits_at_once_answers_with_its_code_and_stderr() -> None:
    async def runs() -> set[tuple[int, bool]]:
        # The race was lost about once in 50 runs here: 300 make missing it unlikely.
        results = [await run_command(*DOVEADM, time_limit=10) for _ in range(300)]
        return {(code, "/nonexistent/dovecot.conf" in err) for code, _, err in results}

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(runs()) == {(75, True)}


def test_input_reaches_the_tool() -> None:
    lines = b"0123456789AB\n" * 100_000  # past a pipe's buffer: written while the tool reads
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code, out, _ = runner.run(run_command("wc", "-l", stdin=lines, time_limit=10))
    assert (code, out.strip()) == (0, "100000")


def test_a_tool_past_its_time_limit_is_killed() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, pytest.raises(TimeoutError):
        runner.run(run_command("sleep", "10", time_limit=0.2))
