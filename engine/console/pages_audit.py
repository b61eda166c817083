"""The console: the audit trail (admin; owner: audit)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
