"""The check interface: a name, an interval, thresholds from settings, and a probe.

`Check.run` never raises: a timeout or an unexpected error is a `fail` result with the
reason, so one broken check cannot take the scheduler (or an inspection) down with it.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import get_sessionmaker
from shared.models.monitor import CheckStatus
from shared.settings import Settings

Status = CheckStatus


@dataclass(frozen=True)
class Gauge:
    """One aggregate sample for /metrics (never per mailbox)."""

    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "labels": self.labels}


@dataclass
class Outcome:
    """What a probe found: a verdict, an observed value with its unit, and the evidence."""

    status: CheckStatus
    message: str
    value: float | None = None
    unit: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    gauges: list[Gauge] = field(default_factory=list)


@dataclass(frozen=True)
class Measurement:
    """An outcome with the check's name, when it started and how long it took."""

    check: str
    outcome: Outcome
    started_at: datetime
    duration_seconds: float


@dataclass(frozen=True)
class CheckContext:
    """What a check may use: the settings naming its targets and a way to read the database."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession] = field(default_factory=get_sessionmaker)


def grade(value: float, warn: float, crit: float) -> CheckStatus:
    """pass / warn / fail for a value where higher is worse."""
    if value >= crit:
        return CheckStatus.FAIL
    if value >= warn:
        return CheckStatus.WARN
    return CheckStatus.PASS


def worst(statuses: list[CheckStatus]) -> CheckStatus:
    """The worst of several verdicts: fail > warn > unknown > pass."""
    order = [CheckStatus.FAIL, CheckStatus.WARN, CheckStatus.UNKNOWN, CheckStatus.PASS]
    for status in order:
        if status in statuses:
            return status
    return CheckStatus.PASS


def describe(exc: BaseException) -> str:
    """The exception as `Type: message` (or just its type when it has no message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def read_reply(reader: asyncio.StreamReader) -> list[bytes]:
    """One SMTP/LMTP reply: lines up to the one whose code is followed by a space."""
    lines: list[bytes] = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed mid-reply")
        lines.append(line.rstrip())
        if len(line) < 4 or line[3:4] != b"-":
            return lines


class Check(ABC):
    """One health check; subclasses set the class attributes and implement `probe`."""

    name: ClassVar[str]
    description: ClassVar[str]
    interval_seconds: ClassVar[int] = 60

    def timeout_seconds(self, settings: Settings) -> float:
        return settings.monitor_check_timeout_seconds

    @abstractmethod
    async def probe(self, ctx: CheckContext) -> Outcome:
        """Look at the system and say what was found; may raise (run turns it into fail)."""

    async def run(self, ctx: CheckContext) -> Measurement:
        """Probe within the timeout, measure it, and never raise."""
        started_at = datetime.now(UTC)
        clock = time.perf_counter()
        timeout = self.timeout_seconds(ctx.settings)
        try:
            outcome = await asyncio.wait_for(self.probe(ctx), timeout)
        except TimeoutError:
            outcome = Outcome(CheckStatus.FAIL, f"timed out after {timeout:g} s")
        except Exception as exc:
            outcome = Outcome(CheckStatus.FAIL, describe(exc))
        return Measurement(self.name, outcome, started_at, time.perf_counter() - clock)
