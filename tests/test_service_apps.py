"""Every service: health, readiness, metrics, OpenAPI and problem+json errors."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import queue
from shared.settings import get_settings
from tests.conftest import free_port, service_client

SERVICES = ["provisioning", "backup", "monitor"]


@pytest.mark.parametrize("service", SERVICES)
async def test_livez_answers_health_json(service: str) -> None:
    async with service_client(service) as client:
        response = await client.get("/livez")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    assert response.json()["status"] == "pass"


@pytest.mark.parametrize("service", SERVICES)
async def test_readyz_passes_when_database_and_redis_answer(service: str) -> None:
    async with service_client(service) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/health+json"
    body = response.json()
    assert body["status"] == "pass"
    assert {"postgresql:responseTime", "redis:responseTime"} <= set(body["checks"])


@pytest.fixture
def private_redis(monkeypatch: pytest.MonkeyPatch) -> subprocess.Popen[bytes]:
    """A Redis of this test's own, which the test may stop."""
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while (
        subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip()
        != b"PONG"
    ):
        assert time.monotonic() < deadline, "private redis did not start"
        time.sleep(0.05)
    # On the one settings object every module and fixture holds, undone after the test.
    monkeypatch.setattr(get_settings(), "redis_url", f"redis://127.0.0.1:{port}/0")
    yield server
    server.kill()
    server.wait()


async def test_readyz_fails_with_503_once_redis_stops(
    private_redis: subprocess.Popen[bytes],
) -> None:
    await queue.close_pool()
    try:
        async with service_client("provisioning") as client:
            assert (await client.get("/readyz")).status_code == 200
            private_redis.kill()
            private_redis.wait()
            response = await client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "fail"
        assert body["checks"]["redis:responseTime"][0]["status"] == "fail"
        assert body["checks"]["postgresql:responseTime"][0]["status"] == "pass"
    finally:
        await queue.close_pool()


@pytest.mark.parametrize("service", SERVICES)
async def test_metrics_parse_as_prometheus_text_with_mailops_names(service: str) -> None:
    async with service_client(service) as client:
        await client.get("/livez")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families, "no metrics exposed"
    assert all(name.startswith("mailops_") for name in families)
    requests = families["mailops_http_requests"]
    assert any(s.labels.get("route") == "/livez" for s in requests.samples)


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_serves_its_openapi_document(service: str) -> None:
    async with service_client(service) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == f"mailops {service}"
    assert "/readyz" in document["paths"]


@pytest.mark.parametrize("service", SERVICES)
async def test_unknown_path_is_a_problem_json_404(service: str) -> None:
    async with service_client(service) as client:
        response = await client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("service", "post_with_body"),
    [("provisioning", "/v1/api-keys"), ("backup", "/v1/backups"), ("monitor", "/v1/reports")],
)
async def test_the_openapi_document_names_each_answers_media_type(
    service: str, post_with_body: str
) -> None:
    """Errors are problem+json and health documents health+json in the document, as they
    are on the wire; a client generated from it then reads both right."""
    async with service_client(service) as client:
        spec = (await client.get("/openapi.json")).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path.startswith("/v1/"):
                    assert "application/problem+json" in response["content"], (method, path)
    for path in ("/livez", "/readyz"):
        assert set(spec["paths"][path]["get"]["responses"]["200"]["content"]) == {
            "application/health+json"
        }
    assert "400" in spec["paths"][post_with_body]["post"]["responses"]  # a body that is not JSON
    if service == "backup":
        export = spec["paths"]["/v1/snapshots/{snapshot_id}/export"]["get"]["responses"]["200"]
        assert set(export["content"]) == {"application/mbox"}


@pytest.mark.parametrize("service", SERVICES)
async def test_the_openapi_document_says_how_to_authenticate_and_which_headers_answer(
    service: str,
) -> None:
    """A client generated from the document sends the API key, and finds the headers it
    follows: Location of what a 201 made or a 202 queued, Retry-After of a 503."""
    async with service_client(service) as client:
        spec = (await client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    public = {("post", "/v1/credentials/pickup")}  # the pickup token is its authorisation
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if not path.startswith("/v1/"):
                continue
            secured = operation.get("security") == [{"apiKey": []}]
            assert secured != ((method, path) in public), (method, path)
            answers = operation["responses"]
            for status in ("201", "202"):
                if status in answers and (method, path) not in LOCATIONLESS:
                    assert "Location" in answers[status]["headers"], (method, path, status)
            if "503" in answers:
                assert "Retry-After" in answers["503"]["headers"], (method, path)
            if secured:
                assert "WWW-Authenticate" in answers["401"]["headers"], (method, path)


# 201s of what has no URL of its own to name: a check's result, a timeline note, a window,
# an alias or API key (deleted by id, not read), a maintenance run, a policy.
LOCATIONLESS = {
    ("post", "/v1/checks/{name}/run"),
    ("post", "/v1/incidents/{incident_id}/notes"),
    ("post", "/v1/maintenance-windows"),
    ("post", "/v1/maintenance/{job}"),
    ("post", "/v1/aliases"),
    ("post", "/v1/api-keys"),
    ("put", "/v1/departments/{department_id}/backup-policy"),
}


@pytest.mark.parametrize("service", ["provisioning", "backup", "monitor"])
async def test_head_answers_as_get_does_without_the_body(service: str) -> None:
    async with service_client(service) as client:
        got = await client.get("/livez")
        head = await client.head("/livez")
        keyless = await client.head(
            {"provisioning": "/v1/domains", "backup": "/v1/policies", "monitor": "/v1/incidents"}[
                service
            ]
        )
    assert head.status_code == got.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"]
    assert keyless.status_code == 401 and keyless.content == b""  # the GET's answer, as a HEAD


@pytest.mark.parametrize(
    ("service", "path", "methods"),
    [
        ("provisioning", "/v1/departments", "GET, HEAD, POST"),
        ("backup", "/v1/departments/00000000-0000-0000-0000-000000000000/backup-policy", "PUT"),
        ("monitor", "/v1/incidents", "GET, HEAD"),
    ],
)
async def test_a_method_the_path_lacks_is_405_allowing_every_method_it_has(
    service: str, path: str, methods: str
) -> None:
    async with service_client(service) as client:
        response = await client.request("PATCH", path)
    assert response.status_code == 405
    assert response.headers["allow"] == methods
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("service", "method", "path", "body", "field"),
    [
        ("provisioning", "GET", f"/v1/audit-events?before_id={2**63}", None, "before_id"),
        ("monitor", "GET", f"/v1/checks/imap/results?before_id={2**63}", None, "before_id"),
        ("backup", "GET", f"/v1/snapshots/{uuid.uuid4()}/messages?offset={2**63}", None, "offset"),
        (
            "backup",
            "POST",
            "/v1/restores",
            {
                "mailbox_id": str(uuid.uuid4()),
                "snapshot_id": str(uuid.uuid4()),
                "message_ids": [2**63],
                "target": {"mode": "original"},
            },
            "message_ids.0",
        ),
    ],
)
async def test_a_number_past_postgresql_bigint_is_422_naming_the_field(
    service: str, method: str, path: str, body: object, field: str, api_key_for
) -> None:
    key = await api_key_for("admin")
    async with service_client(service) as client:
        response = await client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
