"""API keys authenticate callers by role; every error is problem+json naming the field."""

from __future__ import annotations

import logging

import httpx
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from shared.app import create_service_app
from shared.auth import CurrentPrincipal, Principal, require
from shared.logging import JsonFormatter, configure_logging
from shared.models import Role

router = APIRouter()


class Body(BaseModel):
    quota_bytes: int = Field(gt=0)


@router.get("/whoami")
async def whoami(principal: CurrentPrincipal) -> dict[str, str]:
    return {"name": principal.name, "role": principal.role.value}


@router.post("/operators-only")
async def operators_only(
    body: Body, principal: Principal = Depends(require(Role.OPERATOR))
) -> dict[str, int]:
    return {"quota_bytes": body.quota_bytes}


def _client() -> httpx.AsyncClient:
    app = create_service_app("provisioning", title="t", description="t", routers=[router])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_request_without_a_key_is_401_problem_json() -> None:
    async with _client() as client:
        response = await client.get("/whoami")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "unauthorized"


async def test_unknown_key_is_401(api_key_for) -> None:
    async with _client() as client:
        response = await client.get("/whoami", headers={"Authorization": "Bearer mo_nope"})
    assert response.status_code == 401


async def test_a_valid_key_identifies_its_role(api_key_for) -> None:
    key = await api_key_for("viewer")
    async with _client() as client:
        response = await client.get("/whoami", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json()["role"] == "viewer"


async def test_wrong_role_is_403_and_admin_is_always_allowed(api_key_for) -> None:
    viewer, admin = await api_key_for("viewer"), await api_key_for("admin")
    async with _client() as client:
        denied = await client.post(
            "/operators-only",
            json={"quota_bytes": 1},
            headers={"Authorization": f"Bearer {viewer}"},
        )
        allowed = await client.post(
            "/operators-only", json={"quota_bytes": 1}, headers={"Authorization": f"Bearer {admin}"}
        )
    assert denied.status_code == 403
    assert denied.json()["code"] == "forbidden"
    assert allowed.status_code == 200


async def test_invalid_body_is_422_naming_the_field_and_a_body_not_json_400(api_key_for) -> None:
    key = await api_key_for("operator")
    async with _client() as client:
        wrong_value = await client.post(
            "/operators-only", json={"quota_bytes": 0}, headers={"Authorization": f"Bearer {key}"}
        )
        wrong_type = await client.post(
            "/operators-only",
            json={"quota_bytes": "lots"},
            headers={"Authorization": f"Bearer {key}"},
        )
        not_json = await client.post(
            "/operators-only",
            content=b"{oops",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
    for response in (wrong_value, wrong_type):
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == "quota_bytes"
    assert not_json.status_code == 400
    assert not_json.headers["content-type"] == "application/problem+json"
    assert (not_json.json()["code"], not_json.json()["errors"][0]["field"]) == (
        "malformed_json",
        "body",
    )


async def test_api_keys_are_stored_only_as_hashes(api_key_for, db_session) -> None:
    from sqlalchemy import text

    key = await api_key_for("support")
    rows = (await db_session.execute(text("SELECT * FROM api_keys"))).all()
    assert all(key not in str(tuple(row)) for row in rows)


def test_logs_never_show_passwords_keys_or_bodies() -> None:
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "auth header was Bearer mo_secretkey", None, None
    )
    record.password = "hunter2"
    record.payload = {"api_key": "mo_abc", "body": "Dear Bob", "address": "a@b.test"}
    line = JsonFormatter().format(record)
    for secret in ("hunter2", "mo_secretkey", "mo_abc", "Dear Bob"):
        assert secret not in line
    assert "a@b.test" in line


def test_even_at_debug_the_libraries_that_log_urls_and_logins_stay_quiet() -> None:
    """httpx logs each request's URL (a webhook's secret), aioimaplib each command (LOGIN's
    password, hidden by it only when it needs no quoting)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("DEBUG")
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert not logging.getLogger("aioimaplib.aioimaplib").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], root.level = handlers, level


def test_production_refuses_placeholder_and_short_secrets() -> None:
    import pytest
    from pydantic import ValidationError

    from shared.settings import Settings

    strong = {"master_password": "m" * 32, "credential_secret": "c" * 32, "backup_key": "b" * 64}
    for name, weak in (
        ("master_password", "mailops-dev-master-password"),
        ("credential_secret", "short"),
        ("backup_key", "mailops-dev-backup-key"),
        ("backup_key", "x" * 31),  # HKDF does not stretch it: the key is all the secret
        ("backup_previous_keys", {"k0": "short"}),
    ):
        with pytest.raises(ValidationError, match=name.upper()):
            Settings(environment="production", **{**strong, name: weak})
    Settings(environment="production", **strong, backup_previous_keys={"k0": "p" * 32})


def test_a_previous_backup_key_may_not_share_the_current_keys_id() -> None:
    import pytest
    from pydantic import ValidationError

    from shared.settings import Settings

    with pytest.raises(ValidationError, match="names the current key id 'k2'"):
        Settings(backup_key_id="k2", backup_previous_keys={"k2": "old secret"})
    with pytest.raises(ValidationError, match="backup_previous_keys"):
        Settings(backup_key_id="k2", backup_previous_keys={"k 1": "old secret"})
    kept = Settings(backup_key_id="k2", backup_previous_keys={"k1": "old secret"})
    assert kept.backup_previous_keys["k1"].get_secret_value() == "old secret"
