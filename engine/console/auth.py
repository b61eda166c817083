"""Who is using the console, and may they? (the contract every page codes against)

A page takes ``user: ConsoleUserDep`` (any logged-in user) or ``Depends(require_console(role))``;
a form post takes ``CsrfDep`` as well. Not logged in (no session, an expired one, idle past
``ENGINE_CONSOLE_IDLE_MINUTES``): a page answers 303 to ``/console/login?next=...``; a request
for JSON (``Accept: application/json``) answers 401. Logged in without the role: 403, a page
saying which role is needed (engine/console/refused.py), or ``{"detail": "requires the X role"}``
for JSON.

Roles are the API's (:class:`engine.api.auth.Role`): admin (everything), integration, viewer
(routes, messages' metadata and payloads), front-desk (worklist, document upload and match).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from engine.api.auth import Role
from engine.console.user import ConsoleUser

__all__ = [
    "AdminUserDep",
    "ConsoleUser",
    "ConsoleUserDep",
    "CsrfDep",
    "check_csrf",
    "current_console_user",
    "require_console",
]


async def current_console_user(request: Request) -> ConsoleUser:
    """The logged-in user of this request (the session cookie), its idle clock reset.

    Implemented by ``engine.console.sessions`` (issue 13); tests of a page alone may override it
    with ``app.dependency_overrides[current_console_user]``.
    """
    from engine.console.sessions import session_user

    return await session_user(request)


def require_console(role: Role) -> Callable[..., Awaitable[ConsoleUser]]:
    """A dependency that lets through users holding ``role`` (or admin); 403 otherwise."""

    async def dependency(
        user: Annotated[ConsoleUser, Depends(current_console_user)],
    ) -> ConsoleUser:
        from engine.console.sessions import forbidden

        if not user.may(role):
            raise forbidden(role, user)
        return user

    return dependency


async def check_csrf(
    request: Request, user: Annotated[ConsoleUser, Depends(current_console_user)]
) -> ConsoleUser:
    """A state-changing request's CSRF token (form field ``csrf_token`` or header
    ``X-CSRF-Token``) must be the session's; 403 otherwise. Returns the user."""
    from engine.console.sessions import verify_csrf

    await verify_csrf(request, user)
    return user


ConsoleUserDep = Annotated[ConsoleUser, Depends(current_console_user)]
AdminUserDep = Annotated[ConsoleUser, Depends(require_console(Role.ADMIN))]
CsrfDep = Annotated[ConsoleUser, Depends(check_csrf)]
