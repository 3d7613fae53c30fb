"""The FastAPI factory every service uses: errors, health, metrics, logging, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from shared.errors import install_error_handlers
from shared.logging import configure_logging
from shared.observability import (
    ReadinessCheck,
    ServiceMetrics,
    database_ready,
    install_observability,
    redis_ready,
)
from shared.queue import close_pool
from shared.settings import get_settings


def create_service_app(
    service: str,
    *,
    title: str,
    description: str,
    routers: Sequence[APIRouter] = (),
    readiness: dict[str, ReadinessCheck] | None = None,
) -> FastAPI:
    """A service's app with the platform's conventions already in place."""
    settings = get_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await close_pool()

    app = FastAPI(title=title, description=description, version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    checks: dict[str, ReadinessCheck] = {"postgresql": database_ready, "redis": redis_ready}
    checks.update(readiness or {})
    app.state.metrics = install_observability(app, service, checks)
    for router in routers:
        app.include_router(router)
    return app


def service_metrics(app: FastAPI) -> ServiceMetrics:
    metrics: ServiceMetrics = app.state.metrics
    return metrics
