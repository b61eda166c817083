"""Response bodies of the HTTP API, named by role. Metadata only: no payload ever leaves here.

A message is answered with the store's own views (``MessageSummary`` in a list, ``MessageView``
for one), serialised as they are; these are the bodies that have no view of their own, and the
one request body of the messages endpoints (``HandledNote``).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from engine.store import ResendOutcome
from engine.store.handled import Handled

__all__ = [
    "Accepted",
    "HandledMark",
    "HandledNote",
    "ReplayAccepted",
    "ResendAccepted",
    "ResentDelivery",
]


class Accepted(BaseModel):
    """A message was stored under this id."""

    message_id: int


class ReplayAccepted(BaseModel):
    """A stored message was received again as a new message."""

    message_id: int
    replay_of: int


class ResentDelivery(BaseModel):
    """One delivery queued again: its destination, its id, and the delivery it replaces."""

    destination: str
    delivery_id: int
    resend_of: int


class ResendAccepted(BaseModel):
    """A resend: the deliveries queued again, or none and why (``note``)."""

    message_id: int
    queued: list[ResentDelivery]
    note: str

    @classmethod
    def of(cls, outcome: ResendOutcome) -> ResendAccepted:
        return cls(
            message_id=outcome.message_id,
            queued=[
                ResentDelivery(destination=d, delivery_id=i, resend_of=o)
                for d, i, o in outcome.queued
            ],
            note=outcome.note,
        )


class HandledNote(BaseModel):
    """A "mark handled": what the operator did, if they say (at most 500 characters, as the
    console's form)."""

    note: str | None = Field(default=None, max_length=500)


class HandledMark(BaseModel):
    """A message marked handled: when, by whom (the token's subject), and the note."""

    message_id: int
    handled_at: datetime
    handled_by: str
    note: str | None

    @classmethod
    def of(cls, mark: Handled) -> HandledMark:
        return cls(
            message_id=mark.message_id,
            handled_at=mark.handled_at,
            handled_by=mark.handled_by,
            note=mark.note,
        )
