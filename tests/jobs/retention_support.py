"""What the retention tests share: the row of an old delivery that was delivered."""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["delivered"]


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
