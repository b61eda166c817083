"""``create_app``: the FastAPI application, built from Settings and the running parts."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from engine import __version__
from engine.settings import Settings
from engine.store.repository import SqlMessageStore

__all__ = ["create_app"]


def create_app(settings: Settings, store: SqlMessageStore) -> FastAPI:
    """The HTTP side of the engine. Health endpoints are open; everything else will need a token."""
    app = FastAPI(title="engine", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: the process is up."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: the message store answers."""
        try:
            ok = store.ping()
        except Exception:  # any database failure means not ready
            ok = False
        return JSONResponse(
            {"status": "ready" if ok else "unavailable", "store": "ok" if ok else "down"},
            status_code=200 if ok else 503,
        )

    return app
