"""The FastAPI factory every service uses: errors, health, metrics, logging, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import install_error_handlers, openapi_header
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

# Set in the scope of a HEAD request served as a GET: see `is_head`.
_HEAD = "mailops.head"


def is_head(request: Request) -> bool:
    """Whether the request is a HEAD, served by its GET route: one whose body is costly to
    make (a streamed export) is then not made at all."""
    return bool(request.scope.get(_HEAD))


def located(status: int, what: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` declaring the Location header of a `status` answer (RFC 9110: a
    201's names the resource made, a 202's where to follow the work)."""
    header = openapi_header(what, format="uri-reference")
    return {status: {"description": HTTPStatus(status).phrase, "headers": {"Location": header}}}


class _HeadAsGet:
    """HEAD on every GET route (RFC 9110: a GET resource answers HEAD with the GET's status
    and headers, no body); FastAPI's routes take only the methods they name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET", _HEAD: True}, receive, without_body)


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
    app.add_middleware(_HeadAsGet)
    return app


def service_metrics(app: FastAPI) -> ServiceMetrics:
    metrics: ServiceMetrics = app.state.metrics
    return metrics
