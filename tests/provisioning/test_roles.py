"""Every provisioning endpoint and every role: who may call what (401 without a key, else 403)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from services.provisioning.app import create_app
from tests.provisioning.conftest import Api, address_in

R = ("admin", "operator", "support", "viewer", "manager", "onboarding")
READERS = set(R)
OPS = {"admin", "operator"}

# (method, path) -> roles allowed; None: no API key needed (the token is the authorisation).
ALLOWED: dict[tuple[str, str], set[str] | None] = {
    ("POST", "/v1/domains"): OPS,
    ("GET", "/v1/domains"): READERS,
    ("GET", "/v1/domains/{domain_id}"): READERS,
    ("DELETE", "/v1/domains/{domain_id}"): OPS,
    ("POST", "/v1/departments"): OPS,
    ("GET", "/v1/departments"): READERS,
    ("GET", "/v1/departments/{department_id}"): READERS,
    ("PATCH", "/v1/departments/{department_id}"): OPS,
    ("POST", "/v1/mailboxes"): OPS | {"onboarding"},
    ("GET", "/v1/mailboxes"): READERS,
    ("GET", "/v1/mailboxes/{mailbox_id}"): READERS,
    ("PATCH", "/v1/mailboxes/{mailbox_id}"): OPS,
    ("POST", "/v1/mailboxes/{mailbox_id}/suspend"): OPS | {"support", "onboarding"},
    ("POST", "/v1/mailboxes/{mailbox_id}/reactivate"): OPS | {"support"},
    ("POST", "/v1/mailboxes/{mailbox_id}/reset-password"): OPS | {"support"},
    ("DELETE", "/v1/mailboxes/{mailbox_id}"): OPS,
    ("PUT", "/v1/mailboxes/{mailbox_id}/forwarding"): OPS,
    ("PUT", "/v1/mailboxes/{mailbox_id}/rules"): OPS | {"support"},
    ("GET", "/v1/mailboxes/{mailbox_id}/rules"): READERS,
    ("POST", "/v1/credentials/pickup"): None,
    ("POST", "/v1/aliases"): OPS,
    ("GET", "/v1/aliases"): READERS,
    ("DELETE", "/v1/aliases/{alias_id}"): OPS,
    ("POST", "/v1/requests"): OPS | {"manager"},
    ("GET", "/v1/requests"): READERS,
    ("GET", "/v1/requests/{request_id}"): READERS,
    ("POST", "/v1/requests/{request_id}/approve"): OPS,
    ("POST", "/v1/requests/{request_id}/reject"): OPS,
    ("GET", "/v1/audit-events"): OPS | {"support", "viewer"},
    ("POST", "/v1/api-keys"): {"admin"},
    ("GET", "/v1/api-keys"): {"admin"},
    ("DELETE", "/v1/api-keys/{key_id}"): {"admin"},
}


def _routes() -> list[tuple[str, str]]:
    paths = create_app().openapi()["paths"]
    return sorted(
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/v1")
        for method in operations
    )


def test_every_endpoint_has_an_entry_in_the_role_table() -> None:
    assert set(_routes()) == set(ALLOWED)


def _url(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", str(uuid.uuid4()), path)


@pytest.mark.parametrize(("method", "path"), sorted(ALLOWED))
async def test_endpoint_admits_exactly_its_roles(
    method: str, path: str, client: httpx.AsyncClient, api_key_for: Any
) -> None:
    allowed = ALLOWED[(method, path)]
    url = _url(path)
    anonymous = await client.request(method, url, json={})
    if allowed is None:
        assert anonymous.status_code not in (401, 403)
        return
    assert anonymous.status_code == 401, anonymous.text
    for role in R:
        key = await api_key_for(role, [uuid.uuid4()] if role == "manager" else [])
        response = await client.request(
            method, url, json={}, headers={"Authorization": f"Bearer {key}"}
        )
        if role in allowed:
            assert response.status_code not in (401, 403), (role, response.text)
        else:
            assert response.status_code == 403, (role, response.text)
            assert response.headers["content-type"] == "application/problem+json"


async def test_a_manager_reads_only_its_own_department(
    as_role: Any, department: Any, admin: Api
) -> None:
    mine, theirs = await department(), await department()
    manager = await as_role("manager", [uuid.UUID(mine["id"])])
    other = (
        await admin.post(
            "/v1/mailboxes", {"address": address_in(theirs), "department_id": theirs["id"]}
        )
    ).json()
    assert (await manager.get(f"/v1/departments/{mine['id']}")).status_code == 200
    assert (await manager.get(f"/v1/departments/{theirs['id']}")).status_code == 403
    assert (await manager.get(f"/v1/mailboxes/{other['id']}")).status_code == 403
    listed = (await manager.get("/v1/departments")).json()
    assert [d["id"] for d in listed] == [mine["id"]]


async def test_onboarding_creates_only_in_the_departments_it_is_allowed(
    as_role: Any, department: Any
) -> None:
    allowed, other = await department(), await department()
    onboarding = await as_role("onboarding", [uuid.UUID(allowed["id"])])
    ok = await onboarding.post(
        "/v1/mailboxes", {"address": address_in(allowed), "department_id": allowed["id"]}
    )
    assert ok.status_code == 201
    denied = await onboarding.post(
        "/v1/mailboxes", {"address": address_in(other), "department_id": other["id"]}
    )
    assert denied.status_code == 403


async def test_a_department_scope_on_a_role_that_acts_everywhere_is_a_422(
    admin: Api, seed: Any
) -> None:
    department = await seed.department()
    for role in ("support", "viewer", "operator", "admin"):
        refused = await admin.post(
            "/v1/api-keys",
            {"name": "scoped", "role": role, "department_ids": [str(department.id)]},
        )
        assert refused.status_code == 422, role
        assert refused.json()["errors"][0]["field"] == "department_ids"


async def test_api_keys_made_through_the_api_work_and_can_be_revoked(admin: Api) -> None:
    created = await admin.post("/v1/api-keys", {"name": "hr-script", "role": "onboarding"})
    assert created.status_code == 201
    key = created.json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    assert (await admin.client.get("/v1/domains", headers=headers)).status_code == 200
    assert "key" not in (await admin.get("/v1/api-keys")).json()[0]
    await admin.delete(f"/v1/api-keys/{created.json()['id']}")
    assert (await admin.client.get("/v1/domains", headers=headers)).status_code == 401
