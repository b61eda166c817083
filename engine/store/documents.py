"""Documents: each accepted document's metadata, its bytes (content-addressed, in chunks) and
the ``messages`` row of kind ``document`` that routes it, written in one transaction before the
document is accepted (engine/documents).

The bytes are stored once per SHA-256 (``document_blobs``, ``document_chunks`` of at most 1 MiB);
the same bytes for the same patient are one document (``documents.dedupe_key``): a second upload
answers with the first one's id and makes no second message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.documents.model import DocumentInfo
from engine.store.db import Repository

__all__ = ["CHUNK_BYTES", "Documents", "NewDocument", "StoredDocument"]

#: the largest chunk of a document's bytes in one row
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class NewDocument:
    """A document to store: who and what it is. Its bytes come beside it (a file, already
    hashed and typed from its magic by the intake)."""

    patient_mrn: str
    document_type: str
    document_date: str  # YYYY-MM-DD
    sender: str
    channel: str  # folder, http, mllp
    patient_authority: str = ""
    practice: str | None = None
    department: str | None = None
    appointment: str | None = None
    encounter: str | None = None
    author: str | None = None
    title: str | None = None
    file_name: str | None = None
    unique_number: str | None = None
    #: where it came from (an address, the folder's path), for the message row
    peer: str = ""


@dataclass(frozen=True)
class StoredDocument:
    """A document once committed: its metadata (with its id), its message, and whether it was
    already stored (the same bytes for the same patient)."""

    info: DocumentInfo
    message_id: int
    duplicate: bool


class Documents(Repository):
    """The documents' statements (mixed into :class:`~engine.store.SqlMessageStore`)."""

    def store_document(
        self, new: NewDocument, source: Path, *, sha256: str, size: int, media_type: str
    ) -> StoredDocument:
        """Commit ``source``'s bytes (hashed ``sha256``, ``size`` bytes, of ``media_type``),
        the document and its ``messages`` row (kind ``document``, state ``received``, raw: the
        metadata as JSON) in one transaction; a duplicate returns the stored one."""
        raise NotImplementedError

    def document_chunks(self, sha256: str) -> Iterator[bytes]:
        """The bytes stored under ``sha256``, chunk by chunk (blocking: run it in a thread)."""
        raise NotImplementedError

    def get_document(self, document_id: int) -> DocumentInfo | None:
        """A stored document's metadata."""
        raise NotImplementedError
