"""What a client is told happened has happened: commits come before responses."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session

from services.provisioning.app import create_app
from tests.provisioning.conftest import Api, address_in


async def test_the_transaction_commits_before_the_response_starts(
    department: Any, api_key_for: Any
) -> None:
    dept = await department()
    key = await api_key_for("admin")
    order: list[str] = []
    app = create_app()

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                order.append("response")
            await send(message)

        await app(scope, receive, send_and_note)

    def committed(_: Session) -> None:
        order.append("commit")

    event.listen(Session, "after_commit", committed)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=recording), base_url="http://t"
        ) as http:
            created = await http.post(
                "/v1/mailboxes",
                headers={"Authorization": f"Bearer {key}"},
                json={"address": address_in(dept), "department_id": dept["id"]},
            )
    finally:
        event.remove(Session, "after_commit", committed)
    assert created.status_code == 201
    assert order.index("commit") < order.index("response"), order


async def test_each_created_resource_is_named_by_its_location_header(
    admin: Api, department: Any
) -> None:
    dept = await department()
    domain = f"located-{uuid.uuid4().hex[:8]}.test"
    created = [
        await admin.post("/v1/domains", {"name": domain}),
        await admin.post(
            "/v1/departments",
            {
                "name": "located",
                "domain": domain,
                "capacity_bytes": 2**30,
                "max_mailboxes": 2,
                "default_quota_bytes": 2**20,
            },
        ),
        await admin.post(
            "/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]}
        ),
        await admin.post(
            "/v1/requests",
            {
                "kind": "create_mailbox",
                "payload": {"address": address_in(dept), "department_id": dept["id"]},
            },
        ),
    ]
    for answer in created:
        assert answer.status_code == 201, answer.text
        named = await admin.get(answer.headers["location"])
        assert named.status_code == 200 and named.json()["id"] == answer.json()["id"]
    deleting = await admin.delete(created[2].headers["location"])
    assert (
        deleting.status_code == 202
        and deleting.headers["location"] == (created[2].headers["location"])
    )
