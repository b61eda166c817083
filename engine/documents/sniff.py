"""What a document is, from its bytes: the media type from the first bytes' magic (never the
file's name or the type a client declares), and for a PDF whether it can be read at all.

The four types a practice's scanners and fax servers produce are taken: PDF (``%PDF-``, ISO
32000-1 §7.5.2), TIFF (``II*\\0`` little-endian or ``MM\\0*`` big-endian, TIFF 6.0 §2), JPEG
(``FF D8 FF``: SOI then a marker) and PNG (the 8-byte signature, RFC 2083 §3.1). Anything else is
refused naming what its magic says it is, so the sender learns "a Word document", not "bad file".

A PDF is opened with pypdf, non-strict, reading only the trailer, the cross-reference table and
the page count (no page is parsed): an encrypted one is refused (an EHR cannot show a
password-protected scan, and we cannot check it), as is one that does not open or has no pages.
An image must have more than its magic: a PNG its IHDR chunk (RFC 2083 §4.1.1: the first, 13
bytes), a TIFF the first IFD its header points to (at least its 2-byte entry count, inside the
file), a JPEG a marker after its SOI. The pixels are not decoded.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Literal

from engine.errors import EngineError

__all__ = ["ENCRYPTED_PDF", "DocumentRefused", "RefusalKind", "media_type_of", "sniff"]

log = logging.getLogger(__name__)

#: why a document is refused: its type (HTTP 415), its PDF (422), its size (413), its metadata (422)
RefusalKind = Literal["type", "pdf", "size", "metadata"]

ENCRYPTED_PDF = "encrypted PDF (password-protected): save it without a password and send it again"

#: the magic of the types taken, and their media types
_TAKEN = (
    (b"%PDF-", "application/pdf"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)
#: what else people send, to name it in the refusal
_OTHERS = (
    (b"PK\x03\x04", "a ZIP archive (or a Word/Excel .docx/.xlsx)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an MS Office (OLE) file such as .doc or .xls"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"{\\rtf", "an RTF document"),
    (b"%!PS", "a PostScript file"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
)
#: how many first bytes tell the type
_MAGIC_BYTES = 16


class DocumentRefused(EngineError):
    """A document the intake will not take, and why (``kind`` picks the HTTP status);
    ``message_id`` is the refusal's record once the intake stored it."""

    def __init__(self, message: str, *, kind: RefusalKind) -> None:
        super().__init__(message)
        self.kind: RefusalKind = kind
        self.message_id: int | None = None


def _other(head: bytes) -> str:
    """What refused bytes look like: a named type, text, or their first four bytes in hex (a
    signature, not content)."""
    if not head:
        return "an empty file"
    for magic, name in _OTHERS:
        if head.startswith(magic):
            return name
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "a HEIC image"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    text = head.lstrip(b"\xef\xbb\xbf")
    if text.lstrip().startswith(b"<"):
        return "HTML or XML text"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in text):
        return "text"
    return f"unknown bytes 0x{head[:4].hex()}"


def media_type_of(head: bytes) -> str:
    """The media type the first bytes' magic names; DocumentRefused (kind ``type``) otherwise."""
    for magic, media_type in _TAKEN:
        if head.startswith(magic):
            return media_type
    raise DocumentRefused(
        f"not a PDF, TIFF, JPEG or PNG: the bytes are {_other(head)}", kind="type"
    )


def _check_pdf(path: Path) -> None:
    """Refuse a PDF that is encrypted, does not open, or has no pages."""
    from pypdf import PdfReader

    try:
        # an open file, not the path: given a path, pypdf reads the whole file into memory
        with warnings.catch_warnings(), path.open("rb") as f:
            warnings.simplefilter("ignore")  # non-strict pypdf warns of every repair it makes
            reader = PdfReader(f, strict=False)
            if reader.is_encrypted:
                raise DocumentRefused(ENCRYPTED_PDF, kind="pdf")
            pages = len(reader.pages)
    except DocumentRefused:
        raise
    except Exception as exc:  # pypdf raises many kinds on broken input; all mean "unreadable"
        why = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise DocumentRefused(
            f"PDF does not open ({why}): it may be cut short or damaged; save or scan it again",
            kind="pdf",
        ) from None
    if pages < 1:
        raise DocumentRefused("PDF has no pages", kind="pdf")


def _image_problem(media_type: str, head: bytes, size: int) -> str | None:
    """What an image lacks that even the smallest one has (None: nothing)."""
    if media_type == "image/png":
        # signature, then the IHDR chunk: length 13, type, 13 bytes of data, CRC
        if head[8:16] != b"\x00\x00\x00\rIHDR" or size < 33:
            return "PNG without its IHDR header (the image's size and depth)"
    elif media_type == "image/tiff":
        order: Literal["little", "big"] = "little" if head.startswith(b"II") else "big"
        offset = int.from_bytes(head[4:8], order) if len(head) >= 8 else 0
        if offset < 8 or offset + 2 > size:
            return "TIFF without its first IFD (the directory of its first page)"
    elif media_type == "image/jpeg" and (len(head) < 4 or not 0xC0 <= head[3] <= 0xFE):
        return "JPEG without a marker after its SOI"
    return None


def sniff(path: Path) -> str:
    """The media type of the file at ``path`` (application/pdf, image/tiff, image/jpeg or
    image/png), from its bytes; DocumentRefused saying why it cannot be taken (blocking: run it
    in a thread)."""
    with path.open("rb") as f:
        head = f.read(_MAGIC_BYTES)
        size = os.fstat(f.fileno()).st_size
    media_type = media_type_of(head)
    if media_type == "application/pdf":
        _check_pdf(path)
    elif (problem := _image_problem(media_type, head, size)) is not None:
        raise DocumentRefused(
            f"{problem}: {size} bytes, cut short or damaged; scan or save it again", kind="type"
        )
    return media_type
