"""The configuration request form: a manager files, an operator decides, the worker acts."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import run_worker
from tests.mail import can_log_in
from tests.provisioning.conftest import Api, address_in


@pytest.mark.usefixtures("mail_stack")
async def test_an_approved_create_request_ends_completed_with_a_working_mailbox(
    as_role: Any, department: Any
) -> None:
    dept = await department()
    manager = await as_role("manager", [uuid.UUID(dept["id"])])
    operator = await as_role("operator")
    address = address_in(dept)
    filed = await manager.post(
        "/v1/requests",
        {
            "kind": "create_mailbox",
            "reason": "new hire",
            "payload": {"address": address, "department_id": dept["id"]},
        },
    )
    assert filed.status_code == 201, filed.text
    assert filed.json()["status"] == "pending"
    assert (await manager.post(f"/v1/requests/{filed.json()['id']}/approve")).status_code == 403
    approved = await operator.post(
        f"/v1/requests/{filed.json()['id']}/approve", {"reason": "within budget"}
    )
    assert approved.json()["status"] == "approved"
    await run_worker()
    done = (await operator.get(f"/v1/requests/{filed.json()['id']}")).json()
    assert done["status"] == "completed", done
    assert done["result"]["address"] == address
    token = done["result"]["credential"]["pickup_token"]
    password = (
        await operator.client.post("/v1/credentials/pickup", json={"pickup_token": token})
    ).json()["password"]
    assert await can_log_in(address, password)


async def test_a_rejected_request_is_not_carried_out(as_role: Any, department: Any) -> None:
    dept = await department()
    manager = await as_role("manager", [uuid.UUID(dept["id"])])
    operator = await as_role("operator")
    filed = (
        await manager.post(
            "/v1/requests", {"kind": "change_allocation", "payload": {"max_mailboxes": 500}}
        )
    ).json()
    rejected = await operator.post(
        f"/v1/requests/{filed['id']}/reject", {"reason": "no budget this quarter"}
    )
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["decision_reason"] == "no budget this quarter"
    await run_worker()
    assert (await operator.get(f"/v1/departments/{dept['id']}")).json()["max_mailboxes"] == 100
    again = await operator.post(f"/v1/requests/{filed['id']}/approve")
    assert again.status_code == 409


async def test_a_request_that_cannot_be_done_ends_failed_with_the_reason(
    as_role: Any, department: Any, admin: Api
) -> None:
    dept = await department(capacity_bytes=2**30, default_quota_bytes=2**30)
    manager = await as_role("manager", [uuid.UUID(dept["id"])])
    mailbox = (
        await admin.post(
            "/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]}
        )
    ).json()
    filed = (
        await manager.post(
            "/v1/requests",
            {
                "kind": "change_quota",
                "payload": {"mailbox_id": mailbox["id"], "quota_bytes": 5 * 2**30},
            },
        )
    ).json()
    await admin.post(f"/v1/requests/{filed['id']}/approve")
    await run_worker()
    done = (await admin.get(f"/v1/requests/{filed['id']}")).json()
    assert done["status"] == "failed"
    assert "room" in done["failure_reason"]
    assert (await admin.get(f"/v1/mailboxes/{mailbox['id']}")).json()["quota_bytes"] == 2**30


@pytest.mark.parametrize("kind", ["suspend_mailbox", "delete_mailbox"])
async def test_suspend_and_delete_requests_change_the_mailbox(
    kind: str, as_role: Any, department: Any, admin: Api
) -> None:
    dept = await department()
    manager = await as_role("manager", [uuid.UUID(dept["id"])])
    mailbox = (
        await admin.post(
            "/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]}
        )
    ).json()
    filed = (
        await manager.post("/v1/requests", {"kind": kind, "payload": {"mailbox_id": mailbox["id"]}})
    ).json()
    await admin.post(f"/v1/requests/{filed['id']}/approve")
    await run_worker()
    assert (await admin.get(f"/v1/requests/{filed['id']}")).json()["status"] == "completed"
    status = (await admin.get(f"/v1/mailboxes/{mailbox['id']}")).json()["status"]
    assert status == {"suspend_mailbox": "suspended", "delete_mailbox": "deleting"}[kind]


async def test_a_manager_cannot_file_for_another_department(as_role: Any, department: Any) -> None:
    mine, theirs = await department(), await department()
    manager = await as_role("manager", [uuid.UUID(mine["id"])])
    response = await manager.post(
        "/v1/requests",
        {
            "kind": "create_mailbox",
            "payload": {"address": address_in(theirs), "department_id": theirs["id"]},
        },
    )
    assert response.status_code == 403


async def test_a_request_with_a_bad_payload_is_422_naming_the_payload_field(
    as_role: Any, department: Any
) -> None:
    dept = await department()
    manager = await as_role("manager", [uuid.UUID(dept["id"])])
    response = await manager.post(
        "/v1/requests",
        {"kind": "create_mailbox", "payload": {"address": "nope", "department_id": dept["id"]}},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "payload.address"
    unknown = await manager.post("/v1/requests", {"kind": "make_coffee", "payload": {}})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "kind"


@pytest.mark.usefixtures("mail_stack")
async def test_a_created_mailboxs_pickup_token_is_shown_to_its_filer_and_approver_only_until_reset(
    as_role: Any, department: Any
) -> None:
    """Other readers of requests never see it; and a password reset makes a credential that
    is for whoever reset it, not for the request's people."""
    dept = await department()
    manager = await as_role("manager", [uuid.UUID(dept["id"])])
    operator = await as_role("operator")
    viewer = await as_role("viewer")
    other_operator = await as_role("operator")
    filed = await manager.post(
        "/v1/requests",
        {
            "kind": "create_mailbox",
            "payload": {"address": address_in(dept), "department_id": dept["id"]},
        },
    )
    request = f"/v1/requests/{filed.json()['id']}"
    await operator.post(f"{request}/approve")
    await run_worker()

    def token_of(answer: Any) -> Any:
        return (answer.json()["result"] or {}).get("credential")

    assert token_of(await manager.get(request)) is not None
    assert token_of(await operator.get(request)) is not None
    for reader in (viewer, other_operator):
        assert token_of(await reader.get(request)) is None
        listed = (await reader.get("/v1/requests")).json()
        assert all((r["result"] or {}).get("credential") is None for r in listed)
    mailbox_id = (await operator.get(request)).json()["result"]["mailbox_id"]
    reset = await other_operator.post(f"/v1/mailboxes/{mailbox_id}/reset-password")
    assert reset.status_code == 200, reset.text
    assert token_of(await manager.get(request)) is None
    assert token_of(await operator.get(request)) is None
