"""A logged-in user without the role a console page needs: a page in the console's layout.

:class:`~engine.console.sessions.RoleRequired` (403, raised by ``require_console`` and the pages'
own role checks) reaches the handler registered here. A browser asking for a page under
``/console`` (any request but a JSON client's, :func:`~engine.console.sessions.wants_json`) gets
``forbidden.html``: the role the page needs, the roles the user holds, and links to the pages
they may open (the navigation's). A JSON client, and anything outside ``/console``, gets
FastAPI's own answer as before, ``{"detail": "requires the X role"}``. The status is 403 either
way; nothing is audited here (the pages that audit a refusal have done so before raising).
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException

from engine.console.render import render
from engine.console.sessions import RoleRequired, wants_json

__all__ = ["install_refusal_page", "role_required"]

_CONSOLE = "/console"


async def role_required(request: Request, exc: Exception) -> Response:
    """The page for a browser under ``/console``; FastAPI's default answer for anything else."""
    path = request.url.path
    page = path == _CONSOLE or path.startswith(_CONSOLE + "/")
    if isinstance(exc, RoleRequired) and page and not wants_json(request):
        user = exc.user
        return render(
            request,
            "forbidden.html",
            user=user,
            status_code=exc.status_code,
            needed=exc.role.value,
            held=sorted(role.value for role in user.roles) if user is not None else [],
        )
    assert isinstance(exc, HTTPException)  # registered for RoleRequired, an HTTPException
    return await http_exception_handler(request, exc)


def install_refusal_page(app: FastAPI) -> None:
    """Answer ``RoleRequired`` with :func:`role_required` in ``app``."""
    app.add_exception_handler(RoleRequired, role_required)
