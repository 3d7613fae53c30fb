"""`lmtp`: Dovecot's LMTP answers its greeting and LHLO."""

from __future__ import annotations

import asyncio
import time

from services.monitor.checks.base import (
    Check,
    CheckContext,
    Outcome,
    Status,
    describe,
    read_reply,
)


class LmtpCheck(Check):
    name = "lmtp"
    description = "Dovecot LMTP answers its greeting and LHLO"
    interval_seconds = 60

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(settings.mail_host, settings.lmtp_port)
        except OSError as exc:
            return Outcome(
                Status.FAIL,
                f"LMTP {settings.mail_host}:{settings.lmtp_port} unreachable: {describe(exc)}",
            )
        try:
            greeting = await read_reply(reader)
            if not greeting[0].startswith(b"220"):
                return Outcome(Status.FAIL, f"unexpected greeting {greeting[0]!r}")
            writer.write(b"LHLO mailops-monitor\r\n")
            await writer.drain()
            hello = await read_reply(reader)
            if not hello[-1].startswith(b"250"):
                return Outcome(Status.FAIL, f"LHLO refused: {hello[-1]!r}")
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()
        latency = time.perf_counter() - started
        return Outcome(
            Status.PASS, f"greeting and LHLO in {latency * 1000:.0f} ms", value=latency, unit="s"
        )
