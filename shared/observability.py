"""Health (`/livez`, `/readyz`) and Prometheus metrics (`/metrics`) for every service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy import text
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from shared.db import get_engine
from shared.queue import get_pool

HEALTH_JSON = "application/health+json"


class HealthResponse(JSONResponse):
    """A health document (draft-inadarei-api-health-check), documented under its own type."""

    media_type = HEALTH_JSON


READINESS_TIMEOUT_SECONDS = 2.0

ReadinessCheck = Callable[[], Awaitable[None]]


async def database_ready() -> None:
    async with get_engine().connect() as connection:
        await connection.execute(text("SELECT 1"))


async def redis_ready() -> None:
    pool = await get_pool()
    await pool.ping()


async def _run_check(check: ReadinessCheck) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), READINESS_TIMEOUT_SECONDS)
        outcome: dict[str, Any] = {"status": "pass"}
    except Exception as exc:
        outcome = {"status": "fail", "output": f"{type(exc).__name__}: {exc}"[:300]}
    outcome["observedValue"] = round(time.perf_counter() - started, 4)
    outcome["observedUnit"] = "s"
    return outcome


class ServiceMetrics:
    """The HTTP metrics of one service, in a registry of its own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mailops_http_requests",
            "HTTP requests served",
            ["service", "method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mailops_http_request_duration_seconds",
            "Time to serve an HTTP request",
            ["service", "method", "route"],
            registry=self.registry,
        )


class _MetricsMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # The route template, not the path: ids in paths would explode label cardinality.
        route = getattr(request.scope.get("route"), "path", "unmatched")
        labels = (self.metrics.service, request.method, route)
        self.metrics.requests.labels(*labels, str(response.status_code)).inc()
        self.metrics.duration.labels(*labels).observe(time.perf_counter() - started)
        return response


def install_observability(
    app: FastAPI, service: str, readiness: dict[str, ReadinessCheck]
) -> ServiceMetrics:
    """Add `/livez`, `/readyz` and `/metrics` to the app; return its metrics registry."""
    metrics = ServiceMetrics(service)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    router = APIRouter(tags=["operations"])

    @router.get("/livez", summary="The process is alive", response_class=HealthResponse)
    async def livez() -> HealthResponse:
        return HealthResponse({"status": "pass", "serviceId": f"mailops-{service}"})

    @router.get(
        "/readyz",
        summary="The service can reach its database and queue",
        response_class=HealthResponse,
        responses={503: {"description": "A dependency is down", "content": {HEALTH_JSON: {}}}},
    )
    async def readyz() -> HealthResponse:
        names = list(readiness)
        results = await asyncio.gather(*(_run_check(readiness[n]) for n in names))
        checks = {
            f"{name}:responseTime": [result] for name, result in zip(names, results, strict=True)
        }
        ok = all(r["status"] == "pass" for r in results)
        body = {
            "status": "pass" if ok else "fail",
            "serviceId": f"mailops-{service}",
            "checks": checks,
        }
        return HealthResponse(body, status_code=200 if ok else 503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
    return metrics
