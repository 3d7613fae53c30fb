"""The backup API: backups, snapshots, restores and backup policies."""

from fastapi import FastAPI

from services.backup.endpoints import router
from shared.app import create_service_app


def create_app() -> FastAPI:
    return create_service_app(
        "backup",
        title="mailops backup",
        description="Incremental, deduplicated, encrypted backups of every mailbox over IMAP, "
        "and point-in-time restores.",
        routers=[router],
    )
