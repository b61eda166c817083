"""File names carry the store's tag (engine/store/identity.py): two nodes of one PostgreSQL
database name a message's file alike, so the node that redelivers what a dead node wrote finds
the file and writes no second copy; on SQLite the engine's own tag (host and home) stays."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.adapters.destination import Payload
from engine.adapters.files import FileDropDestination, file_name
from engine.adapters.mllp.client import MLLPDestination
from engine.adapters.registry import build_destination
from engine.documents.model import DocumentContent, DocumentEnvelope, DocumentInfo
from engine.routes.spec import DestinationSpec
from engine.store import create_db_engine
from engine.store.identity import database_tag
from tests.conftest import POSTGRES_URL

HL7 = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A08|C1|P|2.5.1\rPID|1||M1\r"
PDF = b"%PDF-1.4 synthetic\n%%EOF\n"


def spec(directory: Path) -> DestinationSpec:
    return DestinationSpec.model_validate({"type": "file", "directory": str(directory)})


def hl7(message_id: int = 7) -> Payload:
    return Payload(message_id, "drop", "hl7v2", HL7, "x-application/hl7-v2+er7", "7:drop", "C1")


def document(message_id: int = 8) -> Payload:
    sha = hashlib.sha256(PDF).hexdigest()
    info = DocumentInfo(3, sha, len(PDF), "application/pdf", "M1", "other", "2026-01-01", "S", "x")
    body = DocumentEnvelope(info, "none").to_bytes()
    content = DocumentContent(sha, len(PDF), lambda: iter([PDF]))
    return Payload(message_id, "drop", "document", body, "x", "8:drop", "", content)


class Node:
    """One engine node: its own home, its own connection to the shared store, and the folder
    destination the worker builds (the registry, with the store's tag)."""

    def __init__(self, home: Path, url: str, folder: Path, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setenv("ENGINE_HOME", str(home))  # the engine's own tag: host and home
        db = create_db_engine(url)
        try:
            self.store_tag = database_tag(db)
        finally:
            db.dispose()
        dest = build_destination("drop", spec(folder), store_tag=self.store_tag)
        assert isinstance(dest, FileDropDestination)
        self.dest = dest

    def deliver(self, payload: Payload) -> str:
        result = asyncio.run(self.dest.deliver(payload))
        assert result.ok, result.detail
        return result.detail


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield tmp_path / "node1", tmp_path / "node2"


def test_sqlite_keeps_the_engines_own_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing SQLite site's names do not change on upgrade: host and home, as before."""
    home = tmp_path / "home"
    node = Node(home, f"sqlite:///{home / 'var' / 'engine.db'}", tmp_path / "out", monkeypatch)
    assert node.store_tag is None
    before = hashlib.sha256(f"{socket.gethostname()}\0{home}".encode()).hexdigest()[:8]
    assert node.dest.tag == before
    assert node.deliver(hl7()) == f"file: wrote 7-drop-{before}.hl7 ({len(HL7)} bytes)"


def test_the_registry_hands_the_tag_to_folders_only(tmp_path: Path) -> None:
    dest = build_destination("drop", spec(tmp_path), store_tag="0a1b2c3d")
    assert isinstance(dest, FileDropDestination) and dest.tag == "0a1b2c3d"
    assert file_name(hl7(), dest.tag) == "7-drop-0a1b2c3d.hl7"
    mllp = DestinationSpec.model_validate({"type": "mllp", "host": "127.0.0.1", "port": 9})
    assert isinstance(build_destination("lab", mllp, store_tag="0a1b2c3d"), MLLPDestination)
    with pytest.raises(ValueError, match="8 lower-case hex digits"):
        build_destination("drop", spec(tmp_path), store_tag="../x")


@pytest.mark.postgres
def test_a_redelivery_by_another_node_finds_the_first_nodes_file(
    postgres_schema_url: str,
    homes: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Node 1 wrote the file and died before recording the delivery; node 2 took the claim over
    and delivers the same message again: it finds the file, the folder keeps one copy."""
    out = tmp_path / "out"
    first = Node(homes[0], postgres_schema_url, out, monkeypatch)
    second = Node(homes[1], postgres_schema_url, out, monkeypatch)
    assert first.store_tag is not None and first.store_tag == second.store_tag
    name = f"7-drop-{first.store_tag}.hl7"
    assert first.deliver(hl7()) == f"file: wrote {name} ({len(HL7)} bytes)"
    assert second.deliver(hl7()) == f"file: {name} exists (delivered before)"
    assert [p.name for p in out.iterdir()] == [name]


@pytest.mark.postgres
def test_a_documents_files_are_found_by_the_other_node_too(
    postgres_schema_url: str,
    homes: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A document's bytes and sidecar carry the store's tag as well: node 1 died after writing
    the bytes but before the sidecar; node 2 finds the bytes and adds the sidecar only."""
    out = tmp_path / "out"
    first = Node(homes[0], postgres_schema_url, out, monkeypatch)
    second = Node(homes[1], postgres_schema_url, out, monkeypatch)
    stem = f"8-drop-{first.store_tag}"
    first.deliver(document())
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.meta.json", f"{stem}.pdf"]
    (out / f"{stem}.meta.json").unlink()  # the dead node's sidecar never came
    mtime = (out / f"{stem}.pdf").stat().st_mtime_ns
    second.deliver(document())
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.meta.json", f"{stem}.pdf"]
    assert (out / f"{stem}.pdf").read_bytes() == PDF
    assert (out / f"{stem}.pdf").stat().st_mtime_ns == mtime  # found, not written again


@pytest.mark.postgres
def test_nodes_of_another_schema_never_take_a_file_for_theirs(
    postgres_schema_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another store (its message ids start at 1 too) writing the same message id into the
    same folder writes its own file: no message of one store passes for delivered by another's."""
    out = tmp_path / "out"
    ours = Node(tmp_path / "a", postgres_schema_url, out, monkeypatch)
    sep = "&" if "?" in POSTGRES_URL else "?"
    public = f"{POSTGRES_URL}{sep}options=-csearch_path%3Dpublic"  # another schema, another store
    theirs = Node(tmp_path / "b", public, out, monkeypatch)
    assert None not in (ours.store_tag, theirs.store_tag) and ours.store_tag != theirs.store_tag
    ours.deliver(hl7())
    assert "wrote" in theirs.deliver(hl7())
    assert len(list(out.iterdir())) == 2
