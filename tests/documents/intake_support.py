"""Documents the intake tests feed in: real PDFs written with pypdf, image headers, metadata;
and a stored document's row read back."""

from __future__ import annotations

import io
from dataclasses import fields
from pathlib import Path

from pypdf import PdfWriter
from sqlalchemy import select

from engine.documents.model import DocumentInfo
from engine.store import SqlMessageStore
from engine.store.documents import NewDocument
from engine.store.tables import documents

#: the first bytes of each image type the intake takes (then filler: the intake reads no further)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64)
TIFF_LE = b"II*\x00\x08\x00\x00\x00" + bytes(64)
TIFF_BE = b"MM\x00*\x00\x00\x00\x08" + bytes(64)


def pdf_bytes(pages: int = 1, *, password: str | None = None) -> bytes:
    """A valid PDF of ``pages`` blank pages (encrypted with ``password`` when given)."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    if password is not None:
        writer.encrypt(password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def new_document(mrn: str = "MRN1001", **fields: str | None) -> NewDocument:
    values: dict[str, str | None] = {
        "patient_mrn": mrn,
        "document_type": "insurance-card",
        "document_date": "2026-12-01",
        "sender": "front-desk",
        "channel": "http",
    }
    values.update(fields)
    return NewDocument(**values)  # type: ignore[arg-type]


def stored_document(store: SqlMessageStore, document_id: int) -> DocumentInfo | None:
    """The ``documents`` row ``document_id`` as a DocumentInfo (None: no such row)."""
    with store.db_engine.connect() as conn:
        row = conn.execute(select(documents).where(documents.c.id == document_id)).first()
    if row is None:
        return None
    names = [f.name for f in fields(DocumentInfo) if f.name not in ("document_id", "sha1")]
    return DocumentInfo(document_id=int(row.id), **{n: getattr(row, n) for n in names})
