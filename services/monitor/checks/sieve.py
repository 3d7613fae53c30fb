"""`sieve`: Dovecot's ManageSieve answers with its capabilities and OK."""

from __future__ import annotations

import time

from services.monitor.checks.base import Check, CheckContext, Outcome, Status, describe
from shared.managesieve import ManageSieve, SieveError, SieveUnavailable


class SieveCheck(Check):
    name = "sieve"
    description = "ManageSieve answers with its capability list"
    interval_seconds = 60

    async def probe(self, ctx: CheckContext) -> Outcome:
        started = time.perf_counter()
        try:
            async with ManageSieve(None, ctx.settings) as server:  # the greeting, no login
                implementation = server.capabilities.get("IMPLEMENTATION", "ManageSieve")
        except SieveUnavailable as exc:
            return Outcome(Status.FAIL, str(exc))
        except SieveError as exc:
            return Outcome(Status.FAIL, f"server refused: {exc.message}")
        except TimeoutError as exc:
            return Outcome(Status.FAIL, f"no greeting: {describe(exc)}")
        latency = time.perf_counter() - started
        return Outcome(
            Status.PASS,
            f"{implementation} answered in {latency * 1000:.0f} ms",
            value=latency,
            unit="s",
        )
