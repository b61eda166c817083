"""``engine demo``'s documents: synthetic scans dropped into the watched folder whole, each one
saying whose it is and what it is (a sidecar or its name), readable as PDFs."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
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


def test_engine_demo_against_a_real_engine_stores_every_document(tmp_path: Path) -> None:
    """``engine demo`` against ``engine serve``: the three dropped in the folder and the one
    uploaded are all stored, each for its patient, with its type and channel."""
    from sqlalchemy import create_engine, select

    from engine.store.tables import documents
    from tests.serve_support import free_port

    var = tmp_path / "var"
    var.mkdir()
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "example.yaml").write_text("routes: []\n")
    mllp, http = free_port(), free_port()
    env = {
        **os.environ,
        "ENGINE_VAR_DIR": str(var),
        "ENGINE_ROUTES_DIR": str(routes),
        "ENGINE_MLLP_HOST": "127.0.0.1",
        "ENGINE_HTTP_HOST": "127.0.0.1",
        "ENGINE_MLLP_PORT": str(mllp),
        "ENGINE_HTTP_PORT": str(http),
        "ENGINE_LOG_LEVEL": "WARNING",
        "ENGINE_ENV": "development",
    }
    log = (var / "engine.log").open("wb")
    engine = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    try:
        _wait_port(http, engine, var / "engine.log")
        _wait_port(mllp, engine, var / "engine.log")
        demo = subprocess.run(
            [sys.executable, "-m", "engine", "demo", "--port", str(mllp)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert demo.returncode == 0, demo.stderr
        assert demo.stdout.count("dropped  ") == 3, demo.stdout
        assert "uploaded" in demo.stdout
        db = create_engine(f"sqlite:///{var / 'engine.db'}")
        cols = (documents.c.patient_mrn, documents.c.document_type, documents.c.channel)
        rows: list[tuple[str, str, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(rows) < 4:
            time.sleep(0.5)
            with db.connect() as conn:
                rows = [
                    (r.patient_mrn, r.document_type, r.channel) for r in conn.execute(select(*cols))
                ]
        db.dispose()
        assert sorted(rows) == [
            ("DEMO1001", "consent", "http"),
            ("DEMO1001", "insurance-card", "folder"),
            ("DEMO1002", "consent", "folder"),
            ("DEMO1003", "referral", "folder"),
        ], (var / "engine.log").read_text(errors="replace")[-2000:]
    finally:
        engine.send_signal(signal.SIGTERM)
        try:
            engine.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(engine.pid, signal.SIGKILL)
        log.close()


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} not open: {log.read_text(errors='replace')[-2000:]}")
