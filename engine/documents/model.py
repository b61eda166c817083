"""What a document is, and what a document delivery carries.

:class:`DocumentInfo` is a stored document's metadata. It is the raw body of the document's
``messages`` row (JSON, :meth:`DocumentInfo.to_json`): the processor routes and maps it from there,
never from the bytes.

A document delivery's payload (kind ``document``) is a :class:`DocumentEnvelope`: the metadata,
the format the route mapped it to (``fhir``: a DocumentReference whose attachment carries size,
hash and media type but no data; ``hl7v2``: an MDM^T02 whose OBX-5 ED data is left empty;
``none``: the document as it came) and that mapped body. The bytes themselves stay in the store,
once: the dispatcher hands the adapter a :class:`DocumentContent` to read or stream them at
sending time, so a 25 MiB scan is never copied into every delivery row, nor base64-encoded before
an adapter needs it so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import orjson

__all__ = ["DOCUMENT_ENVELOPE_TYPE", "DocumentContent", "DocumentEnvelope", "DocumentInfo"]

#: the content type of a document delivery's payload (the envelope)
DOCUMENT_ENVELOPE_TYPE = "application/vnd.engine.document+json"

#: the media types a document may have (from its bytes' magic, never its extension)
MEDIA_TYPES = ("application/pdf", "image/tiff", "image/jpeg", "image/png")


@dataclass(frozen=True)
class DocumentInfo:
    """A stored document's metadata (no bytes: those are in the store under ``sha256``).

    ``document_type`` is the site's code (``insurance-card``, ``consent``, ``referral``,
    ``lab-report``, ...: the document type table maps it to LOINC, athena's class, TXA-2);
    ``patient_mrn`` with ``patient_authority`` (the assigning authority, PID-3.4's namespace;
    empty when the site has one) names the patient; ``sender`` who dropped it (the folder's
    name, the API token's subject, MSH-3 of an MDM); ``practice`` and ``department`` the
    practice it belongs to (athena's ids, or the site's own).
    """

    document_id: int
    sha256: str
    size: int
    media_type: str
    patient_mrn: str
    document_type: str
    #: ISO date (YYYY-MM-DD) the document is about (scanned, signed, reported)
    document_date: str
    sender: str
    channel: str  # folder, http, mllp (an MDM)
    patient_authority: str = ""
    practice: str | None = None
    department: str | None = None
    appointment: str | None = None  # the appointment's id (SCH-1/2 filler or placer, or the EHR's)
    encounter: str | None = None  # the visit number (PV1-19)
    author: str | None = None
    title: str | None = None
    file_name: str | None = None
    #: MDM in: TXA-12 (unique document number) of the document the EHR sent
    unique_number: str | None = None
    #: MDM in: TXA-13 (parent document number) of an addendum (T06) or a replacement
    #: (T04/T08/T10), and how it relates to that one (FHIR relatesTo.code: appends, replaces)
    parent_number: str | None = None
    relation: str | None = None
    #: base64 SHA-1 of the bytes (FHIR Attachment.hash), computed when they were stored (None
    #: for bytes stored before it was: the processor then computes it from the chunks)
    sha1: str | None = None

    @property
    def patient_key(self) -> str:
        """The key deliveries are ordered by, as PID-3 is for messages (``authority|mrn``)."""
        return f"{self.patient_authority}|{self.patient_mrn}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocumentInfo:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, raw: bytes) -> DocumentInfo:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a document's metadata is a JSON object")
        return cls.from_dict(data)

    def __repr__(self) -> str:  # no patient, title or file name: PHI-safe
        return (
            f"<DocumentInfo {self.document_id} {self.document_type} {self.media_type} "
            f"{self.size} bytes sha256={self.sha256[:12]}>"
        )


DocumentFormat = Literal["fhir", "hl7v2", "none"]


@dataclass(frozen=True)
class DocumentEnvelope:
    """A document delivery's payload: the document, and what the route mapped it to.

    ``body``: for ``fhir`` a dict with the DocumentReference (key ``DocumentReference``) and
    the Binary's metadata (key ``Binary``: ``contentType``, no data); for ``hl7v2`` the MDM^T02
    as ER7 text (a str) whose OBX-5 ED data the adapter fills from the content; for ``none``
    None.
    """

    document: DocumentInfo
    format: DocumentFormat
    body: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "document": self.document.to_dict(),
                "format": self.format,
                "body": self.body,
                "extra": self.extra,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> DocumentEnvelope:
        data = orjson.loads(raw)
        return cls(
            DocumentInfo.from_dict(data["document"]),
            data["format"],
            data.get("body"),
            data.get("extra") or {},
        )


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...


class DocumentContent:
    """A stored document's bytes, for an adapter to read at sending time.

    Built by the dispatcher from the store's chunk reader (a blocking iterator: each chunk is
    read in a thread, so a slow disk or database never blocks the event loop).
    """

    def __init__(self, sha256: str, size: int, chunks: Callable[[], Iterator[bytes]]) -> None:
        self.sha256 = sha256
        self.size = size
        self._chunks = chunks

    async def stream(self, digest: _Hash | None = None) -> AsyncIterator[bytes]:
        """The bytes, chunk by chunk (a chunk is at most 1 MiB); ``digest`` (a hashlib object)
        is updated with each chunk in the reading thread, off the event loop.

        One thread hop per chunk, the first one also opening the reader, and none once ``size``
        bytes came: a 1 MiB document is one hop, not three (each hop waits for the event loop's
        thread to hand over the GIL; in a busy worker that wait was a seventh of its samples)."""
        it: Iterator[bytes] | None = None

        def read() -> bytes | None:
            assert it is not None
            chunk = next(it, None)
            if chunk is not None and digest is not None:
                digest.update(chunk)
            return chunk

        def first() -> bytes | None:
            nonlocal it
            it = self._chunks()
            return read()

        chunk = await asyncio.to_thread(first)
        sent = 0
        try:
            while chunk is not None:
                sent += len(chunk)
                yield chunk
                if sent >= self.size:
                    return
                chunk = await asyncio.to_thread(read)
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # a file reader stopped at its size: its file closed now
                close()

    async def read(self) -> bytes:
        """The bytes, whole (one copy)."""
        parts = [c async for c in self.stream()]
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"<DocumentContent sha256={self.sha256[:12]} {self.size} bytes>"
