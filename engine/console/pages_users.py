"""The console: users (admin) — list them with roles, state and last login; add one, change
roles, set a password, disable or enable.

Every form carries the session's CSRF token (``CsrfDep``) and every change is audited with the
admin as the actor and ``console`` as the source (engine/store/users.py). An admin cannot disable
themself nor take their own admin role away, so a console is never left without its last admin
by a slip of the mouse (``engine users`` on the server can still do both). Users of an identity
provider (origin ``oidc``) get their roles from the provider at each login; they have no
password here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from engine.api.auth import Role
from engine.console.auth import AdminUserDep, ConsoleUser, CsrfDep
from engine.console.render import render
from engine.console.sessions import read_form_items, users_of
from engine.store.db import utcnow
from engine.store.operator import Who
from engine.store.users import (
    UserProblem,
    Users,
    hash_password,
    normal_username,
    password_problem,
)

__all__ = ["router"]

router = APIRouter()

ROLES = tuple(role.value for role in Role)
#: what a change reports back after its redirect (fixed words: the query cannot inject text)
DONE = {
    "added": "added",
    "roles": "roles changed",
    "password": "password set; their sessions ended",
    "disabled": "disabled; their sessions ended",
    "enabled": "enabled",
}

UserName = Annotated[str, Path(max_length=64)]


def _store(request: Request) -> Users:
    users = users_of(request)
    if users is None:
        raise HTTPException(503, detail="this engine has no user store")
    return users


def _who(user: ConsoleUser) -> Who:
    return Who(user.username, "console", user.peer)


async def _page(
    request: Request, user: ConsoleUser, *, error: str = "", status_code: int = 200
) -> HTMLResponse:
    users = _store(request)
    records = await run_in_threadpool(users.list_users)
    done = DONE.get(request.query_params.get("done", ""), "")
    return render(
        request,
        "users.html",
        user=user,
        status_code=status_code,
        users=records,
        roles=ROLES,
        now=utcnow(),
        done=done,
        done_user=request.query_params.get("user", "")[:64] if done else "",
        error=error,
    )


def _back(done: str, username: str) -> RedirectResponse:
    return RedirectResponse(
        "/console/users?" + urlencode({"done": done, "user": username}), status_code=303
    )


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, admin: AdminUserDep) -> HTMLResponse:
    """Every user, and the forms to change them."""
    return await _page(request, admin)


async def _roles_of(request: Request) -> list[str]:
    items = await read_form_items(request)
    return sorted({value for key, value in items if key == "role" and value in ROLES})


#: a change planned from its form: what to run (in a thread), what it did, to whom
_Plan = tuple[Callable[[], object], str, str]


def _refuse(problem: str | None) -> None:
    """A form the page answers 422 with ``problem`` (shown as it is)."""
    if problem:
        raise UserProblem(problem)


async def _apply(request: Request, admin: ConsoleUser, plan: Awaitable[_Plan]) -> Response:
    """Check the form and make the change (``plan``), then back to the list saying what was
    done; a refusal, the form's or the store's, is the page again with it (422)."""
    try:
        change, done, username = await plan
        await run_in_threadpool(change)
    except UserProblem as exc:
        return await _page(request, admin, error=str(exc), status_code=422)
    return _back(done, username.lower())


@router.post("/users")
async def add_user(request: Request, admin: AdminUserDep, _: CsrfDep) -> Response:
    """Add a local user with a password and roles."""

    async def plan() -> _Plan:
        users = _store(request)
        fields = dict(await read_form_items(request))
        roles = await _roles_of(request)
        name = normal_username(fields.get("username", ""))
        _refuse(password_problem(fields.get("password", "")))
        _refuse("" if roles else "choose at least one role")
        hashed = await run_in_threadpool(hash_password, fields["password"])
        return lambda: users.add_user(name, roles, _who(admin), password_hash=hashed), "added", name

    return await _apply(request, admin, plan())


@router.post("/users/{username}/roles")
async def change_roles(
    request: Request, username: UserName, admin: AdminUserDep, _: CsrfDep
) -> Response:
    """Replace a user's roles (not one's own admin role)."""

    async def plan() -> _Plan:
        name = normal_username(username)
        users = _store(request)
        roles = await _roles_of(request)
        _refuse("" if roles else "choose at least one role")
        if name == admin.username and Role.ADMIN.value not in roles:
            _refuse("you cannot take your own admin role away")
        return lambda: users.set_roles(name, roles, _who(admin), keep_admin=True), "roles", name

    return await _apply(request, admin, plan())


@router.post("/users/{username}/password")
async def set_password(
    request: Request, username: UserName, admin: AdminUserDep, _: CsrfDep
) -> Response:
    """Set a user's password (their sessions end)."""

    async def plan() -> _Plan:
        name = normal_username(username)
        users = _store(request)
        password = dict(await read_form_items(request)).get("password", "")
        _refuse(password_problem(password))
        hashed = await run_in_threadpool(hash_password, password)
        return lambda: users.set_password(name, hashed, _who(admin)), "password", name

    return await _apply(request, admin, plan())


@router.post("/users/{username}/disable")
async def disable_user(
    request: Request, username: UserName, admin: AdminUserDep, _: CsrfDep
) -> Response:
    """Disable a user: their sessions end now (not oneself)."""
    return await _apply(request, admin, _set_disabled(request, username, admin, disabled=True))


@router.post("/users/{username}/enable")
async def enable_user(
    request: Request, username: UserName, admin: AdminUserDep, _: CsrfDep
) -> Response:
    """Enable a user (a lock-out is lifted too)."""
    return await _apply(request, admin, _set_disabled(request, username, admin, disabled=False))


async def _set_disabled(
    request: Request, username: str, admin: ConsoleUser, *, disabled: bool
) -> _Plan:
    name = normal_username(username)
    users = _store(request)
    if disabled and name == admin.username:
        _refuse("you cannot disable yourself")
    who = _who(admin)
    if disabled:
        return lambda: users.set_disabled(name, True, who, keep_admin=True), "disabled", name
    return lambda: users.set_disabled(name, False, who), "enabled", name
