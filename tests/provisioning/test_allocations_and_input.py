"""Department allocations hold under concurrency; bad input gets a clear 4xx, never a 500."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.conftest import run_worker
from tests.provisioning.conftest import Api, address_in


async def test_fifty_parallel_creates_against_room_for_ten_give_exactly_ten(
    admin: Api, department: Any
) -> None:
    dept = await department(max_mailboxes=10)
    responses = await asyncio.gather(
        *(
            admin.post("/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]})
            for _ in range(50)
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * 10 + [409] * 40
    refusals = [r.json() for r in responses if r.status_code == 409]
    assert {p["code"] for p in refusals} == {"department_full"}
    usage = (await admin.get(f"/v1/departments/{dept['id']}")).json()["usage"]
    assert usage["mailboxes"] == 10


async def test_quota_beyond_the_department_room_is_refused_naming_the_field(
    admin: Api, department: Any
) -> None:
    dept = await department(capacity_bytes=3 * 2**30, default_quota_bytes=2**30)
    ok = await admin.post(
        "/v1/mailboxes",
        {"address": address_in(dept), "department_id": dept["id"], "quota_bytes": 2 * 2**30},
    )
    assert ok.status_code == 201
    over = await admin.post(
        "/v1/mailboxes",
        {"address": address_in(dept), "department_id": dept["id"], "quota_bytes": 2 * 2**30},
    )
    assert over.status_code == 422
    assert over.json()["code"] == "quota_exceeds_allocation"
    assert over.json()["errors"][0]["field"] == "quota_bytes"
    usage = (await admin.get(f"/v1/departments/{dept['id']}")).json()["usage"]
    assert usage == {"allocated_bytes": 2 * 2**30, "mailboxes": 1}


async def test_raising_a_quota_past_the_room_is_refused(admin: Api, department: Any) -> None:
    dept = await department(capacity_bytes=2 * 2**30, default_quota_bytes=2**30)
    mailbox = (
        await admin.post(
            "/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]}
        )
    ).json()
    response = await admin.patch(f"/v1/mailboxes/{mailbox['id']}", {"quota_bytes": 3 * 2**30})
    assert response.status_code == 422
    fits = await admin.patch(f"/v1/mailboxes/{mailbox['id']}", {"quota_bytes": 2 * 2**30})
    assert fits.status_code == 200 and fits.json()["quota_bytes"] == 2 * 2**30


async def test_a_department_cannot_shrink_below_what_it_has_allocated(
    admin: Api, department: Any
) -> None:
    dept = await department(capacity_bytes=4 * 2**30, default_quota_bytes=2**30)
    await admin.post("/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]})
    response = await admin.patch(f"/v1/departments/{dept['id']}", {"capacity_bytes": 2**29})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "capacity_bytes"


async def test_same_idempotency_key_and_body_give_the_same_mailbox_once(
    admin: Api, department: Any
) -> None:
    dept = await department()
    body = {"address": address_in(dept), "department_id": dept["id"]}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first, second = await asyncio.gather(
        admin.post("/v1/mailboxes", body, headers=key),
        admin.post("/v1/mailboxes", body, headers=key),
    )
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["credential"] == second.json()["credential"]
    other = await admin.post("/v1/mailboxes", {**body, "display_name": "Someone else"}, headers=key)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    usage = (await admin.get(f"/v1/departments/{dept['id']}")).json()["usage"]
    assert usage["mailboxes"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": "not-an-address"}, "address"),
        ({"address": "two@@x.test"}, "address"),
        ({"address": "user@unknown-domain.test"}, "address"),
        ({"quota_bytes": 0}, "quota_bytes"),
        ({"quota_bytes": -5}, "quota_bytes"),
        ({"quota_bytes": "lots"}, "quota_bytes"),
        ({"department_id": "not-a-uuid"}, "department_id"),
        ({"department_id": str(uuid.uuid4())}, "department_id"),
        ({"display_name": 42}, "display_name"),
        ({"unexpected": True}, "unexpected"),
    ],
)
async def test_bad_mailbox_input_is_a_422_problem_naming_the_field(
    admin: Api, department: Any, body: dict[str, Any], field: str
) -> None:
    dept = await department()
    full = {"address": address_in(dept), "department_id": dept["id"], **body}
    response = await admin.post("/v1/mailboxes", full)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == field


async def test_a_duplicate_address_is_409(admin: Api, department: Any) -> None:
    dept = await department()
    body = {"address": address_in(dept), "department_id": dept["id"]}
    assert (await admin.post("/v1/mailboxes", body)).status_code == 201
    again = await admin.post("/v1/mailboxes", {**body, "address": body["address"].upper()})
    assert again.status_code == 409
    assert again.json()["errors"][0]["field"] == "address"


async def test_an_internationalised_address_is_accepted(admin: Api) -> None:
    domain = f"bücher-{uuid.uuid4().hex[:6]}.test"
    assert (await admin.post("/v1/domains", {"name": domain})).status_code == 201
    dept = (
        await admin.post(
            "/v1/departments",
            {
                "name": f"intl-{uuid.uuid4().hex[:6]}",
                "domain": domain,
                "capacity_bytes": 2**31,
                "max_mailboxes": 5,
                "default_quota_bytes": 2**30,
            },
        )
    ).json()
    response = await admin.post(
        "/v1/mailboxes", {"address": f"jürgen@{domain}", "department_id": dept["id"]}
    )
    assert response.status_code == 201, response.text
    assert response.json()["address"] == f"jürgen@{domain}"
    await run_worker()
    mailbox = (await admin.get(f"/v1/mailboxes/{response.json()['id']}")).json()
    assert mailbox["status"] == "active", mailbox


async def test_a_body_that_is_not_json_is_400_not_500(admin: Api) -> None:
    response = await admin.client.post(
        "/v1/mailboxes",
        content=b"address=x",
        headers={"Authorization": f"Bearer {admin.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "body"


@pytest.mark.parametrize(
    ("default_quota_bytes", "field"),
    [(1, "domain"), (11, "default_quota_bytes")],
    ids=["a department in an unknown domain", "a default quota over the capacity"],
)
async def test_a_department_that_cannot_be_is_422_naming_the_field(
    admin: Api, default_quota_bytes: int, field: str
) -> None:
    response = await admin.post(
        "/v1/departments",
        {
            "name": "x",
            "domain": "nowhere.test",
            "capacity_bytes": 10,
            "max_mailboxes": 1,
            "default_quota_bytes": default_quota_bytes,
        },
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


async def test_a_domain_in_use_cannot_be_deleted(admin: Api, department: Any) -> None:
    dept = await department()
    domain = next(d for d in (await admin.get("/v1/domains")).json() if d["name"] == dept["domain"])
    response = await admin.delete(f"/v1/domains/{domain['id']}")
    assert response.status_code == 409
    assert response.json()["code"] == "domain_in_use"


async def test_mailbox_listing_pages_with_a_cursor_and_filters(admin: Api, department: Any) -> None:
    dept = await department()
    created = [
        (
            await admin.post(
                "/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]}
            )
        ).json()["id"]
        for _ in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"department_id": dept["id"], "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await admin.get("/v1/mailboxes", params=params)).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == created
    bad = await admin.get("/v1/mailboxes", params={"cursor": "garbage"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"


class TestConfidentialMailStaysInside:
    """The seed forbids forwarding confidential mail outside the company."""

    async def test_forwarding_outside_is_refused(self, admin: Api, department: Any) -> None:
        dept = await department(confidential=True, external_forwarding=True)
        mailbox = (
            await admin.post(
                "/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]}
            )
        ).json()
        response = await admin.put(
            f"/v1/mailboxes/{mailbox['id']}/forwarding",
            {"targets": ["me@gmail.example.com"], "keep_copy": True},
        )
        assert response.status_code == 422
        problem = response.json()
        assert problem["code"] == "external_forwarding_forbidden"
        assert problem["errors"][0]["field"] == "targets[0]"
        assert "confidential" in problem["detail"]

    async def test_forwarding_inside_the_company_is_fine(self, admin: Api, department: Any) -> None:
        dept = await department(confidential=True)
        mailbox = (
            await admin.post(
                "/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]}
            )
        ).json()
        response = await admin.put(
            f"/v1/mailboxes/{mailbox['id']}/forwarding",
            {"targets": [address_in(dept)], "keep_copy": False},
        )
        assert response.status_code == 200

    async def test_an_alias_with_an_outside_target_is_refused_without_a_permitting_department(
        self, admin: Api, department: Any
    ) -> None:
        dept = await department(external_forwarding=False)
        response = await admin.post(
            "/v1/aliases",
            {
                "address": address_in(dept),
                "targets": ["x@elsewhere.example.com"],
                "department_id": dept["id"],
            },
        )
        assert response.status_code == 422
        open_dept = await department(external_forwarding=True)
        allowed = await admin.post(
            "/v1/aliases",
            {
                "address": address_in(open_dept),
                "targets": ["x@elsewhere.example.com"],
                "department_id": open_dept["id"],
            },
        )
        assert allowed.status_code == 201

    @pytest.mark.usefixtures("mail_stack")
    async def test_a_sieve_redirect_outside_is_refused(self, admin: Api, department: Any) -> None:
        dept = await department(external_forwarding=False)
        mailbox = (
            await admin.post(
                "/v1/mailboxes", {"address": address_in(dept), "department_id": dept["id"]}
            )
        ).json()
        response = await admin.put(
            f"/v1/mailboxes/{mailbox['id']}/rules",
            {"script": 'redirect :copy "leak@rival.example.com";\n'},
        )
        assert response.status_code == 422
        assert response.json()["code"] == "external_forwarding_forbidden"
        assert response.json()["errors"][0]["field"] == "script.redirect[0]"
