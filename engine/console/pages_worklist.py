"""The console: the front desk's eligibility worklist (owner: front-office pages)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
