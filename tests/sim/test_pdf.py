"""Synthetic PDFs: valid PDF 1.4 (pypdf reads them; pdftoppm renders them when installed),
the synthetic banner on the page, exact padded sizes, a fresh nonce making each one unique."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import pypdf
import pytest

from engine.sim.pdf import BANNER, synthetic_pdf

MIB = 1024 * 1024


def _text(data: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(data), strict=True)
    assert len(reader.pages) == 1
    return reader.pages[0].extract_text()


def test_a_small_pdf_reads_in_pypdf_with_the_banner_type_and_name() -> None:
    data = synthetic_pdf("insurance-card", "Rivera, Ana", mrn="DEMO1001")
    assert data.startswith(b"%PDF-1.4\n")
    assert data.rstrip().endswith(b"%%EOF")
    text = _text(data)
    assert BANNER in text
    assert "insurance-card" in text
    assert "Rivera, Ana" in text
    assert "DEMO1001" in text
    assert len(data) < 4096


def test_the_xref_offsets_point_at_their_objects() -> None:
    data = synthetic_pdf("consent", "Okafor, Chidi", target_size=64 * 1024)
    start = int(data.rsplit(b"startxref\n", 1)[1].split(b"\n", 1)[0])
    assert data[start:].startswith(b"xref\n")
    lines = data[start:].split(b"\n")
    count = int(lines[1].split()[1])
    entries = data[start + len(lines[0]) + len(lines[1]) + 2 :]
    for n in range(1, count):
        entry = entries[20 * n : 20 * n + 20]
        assert len(entry) == 20 and entry.endswith((b" n\r\n", b"n \n"))
        offset = int(entry[:10])
        assert data[offset:].startswith(f"{n} 0 obj".encode()), n


@pytest.mark.parametrize("size", [10_000, MIB, MIB + 1, 3 * MIB + 7])
def test_a_padded_pdf_has_exactly_the_target_size_and_still_reads(size: int) -> None:
    data = synthetic_pdf("referral", "Lindqvist, Maja", target_size=size)
    assert len(data) == size
    assert BANNER in _text(data)


def test_a_target_smaller_than_the_page_itself_is_refused() -> None:
    with pytest.raises(ValueError, match="target_size"):
        synthetic_pdf("referral", "Lindqvist, Maja", target_size=100)


def test_each_pdf_is_unique_unless_the_seed_is_given() -> None:
    a = synthetic_pdf("consent", "Okafor, Chidi", target_size=20_000)
    b = synthetic_pdf("consent", "Okafor, Chidi", target_size=20_000)
    assert hashlib.sha256(a).digest() != hashlib.sha256(b).digest()
    c = synthetic_pdf("consent", "Okafor, Chidi", target_size=20_000, seed=7, date="2026-01-02")
    d = synthetic_pdf("consent", "Okafor, Chidi", target_size=20_000, seed=7, date="2026-01-02")
    assert c == d


def test_text_with_pdf_delimiters_is_escaped() -> None:
    data = synthetic_pdf("lab (report) \\ x", "O'Brien (Sr), Pat")
    text = _text(data)
    assert "lab (report) \\ x" in text
    assert "O'Brien (Sr), Pat" in text


def test_the_padding_is_one_stream_not_copies_in_memory() -> None:
    """The padding is incompressible (a scan's bytes are), so a compressor gains nothing."""
    import zlib

    data = synthetic_pdf("referral", "Lindqvist, Maja", target_size=MIB)
    assert len(zlib.compress(data, 1)) > 0.95 * MIB
    assert re.search(rb"/Length \d+", data)


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler) not installed")
def test_pdftoppm_renders_the_page(tmp_path: Path) -> None:
    pdf = tmp_path / "card.pdf"
    pdf.write_bytes(synthetic_pdf("insurance-card", "Rivera, Ana", target_size=MIB))
    out = subprocess.run(
        ["pdftoppm", "-r", "20", "-png", str(pdf), str(tmp_path / "page")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert b"Syntax Error" not in out.stderr, out.stderr
    assert list(tmp_path.glob("page*.png"))


def test_every_size_around_a_startxref_digit_boundary_is_reachable() -> None:
    """startxref gains a digit near 10**5 bytes: each size there is still hit exactly."""
    digits = set()
    for size in range(100_100, 100_400):
        data = synthetic_pdf("consent", "Okafor, Chidi", target_size=size, seed=3)
        assert len(data) == size
        digits.add(len(data.rsplit(b"startxref\n", 1)[1].split(b"\n", 1)[0]))
    assert digits == {5, 6}
