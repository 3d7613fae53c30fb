"""Run checks and record them: the one path shared by the scheduler, the API and inspections."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from services.monitor import service
from services.monitor.checks import CHECKS, CheckContext, Measurement
from shared.models.monitor import CheckResult
from shared.settings import Settings


async def measure(names: Iterable[str], settings: Settings) -> list[Measurement]:
    """Run the named checks concurrently (each bounded by its timeout; none raises)."""
    context = CheckContext(settings)
    return list(await asyncio.gather(*(CHECKS[name].run(context) for name in names)))


async def run_and_record(
    session: AsyncSession, *, names: Iterable[str], settings: Settings, trigger: str
) -> list[CheckResult]:
    """Measure the checks, then record each in the caller's transaction (in name order)."""
    measurements = await measure(names, settings)
    return [
        await service.record_result(
            session, settings=settings, measurement=measurement, trigger=trigger
        )
        for measurement in sorted(measurements, key=lambda m: m.check)
    ]
