"""Response bodies of the HTTP API, named by role. Metadata only: no payload ever leaves here.

A message is answered with the store's own views (``MessageSummary`` in a list, ``MessageView``
for one), serialised as they are; these are the bodies that have no view of their own.
"""

from __future__ import annotations

from pydantic import BaseModel

from engine.store import ResendOutcome

__all__ = ["Accepted", "ReplayAccepted", "ResendAccepted", "ResentDelivery"]


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
