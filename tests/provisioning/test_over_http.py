"""What a client is told happened has happened: commits come before responses."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session

from services.provisioning.app import create_app
from tests.provisioning.conftest import address_in


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
