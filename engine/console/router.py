"""``/console``: every page module's router, the static files, the page a user without a page's
role gets (engine/console/refused.py), and ``/`` sending a browser to the console (it was a 404)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from engine.console import (
    pages_alerts,
    pages_audit,
    pages_auth,
    pages_dashboard,
    pages_documents,
    pages_messages,
    pages_reports,
    pages_routes,
    pages_users,
    pages_workbench,
    pages_worklist,
)
from engine.console.refused import install_refusal_page

__all__ = ["PAGES", "mount_console"]

STATIC = Path(__file__).parent / "static"

PAGES = (
    pages_auth,
    pages_dashboard,
    pages_routes,
    pages_messages,
    pages_workbench,
    pages_documents,
    pages_worklist,
    pages_reports,
    pages_alerts,
    pages_users,
    pages_audit,
)


def mount_console(app: FastAPI) -> None:
    """Add the console's pages under ``/console``, its static files and its 403 page to
    ``app``."""
    for page in PAGES:
        app.include_router(page.router, prefix="/console", include_in_schema=False)
    install_refusal_page(app)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=303)
