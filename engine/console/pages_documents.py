"""The console: documents: upload, waiting for a patient, match (owner: front-office pages)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
