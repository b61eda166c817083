"""Processing documents: a document's message routed and mapped, and an MDM's document taken in.

A stored document (engine/documents) has a ``messages`` row of kind ``document`` whose raw bytes
are its metadata (:class:`~engine.documents.model.DocumentInfo` as JSON). :func:`route_document`
routes it (by type, sender and practice) and makes one delivery per destination, of kind
``document``, whose payload is a :class:`~engine.documents.model.DocumentEnvelope`: for a route
with ``mapping: fhir`` the DocumentReference and the Binary's metadata (the SHA-1 that
Attachment.hash needs computed here once, streaming the stored chunks), for ``mapping: hl7v2``
an MDM^T02 whose OBX-5 data the sender fills, for ``mapping: none`` the document as it came.
The bytes are never copied into a delivery: the dispatcher gives the adapter a reader.

An MDM^T02/T04/T06/T08/T10 received over MLLP carries a document (HL7 v2.5.1 chapter 9): when the
routes take documents, :func:`take_mdm_document` decodes its OBX-5 ED data (the message is already
bounded by ENGINE_MAX_MESSAGE_BYTES), reads its type from its bytes' magic and stores it through
the store's ``store_document`` (channel ``mllp``, TXA-12 as its unique number, PID-3 as the
patient, TXA-2 through the document type table back to our type), which makes the document's
own message, routed like any other document. The MDM then settles as ``routed`` with a warning
naming the document.

Before the ACK, :func:`document_problem` does the same checks on the same bytes (decode, magic,
the PDF's trailer and page count; the store is not touched), so a document the worker would
refuse gets AE naming OBX-5 (or PID-3, TXA-4) and the reason: a sender that hears AA has handed
the document over and will not send it again, so an AA for a document the engine cannot take
loses it where only an operator sees it. That is real work on the receive path, so it is done
only for an MDM carrying content when a route takes documents and no HL7v2 route passes the MDM
on as received, and it is bounded: the decode by ENGINE_MAX_MESSAGE_BYTES (about 90 ms for a
16 MiB message, measured), the type and PDF check by :data:`PRE_ACK_CHECK_S` (a few ms for a
12 MiB scan; a crafted page tree that takes pypdf seconds is left to the worker, which refuses it
after the ACK). An MDM whose OBX-5 is a reference pointer (RP: no bytes) is refused with the
reason, before the ACK (AE) unless an HL7v2 route passes the MDM on as received: the engine
delivers documents with their bytes, and fetching a pointer from a system it does not know is
not something it can do safely. T04/T06/T08/T10 (status change, addendum, edit, replacement)
are taken as documents of their own that keep their relation to the earlier one (TXA-13):
DocumentReference.relatesTo (``appends``, ``replaces``) going to a FHIR server, MDM^T06/T10 with
TXA-13 going to an HL7v2 one. Without a TXA-13 the relation cannot be carried: the MDM says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from engine.documents.model import DOCUMENT_ENVELOPE_TYPE, DocumentEnvelope, DocumentInfo
from engine.documents.sniff import DocumentRefused, sniff
from engine.errors import ConversionError, EngineError
from engine.hl7v2.codec import Message
from engine.mappings import Mappings
from engine.mappings.document_types import DocumentTypes, document_types
from engine.mappings.documents import fhir_body, sha1_base64
from engine.mappings.mdm import MDM_TRIGGERS, MdmDocument, mdm_t02, read_mdm
from engine.routes.router import Router
from engine.store import NewDelivery
from engine.store.documents import NewDocument, StoredDocument

__all__ = [
    "PRE_ACK_CHECK_S",
    "carries_document",
    "document_problem",
    "route_document",
    "take_mdm_document",
    "takes_documents",
]

log = logging.getLogger(__name__)


class DocumentStore(Protocol):
    """What processing needs of the store for documents."""

    def document_chunks(self, sha256: str) -> Iterator[bytes]: ...

    def store_document(
        self, new: NewDocument, source: Path, *, sha256: str, size: int, media_type: str
    ) -> StoredDocument: ...


def carries_document(message: Message) -> bool:
    """Whether ``message`` is an MDM that carries a document's content (T02/T04/T06/T08/T10)."""
    mtype = message.type
    return mtype.code == "MDM" and mtype.trigger in MDM_TRIGGERS


#: how long the receive path waits for the check of an MDM's document (its type from the magic,
#: a PDF's trailer and page count) before it leaves the check to the worker: a scan takes a few
#: ms, a crafted page tree seconds, and the ACK of every message on the connection waits for it
PRE_ACK_CHECK_S = 0.5

#: one thread checks documents for the receive path: a check past its budget keeps it busy (and
#: the next check waits its own budget in the queue) rather than piling threads up
_checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mdm-check")


def document_problem(
    message: Message, types: DocumentTypes, *, budget_s: float = PRE_ACK_CHECK_S
) -> EngineError | None:
    """Before the ACK: why the worker would refuse an MDM's document, or None (the module
    docstring says why this is worth doing on the receive path, and how it is bounded). The
    error names the field (OBX-5, PID-3, TXA-4) and the reason; a check still running after
    ``budget_s`` is left to the worker (None)."""
    try:
        doc = _document_of(message, types)
    except EngineError as exc:
        return exc
    assert doc.data is not None
    check = _checker.submit(_media_type_of, doc.data)
    try:
        check.result(timeout=budget_s)
    except DocumentRefused as exc:
        return ConversionError(f"the document cannot be taken: {exc.message}", where="OBX-5")
    except TimeoutError:
        check.cancel()  # still queued behind a slow one: the worker checks it anyway
        log.warning("mdm document check past its budget", extra={"size": len(doc.data)})
    except Exception as exc:  # the spool failed (a full disk): not the sender's problem
        log.warning("mdm document check failed", extra={"error": type(exc).__name__})
    return None


def _document_of(message: Message, types: DocumentTypes) -> MdmDocument:
    """The document an MDM carries, with its bytes and its date; the error naming the field
    that keeps it from being taken (before the ACK and in the worker alike)."""
    doc = read_mdm(message, types)
    if doc.data is None:
        raise ConversionError(_RP_REFUSED, where="OBX-5")
    if not doc.document_date:
        raise ConversionError("no document date (TXA-4, TXA-6 or MSH-7)", where="TXA-4")
    return doc


@contextlib.contextmanager
def _spooled(data: bytes, spool_dir: Path | None = None) -> Iterator[Path]:
    """``data`` in a temporary file (what sniff and the store read), removed after."""
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix=".mdm-", suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _media_type_of(data: bytes) -> str:
    """The media type of a document's bytes by the intake's own sniff (the same refusals as
    the folder and the upload); DocumentRefused naming why it cannot be taken."""
    with _spooled(data) as path:
        return sniff(path)


#: why an MDM whose OBX-5 is a reference pointer is refused (the module docstring says why)
_RP_REFUSED = (
    "OBX-5 is a reference pointer (RP), not the document: the engine takes documents with "
    "their bytes (OBX-2 ED, OBX-5 base64); have the sender include the content"
)


def takes_documents(router: Router) -> bool:
    """Whether some route takes documents (then an MDM's document is taken in)."""
    return any(r.input == "document" for r in router.routes.routes)


def route_document(
    message_id: int,
    raw: bytes,
    router: Router,
    mappings: Mappings,
    store: DocumentStore,
    *,
    now: datetime | None = None,
) -> tuple[str, list[NewDelivery]]:
    """The patient key and the deliveries of a document's message (see the module docstring);
    raises :class:`~engine.errors.EngineError` for a document that cannot be mapped."""
    try:
        info = DocumentInfo.from_json(raw)
    except (ValueError, TypeError) as exc:
        raise ConversionError(
            f"a document's metadata cannot be read ({type(exc).__name__})"
        ) from exc
    key = info.patient_key
    made: list[NewDelivery] = []
    bodies: dict[str, bytes] = {}
    for route in router.match(document=info):
        body = bodies.get(route.mapping)
        if body is None:
            body = _envelope(message_id, info, route.mapping, mappings, store, now).to_bytes()
            bodies[route.mapping] = body
        made += [
            NewDelivery(dest, route.name, "document", DOCUMENT_ENVELOPE_TYPE, body, key)
            for dest in route.destinations
        ]
    return key, made


def _envelope(
    message_id: int,
    info: DocumentInfo,
    mapping: str,
    mappings: Mappings,
    store: DocumentStore,
    now: datetime | None,
) -> DocumentEnvelope:
    if mapping == "fhir":
        # computed as the bytes were stored; read back only for bytes stored before that
        sha1 = info.sha1 or sha1_base64(store.document_chunks(info.sha256))
        body: Any = fhir_body(info, mappings, now=now, sha1=sha1)
        return DocumentEnvelope(info, "fhir", body, {"sha1": sha1})
    if mapping == "hl7v2":
        er7 = mdm_t02(
            info,
            document_types(mappings),
            mappings.files.site,
            control_id=f"D{message_id}",
            now=now or datetime.now(UTC),
        )
        return DocumentEnvelope(info, "hl7v2", er7)
    return DocumentEnvelope(info, "none")


def take_mdm_document(
    message: Message,
    mappings: Mappings,
    store: DocumentStore,
    *,
    peer: str = "",
    spool_dir: Path | None = None,
) -> tuple[StoredDocument, list[str]]:
    """Store the document an MDM carries (see the module docstring); returns it and the lines
    to note on the MDM. Raises :class:`~engine.errors.EngineError` (or DocumentRefused) naming
    why the document cannot be taken."""
    doc = _document_of(message, document_types(mappings))
    assert doc.data is not None
    notes: list[str] = []
    relation = doc.relation if doc.parent_number else None
    if doc.relation is not None:
        what = "an addendum to" if doc.relation == "appends" else "a replacement of"
        notes.append(
            f"MDM^{doc.trigger}: {what} the document numbered in TXA-13, carried on as such"
            f" (relatesTo {doc.relation})"
            if relation
            else f"MDM^{doc.trigger}: {what} an earlier document, but TXA-13 (its number) is"
            " empty: taken as a document of its own, the relation cannot be carried on"
        )
    sha256 = hashlib.sha256(doc.data).hexdigest()
    with _spooled(doc.data, spool_dir) as path:
        media_type = sniff(path)
        if doc.declared_type and doc.declared_type != media_type:
            notes.append(
                f"OBX-5 says {doc.declared_type}; the bytes are {media_type} (taken as such)"
            )
        new = NewDocument(
            patient_mrn=doc.patient_mrn,
            document_type=doc.document_type,
            document_date=doc.document_date,
            sender=doc.sender,
            channel="mllp",
            patient_authority=doc.patient_authority,
            encounter=doc.encounter,
            author=doc.author,
            file_name=doc.file_name,
            unique_number=doc.unique_number or None,
            parent_number=doc.parent_number if relation else None,
            relation=relation,
            peer=peer,
        )
        stored = store.store_document(
            new, path, sha256=sha256, size=len(doc.data), media_type=media_type
        )
    what = "stored before" if stored.duplicate else "stored"
    notes.append(
        f"its document {what}: document {stored.info.document_id}, message {stored.message_id}"
    )
    log.info(
        "mdm document taken",
        extra={
            "document_id": stored.info.document_id,
            "message_id": stored.message_id,
            "sha256": sha256[:12],
            "size": len(doc.data),
            "duplicate": stored.duplicate,
        },
    )
    return stored, notes
