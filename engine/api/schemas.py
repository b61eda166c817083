"""Response bodies of the HTTP API, named by role. Metadata only: no payload ever leaves here."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from engine.api.ports import DeliveryView, MessageView

__all__ = ["Accepted", "DeliveryPublic", "MessageDetail", "MessageSummary", "ReplayAccepted"]


class Accepted(BaseModel):
    """A message was stored under this id."""

    message_id: int


class ReplayAccepted(BaseModel):
    """A stored message was received again as a new message."""

    message_id: int
    replay_of: int


class DeliveryPublic(BaseModel):
    destination: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None

    @classmethod
    def of(cls, view: DeliveryView) -> DeliveryPublic:
        return cls(
            destination=view.destination,
            state=view.state,
            attempts=view.attempts,
            last_error=view.last_error,
            delivered_at=view.delivered_at,
        )


class MessageSummary(BaseModel):
    """One line of the message list."""

    id: int
    received_at: datetime
    channel: str
    control_id: str | None
    message_type: str | None
    trigger: str | None
    state: str

    @classmethod
    def of(cls, view: MessageView) -> MessageSummary:
        return cls(
            id=view.id,
            received_at=view.received_at,
            channel=view.channel,
            control_id=view.control_id,
            message_type=view.message_type,
            trigger=view.trigger,
            state=view.state,
        )


class MessageDetail(MessageSummary):
    """One message with the reason for its state and its deliveries."""

    reason: str | None
    deliveries: list[DeliveryPublic]
    #: what the message carried that no mapping took (``PID: not mapped: PID-9``)
    warnings: list[str] = []

    @classmethod
    def of(cls, view: MessageView) -> MessageDetail:
        return cls(
            **MessageSummary.of(view).model_dump(),
            reason=view.reason,
            deliveries=[DeliveryPublic.of(d) for d in view.deliveries],
            warnings=view.warnings,
        )
