"""``engine demo``'s documents: synthetic scans dropped into the watched folder whole, each one
saying whose it is and what it is (a sidecar or its name), readable as PDFs."""

from __future__ import annotations

import io
import re
from datetime import date
from pathlib import Path

import orjson
import pypdf

from engine.sim.demo import DEMO_DOCUMENTS, drop_documents
from engine.sim.pdf import BANNER

DAY = date(2026, 12, 4)
PATTERN = re.compile(r"^(?P<mrn>[A-Z0-9]+)_(?P<type>[a-z-]+)_(?P<date>\d{8})\.pdf$")


def test_three_documents_land_whole_with_who_and_what(tmp_path: Path) -> None:
    inbox = tmp_path / "var" / "inbox"
    paths = drop_documents(inbox, DAY)
    assert len(paths) == len(DEMO_DOCUMENTS) == 3
    assert sorted(p.name for p in inbox.iterdir() if p.name.startswith(".")) == []
    seen = set()
    for path, doc in zip(paths, DEMO_DOCUMENTS, strict=True):
        assert path.parent == inbox and path.suffix == ".pdf"
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            meta = orjson.loads(sidecar.read_bytes())
            who = (meta["mrn"], meta["document_type"], meta["date"])
            assert who == (doc.mrn, doc.document_type, "2026-12-04")
        else:
            m = PATTERN.match(path.name)
            assert m, path.name
            assert (m["mrn"], m["type"], m["date"]) == (doc.mrn, doc.document_type, "20261204")
        seen.add((doc.mrn, doc.document_type))
        text = pypdf.PdfReader(io.BytesIO(path.read_bytes())).pages[0].extract_text()
        assert BANNER in text and doc.document_type in text and doc.mrn in text
    assert seen == {
        ("DEMO1001", "insurance-card"),
        ("DEMO1002", "consent"),
        ("DEMO1003", "referral"),
    }
    assert any(p.with_suffix(".json").exists() for p in paths)  # one of each way


def test_a_second_drop_adds_new_documents_not_the_same_bytes(tmp_path: Path) -> None:
    first = [p.read_bytes() for p in drop_documents(tmp_path, DAY)]
    second = [p.read_bytes() for p in drop_documents(tmp_path, DAY)]
    assert not set(first) & set(second)
