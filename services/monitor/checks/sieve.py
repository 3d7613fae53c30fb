"""`sieve`: Dovecot's ManageSieve answers with its capabilities and OK."""

from __future__ import annotations

import asyncio
import time

from services.monitor.checks.base import Check, CheckContext, Outcome, Status, describe


class SieveCheck(Check):
    name = "sieve"
    description = "ManageSieve answers with its capability list"
    interval_seconds = 60

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(settings.mail_host, settings.sieve_port)
        except OSError as exc:
            return Outcome(
                Status.FAIL,
                f"ManageSieve {settings.mail_host}:{settings.sieve_port} "
                f"unreachable: {describe(exc)}",
            )
        try:
            implementation = ""
            while True:
                line = await reader.readline()
                if not line:
                    return Outcome(Status.FAIL, "connection closed before the greeting ended")
                if line.startswith(b'"IMPLEMENTATION"'):
                    implementation = line.split(b" ", 1)[1].strip().strip(b'"').decode()
                if line.startswith(b"OK"):
                    break
                if line.startswith((b"NO", b"BYE")):
                    return Outcome(Status.FAIL, f"server refused: {line.strip()!r}")
            writer.write(b"LOGOUT\r\n")
            await writer.drain()
        finally:
            writer.close()
        latency = time.perf_counter() - started
        return Outcome(
            Status.PASS,
            f"{implementation or 'ManageSieve'} answered in {latency * 1000:.0f} ms",
            value=latency,
            unit="s",
        )
