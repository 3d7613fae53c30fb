"""`queue`: Postfix's queue depth by queue and the age of its oldest message."""

from __future__ import annotations

import time
from collections import Counter

from services.monitor.checks.base import (
    Check,
    CheckContext,
    Gauge,
    Outcome,
    Status,
    grade,
    worst,
)
from services.monitor.mailqueue import QUEUES, QueueUnavailable, read_queue

OLDEST_LISTED = 20


class QueueCheck(Check):
    name = "queue"
    description = "Postfix queue: messages per queue and the oldest message's age"
    interval_seconds = 60

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        try:
            messages = await read_queue(settings, settings.monitor_check_timeout_seconds)
        except QueueUnavailable as exc:
            return Outcome(Status.FAIL, str(exc))
        now = time.time()
        depth = Counter(m.queue_name for m in messages)
        oldest = max((now - m.arrival_time for m in messages), default=0.0)
        total = len(messages)
        by_count = grade(
            total, settings.monitor_queue_warn_messages, settings.monitor_queue_crit_messages
        )
        by_age = grade(
            oldest, settings.monitor_queue_warn_age_seconds, settings.monitor_queue_crit_age_seconds
        )
        listed = sorted(messages, key=lambda m: m.arrival_time)[:OLDEST_LISTED]
        return Outcome(
            worst([by_count, by_age]),
            f"{total} queued ({', '.join(f'{q} {depth[q]}' for q in QUEUES[:3])}); "
            f"oldest {oldest:.0f} s",
            value=float(total),
            unit="messages",
            details={
                "depth": {q: depth[q] for q in QUEUES},
                "oldest_age_seconds": oldest,
                "oldest": [
                    {
                        "queue_id": m.queue_id,
                        "queue": m.queue_name,
                        "age_seconds": round(now - m.arrival_time),
                        "reason": m.reason,
                    }
                    for m in listed
                ],
            },
            gauges=[
                *(Gauge("mailops_queue_messages", depth[q], {"queue": q}) for q in QUEUES),
                Gauge("mailops_queue_oldest_message_age_seconds", oldest),
            ],
        )
