"""What the HTTP API needs of the rest of the engine: three Protocols.

The API never touches the store's tables or the queue: ``engine.service`` hands ``create_app``
objects that satisfy these ports (ingest, the store, a readiness probe), and the tests
hand it in-memory fakes (``tests/api/fakes.py``).

Messages are returned as the store's views (:mod:`engine.store.views`), which the API serialises
as they are: metadata only — ids, control IDs, types, states, destinations — never a payload, so
nothing the API lists can leak a message's content. The one payload the API hands out is
``raw``, read on purpose by one endpoint that records each read in the audit trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from engine.flow.ingest import Receipt
from engine.store import MessageLine, MessageQuery, MessageView, Replayed, ResendOutcome, Who
from engine.store.handled import Handled

__all__ = ["AuditPort", "HealthPort", "IngestPort", "MessagesPort"]


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


class AuditPort(Protocol):
    """Recording in the audit trail what an endpoint did or refused (messages and documents)."""

    def record_audit(
        self,
        *,
        action: str,
        actor: str,
        source: str,
        message_id: int | None,
        outcome: str,
        detail: str | None = None,
        peer: str | None = None,
        patient_key: str | None = None,
        patients: Sequence[str | None] = (),
        messages_shown: Sequence[int] = (),
    ) -> None:
        """Record an action in the audit trail (a payload read, a refusal); a view of several
        patients once per patient (``patients``, or those of ``messages_shown``)."""
        ...


class MessagesPort(AuditPort, Protocol):
    """Finds stored messages, replays them, resends their deliveries, marks them handled, and
    records who did (synchronous: called from a worker thread). ``SqlMessageStore`` is one as it
    stands.
    """

    def search(self, query: MessageQuery) -> list[MessageLine]:
        """The messages that match, newest first (engine/store/search.py)."""
        ...

    def get(self, message_id: int) -> MessageView | None:
        """One message with its deliveries, or ``None``."""
        ...

    def read_payload(self, message_id: int, who: Who) -> bytes | None:
        """A message's bytes as they arrived, or ``None``; the read is audited."""
        ...

    def replay_message(self, message_id: int, who: Who, *, everywhere: bool = False) -> Replayed:
        """Receive a stored message again as a new message; the original becomes ``replayed``.
        KeyError if unknown, ActionRefused while it is not processed yet. Audited."""
        ...

    def resend(self, message_id: int, who: Who, destination: str | None = None) -> ResendOutcome:
        """Queue the message's dead deliveries again (or the one to ``destination``). KeyError
        if unknown, ActionRefused (UnknownDestination) when it cannot. Audited."""
        ...

    def mark_handled(self, message_id: int, who: Who, note: str | None = None) -> Handled:
        """Record that an operator dealt with an error, dead, unrouted or needs-patient message
        (it keeps its state). KeyError if unknown, ActionRefused in another state or when it is
        marked already. Audited (``mark-handled``), refusals too."""
        ...


class HealthPort(Protocol):
    """Readiness: can the engine take messages now (store reachable, queue running)?"""

    def ready(self) -> bool: ...
