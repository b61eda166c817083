"""A document's type comes from its bytes' magic, never its name; a PDF must open, have pages
and not be encrypted."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from engine.documents.sniff import DocumentRefused, sniff
from tests.documents.intake_support import JPEG, PNG, TIFF_BE, TIFF_LE, pdf_bytes, write


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (TIFF_LE, "image/tiff"),
        (TIFF_BE, "image/tiff"),
    ],
)
def test_images_by_their_magic(tmp_path: Path, data: bytes, media_type: str) -> None:
    assert sniff(write(tmp_path / "scan.bin", data)) == media_type


def test_a_valid_pdf(tmp_path: Path) -> None:
    assert sniff(write(tmp_path / "letter", pdf_bytes(3))) == "application/pdf"


def test_the_name_does_not_count(tmp_path: Path) -> None:
    assert sniff(write(tmp_path / "card.pdf", PNG)) == "image/png"
    with pytest.raises(DocumentRefused) as refused:
        sniff(write(tmp_path / "notes.pdf", b"Dear doctor,\nplease see ..."))
    assert refused.value.kind == "type"
    assert "not a PDF, TIFF, JPEG or PNG" in str(refused.value)
    assert "text" in str(refused.value)


def test_other_types_named_by_their_magic(tmp_path: Path) -> None:
    with pytest.raises(DocumentRefused, match="ZIP"):
        sniff(write(tmp_path / "a.docx", b"PK\x03\x04" + bytes(40)))
    with pytest.raises(DocumentRefused, match="GIF"):
        sniff(write(tmp_path / "a.gif", b"GIF89a" + bytes(40)))
    with pytest.raises(DocumentRefused, match="empty"):
        sniff(write(tmp_path / "a.pdf", b""))


def test_encrypted_pdf_refused_saying_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DocumentRefused) as refused:
        sniff(write(tmp_path / "locked.pdf", pdf_bytes(password="secret")))
    assert refused.value.kind == "pdf"
    assert str(refused.value) == (
        "encrypted PDF (password-protected): save it without a password and send it again"
    )


def test_truncated_pdf_refused(tmp_path: Path) -> None:
    data = pdf_bytes(2)
    with pytest.raises(DocumentRefused) as refused:
        sniff(write(tmp_path / "half.pdf", data[: len(data) // 3]))
    assert refused.value.kind == "pdf"
    assert "PDF" in str(refused.value)


def test_pdf_header_and_nothing_else_refused(tmp_path: Path) -> None:
    with pytest.raises(DocumentRefused, match="does not open"):
        sniff(write(tmp_path / "x.pdf", b"%PDF-1.7\n%garbage\n"))


def test_pdf_without_pages_refused(tmp_path: Path) -> None:
    with pytest.raises(DocumentRefused, match="no pages"):
        sniff(write(tmp_path / "empty.pdf", pdf_bytes(0)))


def test_sniffing_a_long_pdf_is_fast(tmp_path: Path) -> None:
    path = write(tmp_path / "long.pdf", pdf_bytes(300))
    started = time.perf_counter()
    assert sniff(path) == "application/pdf"
    assert time.perf_counter() - started < 0.5


def test_a_25_mib_pdf_is_checked_without_reading_it_into_memory(tmp_path: Path) -> None:
    from engine.sim.pdf import synthetic_pdf

    path = write(
        tmp_path / "big.pdf", synthetic_pdf("consent", "Test Patient", target_size=25 << 20)
    )
    tracemalloc.start()
    try:
        assert sniff(path) == "application/pdf"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x89PNG\r\n\x1a\n", "PNG without its IHDR header"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIDAT" + bytes(64), "PNG without its IHDR"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG without its IHDR"),
        (b"II*\x00", "TIFF without its first IFD"),
        (b"II*\x00\x00\x00\x00\x00" + bytes(64), "TIFF without its first IFD"),
        (b"MM\x00*\x00\x00\x10\x00" + bytes(64), "TIFF without its first IFD"),
        (b"\xff\xd8\xff", "JPEG without a marker after its SOI"),
        (b"\xff\xd8\xff\x00" + bytes(64), "JPEG without a marker after its SOI"),
    ],
)
def test_an_image_too_short_to_be_one_is_refused(tmp_path: Path, data: bytes, what: str) -> None:
    """The magic alone is not an image: an EHR cannot show 8 bytes of PNG signature."""
    with pytest.raises(DocumentRefused) as refused:
        sniff(write(tmp_path / "scan.bin", data))
    assert refused.value.kind == "type"
    assert what in str(refused.value)


def test_a_tiff_whose_first_ifd_is_at_its_end_is_taken(tmp_path: Path) -> None:
    """Many writers put the IFD after the pixels: its offset is checked against the file's
    size, not the first bytes."""
    data = b"II*\x00" + (1000).to_bytes(4, "little") + bytes(992) + b"\x00\x00" + bytes(12)
    assert sniff(write(tmp_path / "fax.tif", data)) == "image/tiff"
