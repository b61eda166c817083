"""The console: logging in and out (local users; OpenID Connect in engine/console/oidc.py when a
provider is configured).

``GET /console/login`` shows the form with a pre-session CSRF token (its signed cookie
``engine_login``); ``POST /console/login`` checks the token, then the password
(engine/store/users.py: lock-out, audit), and answers every refusal with the same words, so the
form does not tell whether a user exists, is disabled or locked. A login makes a new session
(a session id the browser held before is ended: no fixation) and sends the browser to ``next``
when that is a path on this site, else to ``/console/``. ``POST /console/logout`` (CSRF) ends the
session, audited.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from engine.api.deps import peer_of
from engine.console.auth import CsrfDep
from engine.console.render import render
from engine.console.sessions import (
    check_login_token,
    end_session,
    login_policy,
    login_token,
    read_small_form,
    safe_next,
    set_login_cookie,
    settings_of,
    start_session,
    users_of,
)
from engine.store.db import utcnow

__all__ = ["REFUSED", "router"]

router = APIRouter()

#: one answer for an unknown user, a wrong password, a locked or disabled account
REFUSED = "Wrong user name or password, or the account is locked for now."
#: a login form is a few short fields
_LOGIN_FORM_BYTES = 8 * 1024


def _login_page(
    request: Request,
    *,
    next_path: str,
    error: str = "",
    username: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    token, cookie = login_token(request)
    response = render(
        request,
        "login.html",
        user=None,
        status_code=status_code,
        csrf_token=token,
        next=next_path,
        error=error,
        username=username,
        oidc=getattr(request.app.state, "oidc_name", None),
    )
    set_login_cookie(request, response, cookie)
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    """The login form."""
    return _login_page(request, next_path=safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the form's token and the password; a new session and off to ``next``."""
    form = await read_small_form(request, _LOGIN_FORM_BYTES)
    next_path = safe_next(form.get("next"))
    users = users_of(request)
    if users is None:
        return _login_page(
            request,
            next_path=next_path,
            error="This engine has no user store: logging in is not possible.",
            status_code=503,
        )
    username = form.get("username", "").strip()[:64]
    if not check_login_token(request, form.get("csrf_token")):
        return _login_page(
            request,
            next_path=next_path,
            username=username,
            error="The login form had expired. Please log in again.",
            status_code=403,
        )
    settings = settings_of(request)
    result = await run_in_threadpool(
        users.check_login,
        username,
        form.get("password", ""),
        peer_of(request),
        login_policy(settings),
    )
    if result.user is None:
        return _login_page(
            request, next_path=next_path, username=username, error=REFUSED, status_code=401
        )
    response = RedirectResponse(next_path, status_code=303)
    await start_session(request, response, result.user, method="password")
    idle = timedelta(minutes=settings.console_idle_minutes)
    # sessions nobody came back to end here (audited), so the table does not grow
    await run_in_threadpool(users.sweep_sessions, utcnow(), idle)
    return response


@router.post("/logout")
async def logout(request: Request, user: CsrfDep) -> Response:
    """End the session; back to the login form."""
    response = RedirectResponse("/console/login", status_code=303)
    await end_session(request, response, user)
    return response
