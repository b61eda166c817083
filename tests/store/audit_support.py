"""Audit records for the audit trail's tests: payload views, as the console and the API record."""

from __future__ import annotations

from engine.store import SqlMessageStore


def append_views(
    store: SqlMessageStore, n: int, detail: str = "read", patient_key: str | None = None
) -> None:
    """``n`` payload views by alice through the API, their details ``detail 0``, ``detail 1`` ..."""
    for i in range(n):
        store.record_audit(
            action="view-payload",
            actor="alice",
            source="api",
            message_id=None,
            outcome="ok",
            detail=f"{detail} {i}",
            patient_key=patient_key,
        )
