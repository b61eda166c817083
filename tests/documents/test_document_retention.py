"""Retention takes a delivered document's row and bytes with its message: the bytes only when
no other document, nor a kept refusal, still needs them; a document still on its way keeps all."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from engine.store import SqlMessageStore
from engine.store.db import utcnow
from engine.store.documents import RefusedDocument
from engine.store.tables import document_blobs, document_chunks, documents, messages
from tests.conftest import a_newer_message
from tests.documents.intake_support import new_document, write


def _put(store: SqlMessageStore, path: Path, mrn: str) -> tuple[int, str]:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    stored = store.store_document(
        new_document(mrn), path, sha256=sha, size=len(data), media_type="application/pdf"
    )
    return stored.message_id, sha


def _delivered_long_ago(store: SqlMessageStore, *message_ids: int) -> None:
    with store.db_engine.begin() as conn:
        conn.execute(
            update(messages)
            .where(messages.c.id.in_(message_ids))
            .values(state="delivered", updated_at=utcnow() - timedelta(days=90))
        )


def _blobs(store: SqlMessageStore, sha: str) -> tuple[int, bool]:
    """The blob rows of ``sha``, and whether its bytes are still kept: chunks in the database
    (PostgreSQL), a file beside the database (SQLite)."""
    with store.db_engine.connect() as conn:
        blobs = conn.execute(
            select(func.count()).select_from(document_blobs).where(document_blobs.c.sha256 == sha)
        ).scalar_one()
        chunks = conn.execute(
            select(func.count()).select_from(document_chunks).where(document_chunks.c.sha256 == sha)
        ).scalar_one()
    files = store.blob_files
    if files is None:
        return int(blobs), chunks > 0
    assert chunks == 0  # beside SQLite the bytes are never in the database
    return int(blobs), files.path(sha).exists()


def _documents(store: SqlMessageStore) -> int:
    """The documents uploaded (not the row ``a_newer_message`` adds: tests/conftest.py)."""
    uploaded = (
        select(func.count())
        .select_from(documents)
        .where(~documents.c.dedupe_key.startswith("row|"))
    )
    with store.db_engine.connect() as conn:
        return int(conn.execute(uploaded).scalar_one())


def test_a_purged_document_takes_its_bytes_unless_another_still_needs_them(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    shared = write(tmp_path / "shared.pdf", b"%PDF-1.4\n" + os.urandom(1_500_000))
    alone = write(tmp_path / "alone.pdf", b"%PDF-1.4\n" + os.urandom(1000))
    first, shared_sha = _put(store, shared, "MRN1")
    second, _ = _put(store, shared, "MRN2")  # the same bytes, another patient: not delivered
    third, alone_sha = _put(store, alone, "MRN3")
    _delivered_long_ago(store, first, third)
    a_newer_message(store)

    assert store.purge_range(timedelta(days=30)).rows == 2

    assert _documents(store) == 1  # the second's, still on its way
    assert _blobs(store, shared_sha) == (1, True)  # it still needs them
    assert _blobs(store, alone_sha) == (0, False)
    assert store.raw(second) is not None

    _delivered_long_ago(store, second)
    assert store.purge_range(timedelta(days=30)).rows == 1
    assert _documents(store) == 0
    assert _blobs(store, shared_sha) == (0, False)


def test_the_bytes_a_refusal_kept_stay(store: SqlMessageStore, tmp_path: Path) -> None:
    path = write(tmp_path / "scan.pdf", b"%PDF-1.4\n" + os.urandom(2000))
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    # refused first (its metadata was wrong), its bytes kept; then sent again and accepted
    store.refuse_document(
        RefusedDocument(
            reason="unknown document type",
            channel="http",
            sender="front-desk",
            size=len(data),
            sha256=sha,
            media_type="application/pdf",
        ),
        path,
    )
    accepted, _ = _put(store, path, "MRN1")
    _delivered_long_ago(store, accepted)
    a_newer_message(store)

    assert store.purge_range(timedelta(days=30)).rows == 1
    assert _documents(store) == 0
    assert _blobs(store, sha) == (1, True)  # the refusal, within its retention, still names them
