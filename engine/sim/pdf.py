"""Synthetic scanned documents: small, valid PDF 1.4 files written by hand, for the demo, the
tests and the benches (no PDF library on the engine's path, and none needed to make one).

Each file has one US Letter page of Helvetica text: the banner :data:`BANNER`, the document
type, a fake patient's name and MRN, the date and a random id (so two documents are never the
same bytes: the store deduplicates by content hash). ``target_size`` pads the file to an exact
size with one stream of incompressible bytes, as a scanner's image would be, hung from the
catalog's ``/PieceInfo`` (ISO 32000-1 §14.5, private data of a conforming writer), so a 25 MiB
"scan" is still one page a reader can open.

The layout follows ISO 32000-1 §7.5: header, a binary-marker comment, the body's indirect
objects, the cross-reference table (one 20-byte entry per object, §7.5.4) and the trailer with
``startxref``. Text is in WinAnsiEncoding (Annex D), where the banner's em dash is byte 0x97.
"""

from __future__ import annotations

import os
import random
import secrets
from datetime import UTC, datetime

__all__ = ["BANNER", "synthetic_pdf"]

#: on every synthetic page, first line
BANNER = "SYNTHETIC \u2014 NOT A REAL PATIENT"

#: the width of the padding stream's /Length (spaces before the number are PDF whitespace), so
#: its digits do not move the file's size
_LENGTH_WIDTH = 12


def _pdf_string(text: str) -> bytes:
    """A PDF literal string (§7.3.4.2) in WinAnsiEncoding; characters it lacks become '?'."""
    raw = text.encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _page_content(lines: list[tuple[int, str]]) -> bytes:
    """Text operators: one line each at 72 pt from the left, 24 pt apart from the top."""
    out = [b"BT"]
    y = 720
    for size, text in lines:
        out.append(b"/F1 %d Tf 1 0 0 1 72 %d Tm " % (size, y) + _pdf_string(text) + b" Tj")
        y -= 24 if size > 12 else 18
    out.append(b"ET")
    return b"\n".join(out) + b"\n"


def _stream(dictionary: bytes, data: bytes, *, fixed: bool = False) -> bytes:
    length = b"%*d" % (_LENGTH_WIDTH, len(data)) if fixed else b"%d" % len(data)
    return b"<< " + dictionary + b"/Length " + length + b" >>\nstream\n" + data + b"\nendstream"


def _assemble(objects: list[bytes], info: int, slack: int = 0) -> bytes:
    """Header, objects 1..n, xref and trailer, with every offset counted from the bytes."""
    parts = [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"]
    offsets: list[int] = []
    at = len(parts[0])
    for n, body in enumerate(objects, start=1):
        chunk = b"%d 0 obj\n" % n + body + b"\nendobj\n"
        offsets.append(at)
        parts.append(chunk)
        at += len(chunk)
    xref = [b"xref\n0 %d\n" % (len(objects) + 1), b"0000000000 65535 f\r\n"]
    xref += [b"%010d 00000 n\r\n" % offset for offset in offsets]
    parts += xref
    parts.append(
        b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R%s >>\nstartxref\n%d\n%%%%EOF\n"
        % (len(objects) + 1, info, b" " * slack, at)
    )
    return b"".join(parts)


def synthetic_pdf(
    document_type: str,
    patient_name: str,
    *,
    mrn: str = "",
    date: str | None = None,
    target_size: int | None = None,
    seed: int | None = None,
) -> bytes:
    """One page saying what the document is and whose, padded to ``target_size`` bytes if given.

    ``seed`` makes the bytes reproducible (tests); without it every call differs. A target
    smaller than the page itself raises :class:`ValueError`.
    """
    rng = random.Random(seed if seed is not None else secrets.randbits(64))
    synthetic_id = f"{rng.getrandbits(64):016x}"
    day = date or datetime.now(UTC).date().isoformat()
    content = _page_content(
        [
            (18, BANNER),
            (14, f"Document type: {document_type}"),
            (12, f"Patient: {patient_name}"),
            (12, f"MRN: {mrn}" if mrn else "MRN: (none)"),
            (12, f"Date: {day}"),
            (10, f"Synthetic id: {synthetic_id}"),
        ]
    )
    stamp = day.replace("-", "")[:8]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        _stream(b"", content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Title "
        + _pdf_string(f"Synthetic {document_type}")
        + b" /Producer (engine synthetic PDF) /CreationDate (D:"
        + stamp.encode("ascii", errors="replace")
        + b"000000Z) >>",
    ]
    info = 6
    if target_size is None:
        return _assemble(objects, info)
    objects[0] = (
        b"<< /Type /Catalog /Pages 2 0 R /PieceInfo << /EngineSynthetic << /LastModified (D:"
        + stamp.encode("ascii", errors="replace")
        + b"000000Z) /Private 7 0 R >> >> >>"
    )
    # the padding's /Length has a fixed width, but startxref's digits still move with the
    # padding's size; where its one more digit skips the target, a space or two in the trailer
    # (after the xref, so startxref stays) makes up the byte
    # a scanner's bytes: os.urandom is fast; a seeded generator when the bytes must repeat
    noise = os.urandom(target_size) if seed is None else rng.randbytes(target_size)
    for slack in range(3):
        base = len(_assemble([*objects, _stream(b"", b"", fixed=True)], info, slack))
        padding = target_size - base
        for _ in range(4):
            if padding < 0:
                raise ValueError(
                    f"target_size {target_size} is smaller than the page itself ({base})"
                )
            data = _assemble([*objects, _stream(b"", noise[:padding], fixed=True)], info, slack)
            if len(data) == target_size:
                return data
            padding += target_size - len(data)
    raise AssertionError(f"no padding reaches {target_size} bytes")  # pragma: no cover
