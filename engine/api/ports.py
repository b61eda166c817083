"""What the HTTP API needs of the rest of the engine: three Protocols and the views they return.

The API never touches the store's tables or the queue: ``engine.service`` hands ``create_app``
objects that satisfy these ports (the pipeline, the repository, a readiness probe), and the tests
hand it in-memory fakes (``tests/api/fakes.py``).

Views carry metadata only — ids, control IDs, types, states, destinations — never a payload, so
nothing the API lists can leak a message's content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from engine.flow.ingest import Receipt

__all__ = ["DeliveryView", "HealthPort", "IngestPort", "MessageView", "MessagesPort"]


@dataclass(frozen=True)
class DeliveryView:
    """One destination of one message, and how its delivery is going."""

    destination: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class MessageView:
    """One stored message's metadata and its deliveries (empty until routed)."""

    id: int
    received_at: datetime
    channel: str
    control_id: str | None
    message_type: str | None
    trigger: str | None
    state: str
    reason: str | None
    deliveries: list[DeliveryView] = field(default_factory=list)
    #: what the message carried that no mapping took, one line each
    warnings: list[str] = field(default_factory=list)


class IngestPort(Protocol):
    """Receives messages arriving over HTTP (the same pipeline MLLP uses)."""

    async def receive(self, raw: bytes, *, channel: str, peer: str) -> Receipt:
        """Store, parse and acknowledge an HL7v2 message; never raises for bad input.

        ``Receipt.state == "refused"`` means the store failed and ``Receipt.ack`` is a NAK.
        """
        ...

    async def receive_fhir(self, body: bytes, *, peer: str) -> Receipt:
        """Store a FHIR Bundle or resource (JSON); ``ack`` and ``ack_code`` are ``None``."""
        ...


class MessagesPort(Protocol):
    """Reads stored messages and replays them (synchronous: called from a worker thread)."""

    def list(self, *, state: str | None = None, limit: int = 100) -> list[MessageView]:
        """The newest messages first, optionally only those in ``state``."""
        ...

    def get(self, message_id: int) -> MessageView | None:
        """One message with its deliveries, or ``None``."""
        ...

    def replay(self, message_id: int) -> int:
        """Receive a stored message's bytes again as a new message; its id. KeyError if unknown."""
        ...


class HealthPort(Protocol):
    """Readiness: can the engine take messages now (store reachable, queue running)?"""

    def ready(self) -> bool: ...
