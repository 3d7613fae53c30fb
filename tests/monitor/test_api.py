"""The monitor API: health+json status, check runs, roles, problem+json input errors, metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from services.monitor.checks import CHECKS, check_intervals
from shared.settings import Settings
from tests.monitor.conftest import Api

pytestmark = pytest.mark.usefixtures("mail_stack")


async def test_status_is_health_json_with_every_check_and_an_overall_verdict(
    operator: Api, viewer: Api
) -> None:
    run = await operator.post("/v1/checks/imap/run")
    assert run.status_code == 201, run.text
    assert run.json()["status"] == "pass" and run.json()["trigger"] == "on-demand"

    response = await viewer.get("/v1/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    body = response.json()
    assert set(body["checks"]) == set(CHECKS)
    (imap,) = body["checks"]["imap"]
    assert imap["status"] == "pass" and imap["observedUnit"] == "s"
    # Checks that never ran make the whole a warning, not a pass.
    assert body["status"] == "warn"
    assert body["checks"]["dns"][0]["checkStatus"] == "unknown"


async def test_an_on_demand_run_counts_like_a_scheduled_one_in_the_history(
    operator: Api, viewer: Api
) -> None:
    for _ in range(2):
        assert (await operator.post("/v1/checks/lmtp/run")).status_code == 201
    history = (await viewer.get("/v1/checks/lmtp/results", params={"limit": 5})).json()
    assert len(history) == 2 and history[0]["id"] > history[1]["id"]
    listed = {c["name"]: c for c in (await viewer.get("/v1/checks")).json()}
    assert listed["lmtp"]["last_result"]["id"] == history[0]["id"]
    assert listed["delivery"]["interval_seconds"] == 300


async def test_check_intervals_can_be_set_per_check_and_a_misnamed_check_is_refused(
    viewer: Api, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "monitor_check_intervals", {"tls": 86400})
    listed = {c["name"]: c for c in (await viewer.get("/v1/checks")).json()}
    assert (listed["tls"]["interval_seconds"], listed["lmtp"]["interval_seconds"]) == (86400, 60)
    monkeypatch.setattr(settings, "monitor_check_intervals", {"tsl": 86400})
    with pytest.raises(ValueError, match="unknown checks tsl; the checks are imap, "):
        check_intervals(settings)
    with pytest.raises(ValidationError, match="greater than or equal to 60"):
        Settings(monitor_check_intervals={"tls": 5})


async def test_a_viewer_reads_but_cannot_run_checks_or_open_windows(viewer: Api) -> None:
    assert (await viewer.get("/v1/checks")).status_code == 200
    assert (await viewer.post("/v1/checks/imap/run")).status_code == 403
    assert (await viewer.post("/v1/reports", {"kind": "daily"})).status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("post", "/v1/checks/nope/run", None, 404, "name"),
        ("get", "/v1/incidents?state=closed", None, 422, "state"),
        ("get", "/v1/incidents/not-a-uuid", None, 422, "incident_id"),
        ("post", "/v1/reports", {"kind": "hourly"}, 422, "kind"),
        (
            "post",
            "/v1/maintenance-windows",
            {"checks": ["imap", "nope"], "ends_at": "2099-01-01T00:00:00Z"},
            422,
            "checks",
        ),
        (
            "post",
            "/v1/maintenance-windows",
            {
                "checks": ["imap"],
                "starts_at": "2099-01-02T00:00:00Z",
                "ends_at": "2099-01-01T00:00:00Z",
            },
            422,
            "ends_at",
        ),
        (
            "post",
            "/v1/maintenance-windows",
            {"checks": ["imap"], "ends_at": "2099-01-01T00:00:00"},
            422,
            "ends_at",
        ),
    ],
)
async def test_bad_input_is_a_problem_json_naming_the_field(
    operator: Api, method: str, path: str, body: object, status: int, field: str
) -> None:
    response = await (operator.post(path, body) if method == "post" else operator.get(path))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_unknown_incident_and_report_are_404(viewer: Api) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for path in (f"/v1/incidents/{missing}", f"/v1/reports/{missing}"):
        response = await viewer.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"


async def test_metrics_expose_check_results_in_base_units_without_mailbox_labels(
    operator: Api,
) -> None:
    for name in ("imap", "delivery", "queue", "quota"):
        assert (await operator.post(f"/v1/checks/{name}/run")).status_code == 201
    response = await operator.client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    up = {s.labels["check"]: s.value for s in families["mailops_check_up"].samples}
    assert up["imap"] == 1.0 and up["delivery"] == 1.0
    assert families["mailops_delivery_roundtrip_seconds"].samples[0].value < 1.0
    queues = {s.labels["queue"] for s in families["mailops_queue_messages"].samples}
    assert {"active", "deferred", "hold"} <= queues
    runs = families["mailops_check_runs"]
    assert runs.type == "counter"
    assert {s.name for s in runs.samples} >= {"mailops_check_runs_total"}
    assert "mailops_mailboxes_over_quota_ratio" in families
    labels = {k for f in families.values() for s in f.samples for k in s.labels}
    assert not labels & {"mailbox", "address", "user"}


async def test_maintenance_windows_are_listed_while_current(operator: Api, viewer: Api) -> None:
    ends = datetime.now(UTC) + timedelta(minutes=30)
    created = await operator.post(
        "/v1/maintenance-windows", {"checks": ["queue"], "ends_at": ends.isoformat()}
    )
    assert created.status_code == 201
    listed = (await viewer.get("/v1/maintenance-windows")).json()
    assert [w["id"] for w in listed] == [created.json()["id"]]


def test_the_grafana_dashboard_only_uses_metrics_the_services_expose() -> None:
    import json
    import re
    from pathlib import Path

    from services.monitor.metrics import HELP

    dashboard = Path(__file__).resolve().parents[2] / "deploy/grafana/mailops-dashboard.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"mailops_[a-z_]+", e)}
    exposed = {
        *HELP,
        "mailops_check_up",
        "mailops_check_status",
        "mailops_check_duration_seconds",
        "mailops_check_last_run_timestamp_seconds",
        "mailops_check_runs_total",
        "mailops_check_failures_total",
        "mailops_incidents_open",
        "mailops_http_requests_total",
    }
    assert used <= exposed, used - exposed
    assert {"mailops_check_up", "mailops_delivery_roundtrip_seconds"} <= used
