"""What the HTTP API needs of the rest of the engine: three Protocols.

The API never touches the store's tables or the queue: ``engine.service`` hands ``create_app``
objects that satisfy these ports (ingest, the store, a readiness probe), and the tests
hand it in-memory fakes (``tests/api/fakes.py``).

Messages are returned as the store's views (:mod:`engine.store.views`), which the API serialises
as they are: metadata only — ids, control IDs, types, states, destinations — never a payload, so
nothing the API lists can leak a message's content.
"""

from __future__ import annotations

from typing import Protocol

from engine.flow.ingest import Receipt
from engine.store import MessageView

__all__ = ["HealthPort", "IngestPort", "MessagesPort"]


class IngestPort(Protocol):
    """Receives messages arriving over HTTP (the same ingest MLLP uses)."""

    async def receive(self, raw: bytes, *, channel: str, peer: str) -> Receipt:
        """Store, parse and acknowledge an HL7v2 message; never raises for bad input.

        ``Receipt.state == "refused"`` means the store failed and ``Receipt.ack`` is a NAK.
        """
        ...

    async def receive_fhir(self, body: bytes, *, peer: str) -> Receipt:
        """Store a FHIR Bundle or resource (JSON); ``ack`` and ``ack_code`` are ``None``."""
        ...


class MessagesPort(Protocol):
    """Reads stored messages and replays them (synchronous: called from a worker thread).

    ``SqlMessageStore`` is one as it stands.
    """

    def list(self, *, state: str | None = None, limit: int = 100) -> list[MessageView]:
        """The newest messages first, optionally only those in ``state`` (no deliveries)."""
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
