"""Retention purges refused document uploads (issue 12): a refusal older than the retention
period goes, and the bytes it kept with it unless a document or a refusal that stays still needs
them; a document that failed on its way (it has a document row) is never purged; batched like
the rest of retention. On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from engine.jobs.retention import purge_in_batches
from engine.store import SqlMessageStore
from engine.store.db import utcnow
from engine.store.documents import RefusedDocument
from engine.store.tables import messages
from tests.conftest import a_newer_message
from tests.documents.intake_support import new_document, write
from tests.documents.test_document_retention import _blobs, _delivered_long_ago, _documents

KEEP = timedelta(days=30)


def _refuse(store: SqlMessageStore, path: Path | None, *, head: bytes | None = None) -> int:
    """A refused upload: its bytes kept (``path``), or only its head (over the size cap)."""
    data = path.read_bytes() if path is not None else (head or b"")
    return store.refuse_document(
        RefusedDocument(
            reason="bad metadata: document_type 'wound-photo' is not in the table",
            channel="http",
            sender="front-desk",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest() if path is not None else None,
            media_type="application/pdf",
            fields={"mrn": "MRN1", "document_type": "wound-photo"},
            head=head,
        ),
        path,
    )


def _long_ago(store: SqlMessageStore, *message_ids: int, days: int = 90) -> None:
    then = utcnow() - timedelta(days=days)
    with store.db_engine.begin() as conn:
        conn.execute(
            update(messages)
            .where(messages.c.id.in_(message_ids))
            .values(received_at=then, updated_at=then)
        )


def _scan(tmp_path: Path, name: str, size: int = 2000) -> tuple[Path, str]:
    path = write(tmp_path / name, b"%PDF-1.4\n" + os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _messages(store: SqlMessageStore) -> int:
    with store.db_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(messages)).scalar_one())


def test_old_refusals_go_with_the_bytes_they_kept(store: SqlMessageStore, tmp_path: Path) -> None:
    old, old_sha = _scan(tmp_path, "old.pdf", 1_500_000)  # over a chunk: several on PostgreSQL
    recent, recent_sha = _scan(tmp_path, "recent.pdf")
    gone = _refuse(store, old)
    head_only = _refuse(store, None, head=b"%PDF-1.4\n" + bytes(5000))
    stays = _refuse(store, recent)
    _long_ago(store, gone, head_only)

    assert store.purge_range(KEEP).rows == 2

    assert store.raw(gone) is None and store.raw(head_only) is None
    assert store.raw(stays) is not None  # refused within the retention period
    assert _blobs(store, old_sha) == (0, False)
    assert _blobs(store, recent_sha) == (1, True)
    assert store.purge_range(KEEP).rows == 0


def test_refused_bytes_stay_while_a_document_or_a_refusal_still_needs_them(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    path, sha = _scan(tmp_path, "scan.pdf")
    first = _refuse(store, path)
    second = _refuse(store, path)  # sent again, refused again (the same bytes)
    _long_ago(store, first)
    assert store.purge_range(KEEP).rows == 1
    assert _blobs(store, sha) == (1, True)  # the second refusal still keeps them

    # then sent with the right metadata and accepted: a document on its way needs them
    stored = store.store_document(
        new_document("MRN1"),
        path,
        sha256=sha,
        size=path.stat().st_size,
        media_type="application/pdf",
    )
    _long_ago(store, second)
    assert store.purge_range(KEEP).rows == 1
    assert _blobs(store, sha) == (1, True)
    assert _documents(store) == 1

    _delivered_long_ago(store, stored.message_id)
    a_newer_message(store)  # (SQLite keeps the newest message)
    assert store.purge_range(KEEP).rows == 1
    assert _blobs(store, sha) == (0, False)
    assert _messages(store) == 1  # the newer one


def test_refusals_of_the_same_bytes_purged_together_take_them(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    path, sha = _scan(tmp_path, "scan.pdf")
    refused = [_refuse(store, path) for _ in range(3)]
    _long_ago(store, *refused)
    a_newer_message(store)
    assert store.purge_range(KEEP).rows == 3
    assert _blobs(store, sha) == (0, False)


def test_a_document_that_failed_on_its_way_is_not_a_refusal(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    """A stored document whose message ended in ``error`` (unmappable, say) waits for an
    operator, as any message in error does: never purged, nor its bytes."""
    path, sha = _scan(tmp_path, "scan.pdf")
    stored = store.store_document(
        new_document("MRN1"),
        path,
        sha256=sha,
        size=path.stat().st_size,
        media_type="application/pdf",
    )
    with store.db_engine.begin() as conn:
        conn.execute(
            update(messages).where(messages.c.id == stored.message_id).values(state="error")
        )
    _long_ago(store, stored.message_id)
    assert store.purge_range(KEEP).rows == 0
    assert _documents(store) == 1 and _blobs(store, sha) == (1, True)


def test_refusals_purged_in_batches(store: SqlMessageStore, tmp_path: Path) -> None:
    """Retention's batched walk (engine/jobs/retention.py) takes the old refusals range by range
    and leaves the recent ones."""
    paths = [_scan(tmp_path, f"scan-{n}.pdf", 200) for n in range(60)]
    old = [_refuse(store, path) for path, _ in paths[:50]]
    _long_ago(store, *old)
    recent = [_refuse(store, path) for path, _ in paths[50:]]

    report = purge_in_batches(store, KEEP, first=20, pause_s=0, duty=1)

    assert report.purged == 50 and report.batches >= 2  # 20 ids, then 20 to 40
    assert _messages(store) == len(recent)
    assert all(_blobs(store, sha) == (0, False) for _, sha in paths[:50])
    assert all(_blobs(store, sha) == (1, True) for _, sha in paths[50:])
