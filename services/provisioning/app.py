"""The provisioning API: domains, departments, mailboxes, credentials, rules and requests."""

from fastapi import FastAPI

from services.provisioning.endpoints import router
from shared.app import create_service_app


def create_app() -> FastAPI:
    return create_service_app(
        "provisioning",
        title="mailops provisioning",
        description="Accounts, departments, quotas, permissions, mail rules and the "
        "configuration request workflow.",
        routers=[router],
    )
