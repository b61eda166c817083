"""``GET /metrics``: the engine's metrics for Prometheus (text exposition format 0.0.4).

Open by default, as exporters usually are (the labels hold no patient data); with
``ENGINE_AUTH_METRICS_REQUIRE_TOKEN=true`` a scraper needs a viewer token.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from engine.api.auth import Role, require
from engine.api.deps import MetricsDep
from engine.metrics import render_prometheus

__all__ = ["CONTENT_TYPE", "metrics_router"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_router(*, require_token: bool) -> APIRouter:
    """The ``/metrics`` route, behind a viewer token when ``require_token``."""
    router = APIRouter(dependencies=[Depends(require(Role.VIEWER))] if require_token else [])

    @router.get("/metrics", response_class=PlainTextResponse)
    def metrics(registry: MetricsDep) -> PlainTextResponse:
        """Every metric, rendered at scrape time.

        Sync on purpose: gauge callbacks (queue depth) may query the database, so FastAPI runs
        this in a worker thread rather than on the event loop.
        """
        return PlainTextResponse(render_prometheus(registry.registry), media_type=CONTENT_TYPE)

    return router
