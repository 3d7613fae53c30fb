"""The monitor API: health checks, incidents, inspections and maintenance."""

from fastapi import FastAPI

from shared.app import create_service_app


def create_app() -> FastAPI:
    return create_service_app(
        "monitor",
        title="mailops monitor",
        description="Real-protocol health checks, daily and weekly inspections, incidents "
        "and maintenance jobs, with endpoints for ops dashboards.",
        routers=[],
    )
