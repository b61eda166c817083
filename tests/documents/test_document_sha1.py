"""A document's SHA-1 (FHIR Attachment.hash) is computed once, as its bytes are stored, and
carried in its metadata: mapping it to a DocumentReference never reads the bytes back."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import orjson

from engine.adapters.registry import load_routes
from engine.documents.model import DocumentEnvelope, DocumentInfo
from engine.flow.documents import route_document
from engine.mappings import load_mappings
from engine.routes.router import Router
from engine.store import SqlMessageStore
from tests.documents.intake_support import new_document, write

ROUTES = """
destinations:
  chart: {{type: file, directory: "{tmp}/chart"}}
routes:
  - name: to-chart
    match: {{kind: document}}
    mapping: fhir
    destinations: [chart]
"""


def _sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()


def test_the_sha1_is_stored_with_the_bytes_and_carried_in_the_metadata(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    data = b"%PDF-1.4\n" + os.urandom(3 * 1024 * 1024)  # several chunks
    path = write(tmp_path / "scan.pdf", data)
    sha256 = hashlib.sha256(data).hexdigest()
    stored = store.store_document(
        new_document(), path, sha256=sha256, size=len(data), media_type="application/pdf"
    )
    assert stored.info.sha1 == _sha1(data)
    # the message the processor reads carries it
    raw = store.raw(stored.message_id)
    assert raw is not None
    assert DocumentInfo.from_json(raw).sha1 == _sha1(data)
    # the same bytes for another patient: a new document, the blob's SHA-1
    other = store.store_document(
        new_document("MRN2002"), path, sha256=sha256, size=len(data), media_type="application/pdf"
    )
    assert not other.duplicate and other.info.sha1 == _sha1(data)
    assert orjson.loads(store.raw(other.message_id) or b"{}")["sha1"] == _sha1(data)


class _NoReadBack:
    """A store whose bytes cannot be read: mapping must not need them."""

    def document_chunks(self, sha256: str) -> Iterator[bytes]:
        raise AssertionError("the processor read the document's bytes back")


def test_mapping_to_fhir_uses_the_stored_sha1_and_reads_no_bytes(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    data = b"%PDF-1.4\n" + os.urandom(100_000)
    path = write(tmp_path / "scan.pdf", data)
    stored = store.store_document(
        new_document(),
        path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        media_type="application/pdf",
    )
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "docs.yaml").write_text(ROUTES.format(tmp=tmp_path))
    raw = store.raw(stored.message_id)
    assert raw is not None
    _key, made = route_document(
        stored.message_id,
        raw,
        Router(load_routes(defaults=folder)),
        load_mappings(),
        _NoReadBack(),  # type: ignore[arg-type]
    )
    [delivery] = made
    envelope = DocumentEnvelope.from_bytes(delivery.payload)
    attachment = envelope.body["DocumentReference"]["content"][0]["attachment"]
    assert attachment["hash"] == _sha1(data)
