"""``GET /metrics``: the engine's metrics for Prometheus (text exposition format 0.0.4).

Open by default, as exporters usually are (the labels hold no patient data); with
``ENGINE_AUTH_METRICS_REQUIRE_TOKEN=true`` a scraper needs a viewer token.

The page is prometheus_client's ``generate_latest``, sent as ``text/plain; version=0.0.4``: what
prometheus_client itself answers a scraper that asks for nothing else, and what the engine sent
before (its ``CONTENT_TYPE_LATEST`` names version 1.0.0, which differs only for names outside
``[a-zA-Z0-9_:]``, and the engine has none).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from engine.api.auth import Role, require
from engine.api.deps import MetricsDep

__all__ = ["metrics_router"]


def metrics_router(*, require_token: bool) -> APIRouter:
    """The ``/metrics`` route, behind a viewer token when ``require_token``."""
    router = APIRouter(dependencies=[Depends(require(Role.VIEWER))] if require_token else [])

    @router.get("/metrics", response_class=Response)
    def metrics(engine_metrics: MetricsDep) -> Response:
        """Every metric, collected at scrape time.

        Sync on purpose: the queue gauges query the database and the worker processes' files
        are read, so FastAPI runs this in a worker thread rather than on the event loop.
        """
        return Response(engine_metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return router
