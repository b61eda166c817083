"""What the engine shows of a stored message and its deliveries: one view type each.

The store returns these, the API's ports name them and the API serialises them as they are (FastAPI
turns a dataclass into JSON field by field), as does the CLI: nothing copies them into another
type. They carry metadata only — ids, control IDs, types, states, destinations — never a payload,
so nothing listed or shown can leak a message's content.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["DeliveryView", "MessageSummary", "MessageView"]


@dataclass(frozen=True)
class DeliveryView:
    """One destination of one message, and how its delivery is going."""

    destination: str
    #: waiting (behind an earlier one for the same patient), pending, delivered, dead
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class MessageSummary:
    """A stored message as one line of the message list: what it is and where it stands."""

    id: int
    received_at: datetime
    channel: str
    control_id: str | None
    message_type: str | None
    trigger: str | None
    state: str


@dataclass(frozen=True)
class MessageView(MessageSummary):
    """One stored message's metadata: its summary, the reason for its state, its deliveries
    and what no mapping took.

    ``deliveries`` is filled for one message (``get``) and left empty in a list (``list``),
    whose lines do not show them.
    """

    reason: str | None
    deliveries: tuple[DeliveryView, ...] = ()
    #: what the message carried that no mapping took, one line each (``PID: not mapped: PID-9``)
    warnings: tuple[str, ...] = ()
