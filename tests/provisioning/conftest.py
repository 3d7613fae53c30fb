"""Provisioning test helpers: an API client per role, departments, and a burst worker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import service_client


@dataclass
class Api:
    """The provisioning API as one caller (role) sees it."""

    client: httpx.AsyncClient
    key: str

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(extra or {})}

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self._headers(kw.pop("headers", None)), **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return await self.client.post(
            path, json=json, headers=self._headers(kw.pop("headers", None)), **kw
        )

    async def put(self, path: str, json: Any = None) -> httpx.Response:
        return await self.client.put(path, json=json, headers=self._headers(None))

    async def patch(self, path: str, json: Any = None) -> httpx.Response:
        return await self.client.patch(path, json=json, headers=self._headers(None))

    async def delete(self, path: str) -> httpx.Response:
        return await self.client.delete(path, headers=self._headers(None))


@pytest.fixture(autouse=True)
def _mail_server(mail_stack: object) -> None:
    """Provisioning jobs talk to the real Dovecot: every test here has the stack."""


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with service_client("provisioning") as http:
        yield http


@pytest.fixture
async def admin(client: httpx.AsyncClient, api_key_for: Any) -> Api:
    return Api(client, await api_key_for("admin"))


@pytest.fixture
async def as_role(client: httpx.AsyncClient, api_key_for: Any) -> Any:
    async def make(role: str, departments: list[uuid.UUID] | None = None) -> Api:
        return Api(client, await api_key_for(role, departments or []))

    return make


@pytest.fixture
async def department(admin: Api) -> Any:
    """Create a domain and a department through the API; returns its JSON."""

    async def make(**fields: Any) -> dict[str, Any]:
        domain = f"d{uuid.uuid4().hex[:8]}.test"
        assert (await admin.post("/v1/domains", {"name": domain})).status_code == 201
        body = {
            "name": f"dept-{uuid.uuid4().hex[:8]}",
            "domain": domain,
            "capacity_bytes": 10 * 2**30,
            "max_mailboxes": 100,
            "default_quota_bytes": 2**30,
            **fields,
        }
        response = await admin.post("/v1/departments", body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    return make


def address_in(department: dict[str, Any], local: str | None = None) -> str:
    return f"{local or 'u' + uuid.uuid4().hex[:8]}@{department['domain']}"
