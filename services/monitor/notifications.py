"""Incident notifications: JSON webhooks, one delivery row per event and URL, retried.

Never only by mail: the mail system may be what is down.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from services.monitor import repository
from shared.models.monitor import CheckResult, Incident
from shared.queue import enqueue_after_commit
from shared.settings import Settings


def shown_url(url: str) -> str:
    """A webhook URL as the API, the timeline and the logs show it: its scheme and host. A
    webhook's path and query are often its secret (Slack's `/services/T…/B…/secret`), which
    whoever reads an incident must not learn."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


def payload(event: str, incident: Incident, result: CheckResult | None) -> dict[str, Any]:
    """The JSON a webhook receives (Alertmanager-like: what, how bad, since when, why)."""

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    body: dict[str, Any] = {
        "event": f"incident.{event}",
        "service": "mailops-monitor",
        "incident": {
            "id": str(incident.id),
            "check": incident.check,
            "state": incident.state,
            "severity": incident.severity,
            "title": incident.title,
            "opened_at": when(incident.opened_at),
            "resolved_at": when(incident.resolved_at),
        },
    }
    if result is not None:
        body["result"] = {
            "id": result.id,
            "status": result.status,
            "message": result.message,
            "observed_value": result.observed_value,
            "observed_unit": result.observed_unit,
            "started_at": when(result.started_at),
        }
    return body


async def notify(
    session: AsyncSession,
    *,
    settings: Settings,
    incident: Incident,
    event: str,
    result: CheckResult | None,
) -> None:
    """Queue one delivery per configured webhook; sent by a job once this transaction commits."""
    body = payload(event, incident, result)
    for url in settings.monitor_webhook_urls:
        delivery_id = await repository.add_delivery(
            session, incident_id=incident.id, event=event, url=url, payload=body
        )
        if delivery_id is not None:
            enqueue_after_commit(
                session,
                "monitor",
                "deliver_notification",
                # Keyed by the incident's UUID, not the row id: arq's job keys are global.
                job_id=f"notify:{incident.id}:{event}:{hashlib.sha256(url.encode()).hexdigest()[:12]}",
                delivery_id=delivery_id,
            )
