"""What the engine shows of a stored message and its deliveries: one view type each.

The store returns these, the API's ports name them and the API serialises them as they are (FastAPI
turns a dataclass into JSON field by field), as does the CLI: nothing copies them into another
type. They carry metadata only — ids, control IDs, types, states, destinations — never a payload,
so nothing listed or shown can leak a message's content. A document's view names its patient
(the operator matches documents to patients): the store audits each list and show of documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "AttemptView",
    "AuditEntry",
    "DeliveryView",
    "DocumentLine",
    "DocumentMatched",
    "DocumentView",
    "MessageLine",
    "MessageSummary",
    "MessageView",
    "ResendOutcome",
]


@dataclass(frozen=True)
class AttemptView:
    """One attempt of a delivery: when its outcome came, what it was, and why it failed."""

    attempt: int
    at: datetime
    #: retry, dead, needs-patient, delivered
    outcome: str
    #: the HTTP status the destination answered, when it did
    status: int | None = None
    #: the exception's class or the ACK code, when the error names one
    error_class: str | None = None
    #: PHI-free, at most 300 characters
    error: str | None = None
    #: None for a first-time success (its row is the delivery's own, which keeps no duration)
    duration_ms: int | None = None


@dataclass(frozen=True)
class DeliveryView:
    """One destination of one message, and how its delivery is going."""

    destination: str
    #: waiting (behind an earlier one for the same patient), pending, delivered, dead,
    #: needs-patient (the destination does not know the patient), resent
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    #: each attempt, oldest first (attempts made before migration 0020 are not listed)
    history: tuple[AttemptView, ...] = ()


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


@dataclass(frozen=True)
class MessageLine(MessageSummary):
    """A message as one line of a search (``engine messages list``, ``GET /api/messages``): its
    summary, who sent it, why it is in its state, and which destinations fail it.

    ``failing`` names each destination whose delivery is dead, waits for its patient or is
    retrying, with its last error (``"fhir (dead): HTTP 503"``, ``"epic (needs patient): ..."``):
    the reason a routed, dead or needs-patient message is stuck is there, not in ``reason``
    (which is the processing's).
    """

    #: MSH-3 and MSH-4 (``FRONTDESK^CLINIC``)
    sender: str | None
    reason: str | None
    failing: tuple[str, ...] = ()
    #: the message this one replays, if it is a replay
    replay_of: int | None = None


@dataclass(frozen=True)
class ResendOutcome:
    """What a resend did: the new deliveries (one per destination), and why nothing was made
    when that is so (``note``: already queued, nothing failed)."""

    message_id: int
    #: (destination, new delivery id, the delivery it replaces)
    queued: tuple[tuple[str, int, int], ...]
    note: str = ""


@dataclass(frozen=True)
class AuditEntry:
    """Who replayed, resent or viewed what, and when: one line of the audit trail."""

    id: int
    at: datetime
    actor: str
    source: str
    action: str
    message_id: int | None
    #: the patient of the message (its patient key, PID-3): whose data was seen or sent
    patient_key: str | None
    outcome: str
    detail: str | None
    #: the caller's address (API), or None (CLI)
    peer: str | None = None


@dataclass(frozen=True)
class DocumentLine:
    """A stored document as one line of the document list: what it is, who sent it, and where
    its message stands (no patient: ``show`` names it, audited as each list is)."""

    id: int
    received_at: datetime
    document_type: str
    media_type: str
    size: int
    sender: str
    channel: str
    #: the message that routes it now (after a match, the replay's), None once purged
    message_id: int | None
    #: that message's state (``needs-patient`` when a destination does not know the patient)
    state: str | None
    #: the destinations whose delivery waits for the patient (``needs-patient``)
    waiting: tuple[str, ...] = ()


@dataclass(frozen=True)
class DocumentView(DocumentLine):
    """One document's metadata, its SHA-256 and its message's deliveries (never its bytes)."""

    sha256: str = ""
    patient_mrn: str = ""
    patient_authority: str = ""
    document_date: str = ""
    practice: str | None = None
    department: str | None = None
    appointment: str | None = None
    encounter: str | None = None
    author: str | None = None
    title: str | None = None
    file_name: str | None = None
    unique_number: str | None = None
    deliveries: tuple[DeliveryView, ...] = ()


@dataclass(frozen=True)
class DocumentMatched:
    """What matching a document to a patient did: the new message that carries it (a replay of
    the old one) and the destinations whose waiting deliveries it replaces."""

    document_id: int
    message_id: int
    replay_of: int
    resent: tuple[str, ...]
