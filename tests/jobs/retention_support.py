"""What the retention tests share: the row of an old delivery that was delivered, and a
document's row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["delivered", "document_row"]


def delivered(message_id: int, at: datetime) -> dict[str, Any]:
    """A ``deliveries`` row for the message, delivered at ``at``."""
    return {
        "message_id": message_id,
        "destination": "fhir",
        "route": "all",
        "kind": "hl7v2",
        "content_type": "x-application/hl7-v2+er7",
        "payload": b"x",
        "patient_key": "",
        "state": "delivered",
        "attempts": 1,
        "next_attempt_at": at,
        "created_at": at,
    }


def document_row(message_id: int, at: datetime) -> dict[str, Any]:
    """A ``documents`` row for the message, received at ``at``, its bytes not stored (nothing
    reads them: a row whose id counts)."""
    return {
        "received_at": at,
        "message_id": message_id,
        "sha256": "0" * 64,
        "size": 1,
        "media_type": "application/pdf",
        "patient_mrn": "MRN1",
        "document_type": "scan",
        "document_date": "2026-10-01",
        "channel": "folder",
        "sender": "test",
        "dedupe_key": f"row|{message_id}",
        "updated_at": at,
    }
