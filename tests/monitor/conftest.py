"""Monitor test helpers: a clean monitor schema per test, the probe's domain, a webhook
receiver on loopback, API callers, a burst worker, and a second mail stack to stop."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from shared import mailstack
from shared.db import unit_of_work
from shared.models import Domain
from shared.settings import Settings
from tests.conftest import free_port, service_client

PROBE_DOMAIN = "monitor-probe.test"
MONITOR_TABLES = (
    "monitor_notification_deliveries",
    "monitor_incident_events",
    "monitor_incidents",
    "monitor_check_states",
    "monitor_check_results",
    "monitor_maintenance_windows",
    "monitor_reports",
    "monitor_maintenance_runs",
)


@pytest.fixture(autouse=True)
async def clean_monitor_tables() -> None:
    """Each test starts with no results, incidents, windows or reports."""
    async with unit_of_work() as session:
        await session.execute(text(f"TRUNCATE {', '.join(MONITOR_TABLES)} CASCADE"))
        if await session.scalar(select(Domain).where(Domain.name == PROBE_DOMAIN)) is None:
            session.add(Domain(name=PROBE_DOMAIN))


@pytest.fixture(autouse=True)
def monitor_config(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The session settings with the probe in its own domain and no API /readyz to call."""
    monkeypatch.setattr(settings, "monitor_probe_address", f"probe@{PROBE_DOMAIN}")
    monkeypatch.setattr(settings, "monitor_readyz_urls", [])
    monkeypatch.setattr(settings, "monitor_dns_resolver", f"127.0.0.1:{free_port()}")
    monkeypatch.setattr(settings, "monitor_dns_timeout_seconds", 0.3)
    monkeypatch.setattr(settings, "monitor_check_timeout_seconds", 5.0)
    monkeypatch.setattr(settings, "monitor_delivery_crit_seconds", 5.0)
    return settings


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback recording the JSON it is sent."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0

    def events(self) -> list[tuple[str, str]]:
        return [(b["event"], b["incident"]["check"]) for b in self.received]


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if receiver.fail_next > 0:
                receiver.fail_next -= 1
                self.send_response(503)
            else:
                receiver.received.append(body)
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def spare_stack(settings: Settings, mail_stack: mailstack.StackPaths) -> Iterator[Settings]:
    """A second Dovecot + Postfix on the same database, which a test may stop and start."""
    spare = settings.model_copy(
        update={
            "state_dir": Path(tempfile.mkdtemp(prefix="mailops-monitor-stack-")),
            "imap_port": free_port(),
            "smtp_port": free_port(),
            "lmtp_port": free_port(),
            "sieve_port": free_port(),
        }
    )
    mailstack.up(spare)
    yield spare
    mailstack.down(spare)


@dataclass
class Api:
    client: httpx.AsyncClient
    key: str

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(extra or {})}

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self._headers(kw.pop("headers", None)), **kw)

    async def post(self, path: str, json: Any = None) -> httpx.Response:
        return await self.client.post(path, json=json, headers=self._headers())


@pytest.fixture
async def monitor_client() -> AsyncIterator[httpx.AsyncClient]:
    async with service_client("monitor") as http:
        yield http


@pytest.fixture
async def operator(monitor_client: httpx.AsyncClient, api_key_for: Any) -> Api:
    return Api(monitor_client, await api_key_for("operator"))


@pytest.fixture
async def viewer(monitor_client: httpx.AsyncClient, api_key_for: Any) -> Api:
    return Api(monitor_client, await api_key_for("viewer"))
