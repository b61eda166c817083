"""A document is committed in one transaction — its bytes in chunks, content-addressed, its
metadata and its message — on SQLite and PostgreSQL; the same bytes for the same patient once."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from engine.documents.model import DocumentInfo
from engine.store import SqlMessageStore
from engine.store.documents import CHUNK_BYTES, RefusedDocument
from engine.store.tables import document_blobs, document_chunks, documents, messages
from tests.documents.intake_support import new_document, pdf_bytes, stored_document, write


def _store(store: SqlMessageStore, path: Path, **fields: str | None):  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    return store.store_document(
        new_document(**fields),
        path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        media_type="application/pdf",
    )


def _count(store: SqlMessageStore, table) -> int:  # type: ignore[no-untyped-def]
    with store.db_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_document_its_bytes_and_its_message_committed(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    data = pdf_bytes(2)
    path = write(tmp_path / "scan.pdf", data)
    stored = _store(store, path, title="Card, front and back", file_name="scan.pdf")
    assert not stored.duplicate
    info = stored.info
    assert info.document_id > 0 and info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.size, info.media_type, info.patient_mrn) == (
        len(data),
        "application/pdf",
        "MRN1001",
    )
    # the row holds no SHA-1 (the blob does: the stored message's metadata carries it)
    assert stored_document(store, info.document_id) == replace(info, sha1=None)
    assert b"".join(store.document_chunks(info.sha256)) == data
    with store.db_engine.connect() as conn:
        msg = conn.execute(select(messages).where(messages.c.id == stored.message_id)).one()
        doc = conn.execute(select(documents).where(documents.c.id == info.document_id)).one()
    assert (msg.kind, msg.state, msg.channel, msg.message_type) == (
        "document",
        "received",
        "http",
        "DOC",
    )
    assert (msg.trigger, msg.sending_application) == ("insurance-card", "front-desk")
    assert msg.patient_key == "|MRN1001"
    assert DocumentInfo.from_json(bytes(msg.raw)) == info
    assert doc.message_id == stored.message_id


def test_chunks_are_at_most_one_mebibyte_in_order(store: SqlMessageStore, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 12345)
    stored = _store(store, write(tmp_path / "big.pdf", data))
    files = store.blob_files
    if files is not None:  # SQLite: a file of their own, read back in chunks of 1 MiB
        assert files.path(stored.info.sha256).read_bytes() == data
        assert [len(c) for c in store.document_chunks(stored.info.sha256)] == [
            CHUNK_BYTES,
            CHUNK_BYTES,
            12345,
        ]
        assert _count(store, document_chunks) == 0
        return
    with store.db_engine.connect() as conn:
        sizes = [
            len(row.data)
            for row in conn.execute(
                select(document_chunks.c.data)
                .where(document_chunks.c.sha256 == stored.info.sha256)
                .order_by(document_chunks.c.seq)
            )
        ]
    assert sizes == [CHUNK_BYTES, CHUNK_BYTES, 12345]
    assert [len(c) for c in store.document_chunks(stored.info.sha256)] == sizes
    assert b"".join(store.document_chunks(stored.info.sha256)) == data


def test_same_bytes_same_patient_stored_once(store: SqlMessageStore, tmp_path: Path) -> None:
    path = write(tmp_path / "scan.pdf", pdf_bytes())
    first = _store(store, path)
    again = _store(store, path, document_type="consent")
    assert again.duplicate
    assert (again.info.document_id, again.message_id) == (first.info.document_id, first.message_id)
    assert again.info.document_type == "insurance-card"  # the first one's, as stored
    assert (_count(store, documents), _count(store, messages)) == (1, 1)


def test_same_bytes_other_patient_is_a_document_sharing_the_blob(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    path = write(tmp_path / "scan.pdf", pdf_bytes())
    first = _store(store, path)
    other = _store(store, path, mrn="MRN2002")
    elsewhere = _store(store, path, patient_authority="OTHERHOSP")
    assert not other.duplicate and not elsewhere.duplicate
    assert len({first.message_id, other.message_id, elsewhere.message_id}) == 3
    assert (_count(store, documents), _count(store, messages)) == (3, 3)
    in_db = 0 if store.blob_files is not None else 1  # SQLite: one file
    assert (_count(store, document_blobs), _count(store, document_chunks)) == (1, in_db)
    if store.blob_files is not None:
        assert store.blob_files.has(first.info.sha256, first.info.size)


def test_bytes_that_changed_since_hashed_are_not_stored(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    path = write(tmp_path / "scan.pdf", pdf_bytes())
    with pytest.raises(ValueError, match="changed"):
        store.store_document(
            new_document(),
            path,
            sha256="0" * 64,
            size=path.stat().st_size,
            media_type="application/pdf",
        )
    assert (_count(store, documents), _count(store, messages), _count(store, document_blobs)) == (
        0,
        0,
        0,
    )


def test_unknown_document_and_blob(store: SqlMessageStore) -> None:
    assert stored_document(store, 999) is None
    with pytest.raises(KeyError):
        list(store.document_chunks("f" * 64))


def test_refused_document_recorded_with_its_bytes(store: SqlMessageStore, tmp_path: Path) -> None:
    data = pdf_bytes(password="secret")
    path = write(tmp_path / "locked.pdf", data)
    sha = hashlib.sha256(data).hexdigest()
    mid = store.refuse_document(
        RefusedDocument(
            reason="encrypted PDF (password-protected)",
            channel="folder",
            sender="scanner-1",
            size=len(data),
            sha256=sha,
            media_type="application/pdf",
            file_name="locked.pdf",
            fields={"mrn": "MRN1001", "document_type": "consent"},
        ),
        path,
    )
    with store.db_engine.connect() as conn:
        msg = conn.execute(select(messages).where(messages.c.id == mid)).one()
    assert (msg.kind, msg.state, msg.channel) == ("document", "error", "folder")
    assert msg.reason == "encrypted PDF (password-protected)"
    raw = orjson.loads(bytes(msg.raw))
    assert raw["sha256"] == sha and raw["bytes_kept"] is True and raw["fields"]["mrn"] == "MRN1001"
    assert b"".join(store.document_chunks(sha)) == data
    assert _count(store, documents) == 0


def test_oversize_refusal_keeps_the_first_four_kib(store: SqlMessageStore) -> None:
    head = os.urandom(10_000)
    mid = store.refuse_document(
        RefusedDocument(
            reason="larger than the 1024-byte limit",
            channel="http",
            sender="uploader",
            size=2_000_000,
            head=head,
        )
    )
    with store.db_engine.connect() as conn:
        msg = conn.execute(select(messages).where(messages.c.id == mid)).one()
    raw = orjson.loads(bytes(msg.raw))
    assert raw["bytes_kept"] is False and raw["size"] == 2_000_000
    import base64

    assert base64.b64decode(raw["head_base64"]) == head[:4096]
    assert _count(store, document_blobs) == 0


def test_25_mib_stored_and_read_without_holding_it(store: SqlMessageStore, tmp_path: Path) -> None:
    path = tmp_path / "big.pdf"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(25):
            block = os.urandom(CHUNK_BYTES)
            digest.update(block)
            f.write(block)
    tracemalloc.start()
    try:
        stored = store.store_document(
            new_document(),
            path,
            sha256=digest.hexdigest(),
            size=25 * CHUNK_BYTES,
            media_type="application/pdf",
        )
        check = hashlib.sha256()
        for chunk in store.document_chunks(stored.info.sha256):
            check.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert check.hexdigest() == digest.hexdigest()
    assert peak < 8 * CHUNK_BYTES, f"peak {peak} bytes"


def test_a_batch_in_one_transaction_each_document_on_its_own(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    """Group commit: several documents in one transaction; a duplicate within the batch is the
    first one, and a file that changed fails alone."""
    from engine.store.documents import DocumentToStore

    def item(name: str, data: bytes, mrn: str = "MRN1001", sha: str | None = None):  # type: ignore[no-untyped-def]
        path = write(tmp_path / name, data)
        return DocumentToStore(
            new_document(mrn),
            path,
            sha or hashlib.sha256(data).hexdigest(),
            len(data),
            "application/pdf",
        )

    a, b = pdf_bytes(1), pdf_bytes(2)
    results = store.store_documents(
        [
            item("a.pdf", a),
            item("b.pdf", b),
            item("a2.pdf", a),  # the same bytes, the same patient, in the same batch
            item("bad.pdf", b"%PDF-changed", sha="0" * 64),
            item("a3.pdf", a, mrn="MRN2"),
        ]
    )
    first, second, dup, bad, other = results
    assert isinstance(bad, ValueError)
    assert not isinstance(first, Exception) and not isinstance(second, Exception)
    assert not isinstance(dup, Exception) and not isinstance(other, Exception)
    assert dup.duplicate and dup.info.document_id == first.info.document_id
    assert not other.duplicate and other.info.sha256 == first.info.sha256
    assert (_count(store, documents), _count(store, messages), _count(store, document_blobs)) == (
        3,
        3,
        2,
    )


def test_the_same_document_stored_at_once_from_many_threads_is_one(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = pdf_bytes()
    paths = [write(tmp_path / f"{n}.pdf", data) for n in range(6)]
    sha = hashlib.sha256(data).hexdigest()

    def one(path: Path):  # type: ignore[no-untyped-def]
        return store.store_document(
            new_document(), path, sha256=sha, size=len(data), media_type="application/pdf"
        )

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, paths))
    assert len({r.info.document_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert (_count(store, documents), _count(store, messages)) == (1, 1)
