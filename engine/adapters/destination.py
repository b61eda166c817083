"""The destination contract: one payload in, one delivery result out (the EIP Message Endpoint).

A :class:`Destination` delivers a :class:`Payload` (the body already mapped for it) and says how it
went in a :class:`DeliveryResult`. It does not raise for a peer's failure: a refused connection, a
503 or an AE are *results*, classified as retryable (try again later: the peer may recover) or
permanent (the same bytes will fail the same way: dead-letter them). Only a programming error
escapes. ``detail`` is PHI-free by contract: a status code, an ACK code, an error class, never a
body, a URL with identifiers or a field value, so it can go to logs and the store as is.

Deliveries are at-least-once: a message may reach a destination twice (an ACK lost on the way
back), so each adapter makes a redelivery harmless where its protocol allows (conditional updates,
files named by message, the idempotency key sent along).

The adapters are built from a route file's destinations by :mod:`engine.adapters.registry`; this
contract knows none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from engine.documents.model import DocumentContent

__all__ = ["BatchDestination", "DeliveryResult", "Destination", "Payload", "PayloadKind"]

#: ``document``: the body is a :class:`~engine.documents.model.DocumentEnvelope` (JSON) and
#: :attr:`Payload.content` reads the document's bytes
PayloadKind = Literal["fhir-bundle", "hl7v2", "document"]


@dataclass(frozen=True)
class Payload:
    """What one destination receives for one message."""

    message_id: int
    destination: str
    kind: PayloadKind
    body: bytes
    content_type: str
    #: the same on every attempt for this message and destination (sent where the protocol can)
    idempotency_key: str
    #: MSH-10 of the message received (for logs; an MLLP sender checks the ACK against the body)
    control_id: str
    #: a document delivery's bytes (kind ``document``), read from the store when sending
    content: DocumentContent | None = None

    def __repr__(self) -> str:  # no body: PHI-safe
        return (
            f"<Payload message={self.message_id} destination={self.destination} "
            f"kind={self.kind} {len(self.body)} bytes>"
        )


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one attempt. ``detail`` is PHI-free (status, ACK code, error class)."""

    ok: bool
    retryable: bool
    detail: str
    #: a wait the peer asked for (HTTP Retry-After on 429/503), seconds
    retry_after_s: float | None = None
    #: the destination does not know the patient (no match for the MRN): the delivery waits in
    #: state ``needs-patient`` for an operator to match the document or resend it, neither
    #: retried nor dead
    needs_patient: bool = False

    @classmethod
    def success(cls, detail: str) -> DeliveryResult:
        return cls(True, False, detail)

    @classmethod
    def retry(cls, detail: str, *, after_s: float | None = None) -> DeliveryResult:
        return cls(False, True, detail, after_s)

    @classmethod
    def fail(cls, detail: str) -> DeliveryResult:
        return cls(False, False, detail)

    @classmethod
    def unknown_patient(cls, detail: str) -> DeliveryResult:
        return cls(False, False, detail, None, True)


class Destination(Protocol):
    """Where payloads go. ``deliver`` is called one payload at a time per destination."""

    name: str

    async def deliver(self, payload: Payload) -> DeliveryResult: ...

    async def close(self) -> None: ...


@runtime_checkable
class BatchDestination(Protocol):
    """A destination that also takes several payloads at once (the file drop: one hand-off to
    its threads and one sync of its folder for all). The dispatcher gives it the deliveries it
    claimed together (engine/flow/deliver.py); each payload gets its own result, in order."""

    name: str

    async def deliver(self, payload: Payload) -> DeliveryResult: ...

    async def deliver_batch(self, payloads: list[Payload]) -> list[DeliveryResult]: ...

    async def close(self) -> None: ...
