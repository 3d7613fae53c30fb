"""Incidents: thresholds without flapping, one notification per event, silence, lifecycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.monitor import repository, runner
from shared import mailstack
from shared.db import unit_of_work
from shared.models.monitor import Incident
from shared.settings import Settings
from tests.conftest import run_worker
from tests.monitor.conftest import Api, WebhookReceiver


def monitor_view(stack: Settings, settings: Settings, **extra: object) -> Settings:
    """The spare stack's addresses with this test's monitor settings."""
    fields = {k: getattr(settings, k) for k in Settings.model_fields if k.startswith("monitor_")}
    return stack.model_copy(update={**fields, **extra})


async def run_checks(names: list[str], settings: Settings) -> dict[str, str]:
    async with unit_of_work() as session:
        results = await runner.run_and_record(
            session, names=names, settings=settings, trigger="scheduled"
        )
        return {r.check: r.status for r in results}


async def unresolved() -> list[Incident]:
    async with unit_of_work() as session:
        return await repository.unresolved_incidents(session)


async def test_stopped_dovecot_opens_one_incident_per_failing_check_and_notifies_once_then_resolves(
    spare_stack: Settings, settings: Settings, webhook: WebhookReceiver
) -> None:
    stack = monitor_view(spare_stack, settings, monitor_webhook_urls=[webhook.url])
    checks = ["imap", "delivery"]
    assert await run_checks(checks, stack) == {"imap": "pass", "delivery": "pass"}

    mailstack.stop_dovecot(stack)
    try:
        first = await run_checks(checks, stack)
        assert first == {"imap": "fail", "delivery": "fail"}
        assert await unresolved() == [], "one failure is below the threshold of two"
        await run_checks(checks, stack)
        await run_checks(checks, stack)  # a third failure opens nothing new
        incidents = await unresolved()
        assert sorted(i.check for i in incidents) == ["delivery", "imap"]
        async with unit_of_work() as session:
            delivery_result = (await repository.latest_results(session))["delivery"]
        assert delivery_result.details["failed_leg"] == "imap"
        await run_worker("monitor")
        await run_worker("monitor")
        assert sorted(webhook.events()) == [
            ("incident.opened", "delivery"),
            ("incident.opened", "imap"),
        ]
    finally:
        mailstack.start_dovecot(stack, mailstack.StackPaths(stack.resolved_state_dir))

    assert await run_checks(checks, stack) == {"imap": "pass", "delivery": "pass"}
    assert len(await unresolved()) == 2, "one pass is below the recovery threshold of two"
    await run_checks(checks, stack)
    assert await unresolved() == []
    await run_worker("monitor")
    assert sorted(webhook.events()) == [
        ("incident.opened", "delivery"),
        ("incident.opened", "imap"),
        ("incident.resolved", "delivery"),
        ("incident.resolved", "imap"),
    ]
    async with unit_of_work() as session:
        resolved = await repository.incidents(session, state="resolved", limit=50)
        (imap_incident,) = [i for i in resolved if i.check == "imap"]
        timeline = [e.kind for e in await repository.timeline(session, imap_incident.id)]
    assert timeline == ["opened", "notified", "resolved", "notified"]
    assert len(imap_incident.result_ids) == 2


async def test_a_failing_webhook_is_retried_until_it_answers_and_its_url_is_never_shown(
    settings: Settings, webhook: WebhookReceiver, viewer: Api, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import free_port

    secret_url = f"{webhook.url}/T0/B0/s3cret"  # a webhook's path is often its secret
    broken = settings.model_copy(
        update={"lmtp_port": free_port(), "monitor_webhook_urls": [secret_url]}
    )
    caplog.set_level("INFO")
    webhook.fail_next = 1
    await run_checks(["lmtp"], broken)
    await run_checks(["lmtp"], broken)
    await run_worker("monitor")  # first try gets 503, the retry (1 s later) gets through
    assert webhook.events() == [("incident.opened", "lmtp")]
    async with unit_of_work() as session:
        (incident,) = await unresolved()
        (delivery,) = await repository.deliveries(session, incident.id)
    assert delivery.status == "delivered" and delivery.attempts == 2
    detail = await viewer.get(f"/v1/incidents/{incident.id}")
    assert detail.json()["notifications"][0]["url"] == f"{webhook.url.rsplit('/', 1)[0]}/…"
    assert "s3cret" not in detail.text
    assert "s3cret" not in caplog.text


async def test_a_maintenance_window_silences_the_named_check(
    settings: Settings, operator: Api, webhook: WebhookReceiver
) -> None:
    from tests.conftest import free_port

    response = await operator.post(
        "/v1/maintenance-windows",
        {
            "checks": ["lmtp"],
            "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
            "reason": "LMTP upgrade",
        },
    )
    assert response.status_code == 201, response.text
    broken = settings.model_copy(
        update={"lmtp_port": free_port(), "monitor_webhook_urls": [webhook.url]}
    )
    for _ in range(3):
        assert await run_checks(["lmtp"], broken) == {"lmtp": "fail"}
    assert await unresolved() == []
    await run_worker("monitor")
    assert webhook.received == []
    results = (await operator.get("/v1/checks/lmtp/results")).json()
    assert [r["silenced"] for r in results] == [True, True, True]


@pytest.mark.usefixtures("mail_stack")
async def test_an_operator_acknowledges_notes_and_resolves_an_incident(
    settings: Settings, operator: Api, viewer: Api
) -> None:
    from tests.conftest import free_port

    broken = settings.model_copy(update={"sieve_port": free_port()})
    await run_checks(["sieve"], broken)
    await run_checks(["sieve"], broken)
    listed = (await viewer.get("/v1/incidents", params={"state": "open"})).json()
    assert [i["check"] for i in listed] == ["sieve"]
    incident_id = listed[0]["id"]

    assert (await viewer.post(f"/v1/incidents/{incident_id}/acknowledge")).status_code == 403
    acked = await operator.post(f"/v1/incidents/{incident_id}/acknowledge", {"note": "on it"})
    assert acked.status_code == 200 and acked.json()["state"] == "acknowledged"
    note = await operator.post(f"/v1/incidents/{incident_id}/notes", {"message": "port moved"})
    assert note.status_code == 201
    resolved = await operator.post(f"/v1/incidents/{incident_id}/resolve", {"note": "fixed"})
    assert resolved.status_code == 200
    detail = resolved.json()
    assert detail["state"] == "resolved" and detail["resolved_by"].startswith("test-operator")
    assert [e["kind"] for e in detail["timeline"]] == ["opened", "acknowledged", "note", "resolved"]
    assert [r["status"] for r in detail["results"]][:2] == ["fail", "fail"]

    again = await operator.post(f"/v1/incidents/{incident_id}/resolve")
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
