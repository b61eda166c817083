"""The console: login, logout, OpenID Connect callback (owner: console-auth)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
