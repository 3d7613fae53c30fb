"""The monitor API: health checks, incidents, inspections and maintenance."""

from fastapi import FastAPI, Request, Response
from starlette.middleware.base import RequestResponseEndpoint

from services.monitor.checks import check_intervals
from services.monitor.endpoints import router
from services.monitor.metrics import CheckMetrics
from shared.app import create_service_app, service_metrics
from shared.settings import get_settings


def create_app() -> FastAPI:
    check_intervals(get_settings())  # a misnamed check in the settings stops the start here
    app = create_service_app(
        "monitor",
        title="mailops monitor",
        description="Real-protocol health checks, daily and weekly inspections, incidents "
        "and maintenance jobs, with endpoints for ops dashboards.",
        routers=[router],
    )
    checks = CheckMetrics(get_settings().monitor_metrics_cache_seconds)
    service_metrics(app).registry.register(checks)
    app.state.check_metrics = checks

    @app.middleware("http")
    async def refresh_check_metrics(
        request: Request, call_next: RequestResponseEndpoint
    ) -> Response:
        # The collector is synchronous: read the latest results before the scrape runs it.
        if request.url.path == "/metrics":
            await checks.refresh()
        return await call_next(request)

    return app
