"""Console sessions (issue 13; owner: the console-auth work). Placeholder until it lands:
nobody is logged in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from engine.api.auth import Role

if TYPE_CHECKING:
    from engine.console.auth import ConsoleUser

__all__ = ["forbidden", "session_user", "verify_csrf"]


async def session_user(request: Request) -> ConsoleUser:
    raise HTTPException(401, detail="log in first")


def forbidden(role: Role) -> HTTPException:
    return HTTPException(403, detail=f"requires the {role.value} role")


async def verify_csrf(request: Request, user: ConsoleUser) -> None:
    raise HTTPException(403, detail="CSRF token missing or wrong")
