"""The gate: what the receiver decides about a message before it acknowledges it.

Cheap checks only, so that ACKs stay fast (HL7 v2.5.1 §2.9, table 0357): one MSH only, since an
MLLP frame (appendix C) carries one message and two glued together must never be routed as one
(AR, 100 segment sequence error, ERR-2 naming the second MSH); MSH-9, MSH-10 and MSH-12 are
present (101), MSH-11 is a processing ID of table 0103 (103), and some route can take the
message: a pass-through route (``mapping: none``), or a mapping route whose mapping can make its
main resource (else AR, 200 unsupported message type / 201 unsupported event; docs/ROUTES.md has
the rule). One check is not cheap: an MDM carrying a document, when routes take documents, has
its document decoded and checked as the worker would (engine/flow/documents.py says why, and
how it is bounded), so the sender hears AE, never AA, for a document the engine cannot take. A
message the gate refuses is still stored, with the reason.
"""

from __future__ import annotations

from typing import Protocol

from engine.errors import (
    EngineError,
    HL7ParseError,
    HL7ValidationError,
    UnsupportedMessageError,
)
from engine.flow.documents import carries_document, document_problem, takes_documents
from engine.hl7v2.codec import Message
from engine.mappings import Mappings
from engine.mappings.document_types import document_types
from engine.routes.router import Router

__all__ = ["RouteCheck", "RouteGate", "header_problem", "unsupported"]

#: HL7 table 0103 processing ID
_PROCESSING_IDS = frozenset({"P", "D", "T"})


class RouteCheck(Protocol):
    """Says, before the ACK, whether the engine will take a message: None, or why not."""

    def refuse(self, message: Message) -> EngineError | None: ...


class RouteGate:
    """Before the ACK: can some route take this message?

    A route that passes messages on as received (``mapping: none``) takes any message it
    matches; a mapping route (``mapping: fhir``) only one of a type and trigger the FHIR mapping
    knows. So a message of a type without a mapping (ADT^A02, ORU) is refused only when no
    pass-through route takes it; its mapping routes are skipped after the ACK, with a warning
    (engine/flow/process.py). A message of a type the mapping knows but cannot make its main
    resource from (an ADT without PID) is refused whatever other routes take it: never an AA
    for a message the EHR would not get (docs/ROUTES.md).
    """

    def __init__(self, router: Router, mappings: Mappings) -> None:
        self.router = router
        self.mappings = mappings
        self._codes = {
            code for route in router.routes.routes for code in (route.match.message or [])
        }
        #: an MDM with a document is taken when some route takes documents: its document is
        #: stored and routed as one (engine/flow/documents.py)
        self._documents = takes_documents(router)
        self._types = document_types(mappings) if self._documents else None

    def refuse(self, message: Message) -> EngineError | None:
        if self._types is not None and carries_document(message):
            # its document is taken (engine/flow/documents.py); one that cannot be (an RP
            # pointer, bad base64, bytes that are no document we take) is refused now, unless
            # an HL7v2 route passes the MDM on as received (then its document is only a note)
            if any(r.mapping != "fhir" for r in self.router.match(message=message)):
                return None
            return document_problem(message, self._types)
        routes = self.router.match(message=message)
        if not routes:
            return unsupported(message, self._codes)
        if all(r.mapping != "fhir" for r in routes):
            return None  # passed on as received
        unmapped = self.unmapped(self.mappings, message)
        if unmapped is not None:
            return None if any(r.mapping != "fhir" for r in routes) else unmapped
        # an ADT without PID, an SIU without SCH, a DFT without FT1: refused now, with the
        # reason, rather than acknowledged and then mapped to nothing
        return self.mappings.inbound.refusal(message)

    @staticmethod
    def unmapped(mappings: Mappings, message: Message) -> UnsupportedMessageError | None:
        """Why the FHIR mapping has no map for ``message``'s type and trigger (table 0357 code
        200 or 201), or None. Cheap (a lookup): the gate asks it before the ACK, the processor
        again to skip the mapping routes of a message it passes on as received."""
        try:
            mappings.inbound.message_map(message)
        except UnsupportedMessageError as exc:
            return exc
        return None


def header_problem(message: Message) -> EngineError | None:
    """The MSH fields a receiver must have to process and acknowledge a message, and no second
    MSH (a frame holding two messages is refused whole: which of them an ACK would answer, and
    where one ends, is the sender's to say, by sending each in its own frame)."""
    second = next(
        (n for n, seg in enumerate(message.segments, start=1) if n > 1 and seg.name == "MSH"),
        None,
    )
    if second is not None:
        return HL7ParseError(
            f"segment {second} (MSH): a second message header; one frame must carry one "
            "message, so the frame is refused whole: send each message in its own frame",
            where=f"segment {second} (MSH)",
        )
    msh = message.msh
    for n, name in ((9, "Message Type"), (10, "Message Control ID"), (12, "Version ID")):
        if not msh.get(n):
            return HL7ValidationError(
                f"field {n} ({name}) is required but empty", where=f"MSH-{n}", code="101"
            )
    if msh.get(11) not in _PROCESSING_IDS:
        return HL7ValidationError(
            f"processing ID {msh.get(11)!r} is not in HL7 table 0103 (P, D, T)",
            where="MSH-11",
            code="103",
        )
    return None


def unsupported(message: Message, known_codes: set[str]) -> UnsupportedMessageError:
    """Table 0357 code 200 for a message type we do not take, 201 for an event of one we do."""
    mtype = message.type
    if mtype.code in known_codes:
        return UnsupportedMessageError(
            f"unsupported event {mtype.code}^{mtype.trigger}: no route takes it",
            where="MSH-9.2",
            code="201",
        )
    return UnsupportedMessageError(
        f"unsupported message type {mtype.code}: no route takes it", where="MSH-9.1", code="200"
    )
