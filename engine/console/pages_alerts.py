"""The console: alert rules and alerts raised (owner: alerts)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
