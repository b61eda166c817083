"""The leader's daily sweep of stored document bytes no document names (PostgreSQL,
``Documents.sweep_orphan_bytes``): what two overlapping purges leave (each saw the other's
document still there) goes; bytes a document names, bytes a refusal keeps and bytes stored
within the hour stay; an upload that reuses orphaned bytes while the sweep runs keeps them."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from engine.store import SqlMessageStore, create_db_engine
from engine.store.db import utcnow
from engine.store.tables import document_blobs, documents, messages
from tests.documents.intake_support import write
from tests.documents.test_document_retention import _blobs, _put
from tests.documents.test_purge_reuse import _stored, beside_an_upload
from tests.documents.test_purge_reuse import pg_store as pg_store  # noqa: F401  (the fixture)
from tests.documents.test_refusal_retention import _refuse


def _scan(tmp_path: Path, name: str) -> Path:
    return write(tmp_path / name, b"%PDF-1.4\n" + os.urandom(200_000))


def _aged(store: SqlMessageStore, sha: str) -> None:
    """The bytes stored two hours ago."""
    with store.db_engine.begin() as conn:
        conn.execute(
            update(document_blobs)
            .where(document_blobs.c.sha256 == sha)
            .values(created_at=utcnow() - timedelta(hours=2))
        )


def _orphaned(store: SqlMessageStore, path: Path) -> str:
    """Bytes whose document and message are gone and the bytes not: what two overlapping
    purges leave behind. Their SHA-256."""
    mid, sha = _put(store, path, "MRN1")
    with store.db_engine.begin() as conn:
        conn.execute(delete(documents).where(documents.c.message_id == mid))
        conn.execute(delete(messages).where(messages.c.id == mid))
    _aged(store, sha)
    return sha


@pytest.mark.postgres
def test_bytes_nothing_names_are_swept_and_the_rest_stay(
    pg_store: SqlMessageStore, tmp_path: Path
) -> None:
    orphan = _orphaned(pg_store, _scan(tmp_path, "orphan.pdf"))
    _, named = _put(pg_store, _scan(tmp_path, "named.pdf"), "MRN2")
    _aged(pg_store, named)
    young = _orphaned(pg_store, _scan(tmp_path, "young.pdf"))
    with pg_store.db_engine.begin() as conn:  # stored a minute ago, its upload maybe on its way
        conn.execute(
            update(document_blobs)
            .where(document_blobs.c.sha256 == young)
            .values(created_at=utcnow() - timedelta(minutes=1))
        )
    refused = _scan(tmp_path, "refused.pdf")
    _refuse(pg_store, refused)
    kept = _orphaned(pg_store, refused)  # its document gone; the refusal still keeps the bytes
    assert pg_store.sweep_orphan_bytes() == 1
    assert _blobs(pg_store, orphan) == (0, False)
    for sha in (named, young, kept):
        assert _blobs(pg_store, sha) == (1, True)
    assert pg_store.sweep_orphan_bytes() == 0


@pytest.mark.postgres
def test_sweeps_page_by_page(pg_store: SqlMessageStore, tmp_path: Path) -> None:
    shas = [_orphaned(pg_store, _scan(tmp_path, f"o{i}.pdf")) for i in range(5)]
    assert pg_store.sweep_orphan_bytes(page=2) == 5
    assert all(_blobs(pg_store, sha) == (0, False) for sha in shas)


@pytest.mark.postgres
def test_an_upload_reusing_orphaned_bytes_while_the_sweep_runs_keeps_them(
    pg_store: SqlMessageStore, tmp_path: Path
) -> None:
    """The upload of the same bytes for another patient, its transaction open, when the
    sweep's statement comes to their row: the statement waits, then finds the row changed
    and leaves it; the new document has its bytes."""
    path = _scan(tmp_path, "scan.pdf")
    data = path.read_bytes()
    sha = _orphaned(pg_store, path)
    waited, swept, _ = beside_an_upload(
        pg_store, path, sha, pg_store.sweep_orphan_bytes, "DELETE FROM document_blobs"
    )
    assert waited, "the sweep's statement never waited for the upload"
    assert swept == [0]
    assert _blobs(pg_store, sha) == (1, True)
    assert _stored(pg_store, sha) == data


def test_sqlite_has_nothing_to_sweep(tmp_path: Path) -> None:
    store = SqlMessageStore(create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}"))
    store.migrate()
    assert store.sweep_orphan_bytes() == 0


@pytest.mark.postgres
def test_bytes_whose_row_is_held_are_left_for_the_next_sweep_the_rest_go(
    pg_store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group of bytes one of which is held (an upload taking its row) is cancelled at the
    limit and tried one by one: the others go, the held bytes wait for the next sweep."""
    import engine.store.documents as documents_module

    monkeypatch.setattr(documents_module, "ORPHAN_LOCK_LIMIT_S", 0.2)
    shas = [_orphaned(pg_store, _scan(tmp_path, f"o{i}.pdf")) for i in range(3)]
    with pg_store.db_engine.connect() as holder:
        holder.execute(
            select(document_blobs.c.sha256)
            .where(document_blobs.c.sha256 == shas[1])
            .with_for_update()
        )
        assert pg_store.sweep_orphan_bytes() == 2
        holder.rollback()
    assert [_blobs(pg_store, sha)[0] for sha in shas] == [0, 1, 0]
    assert pg_store.sweep_orphan_bytes() == 1


@pytest.mark.postgres
def test_the_sweep_stops_between_groups_when_told(
    pg_store: SqlMessageStore, tmp_path: Path
) -> None:
    shas = [_orphaned(pg_store, _scan(tmp_path, f"o{i}.pdf")) for i in range(3)]

    def stop() -> bool:  # the term ends once the first group is swept
        return sum(_blobs(pg_store, sha)[0] for sha in shas) < 3

    assert pg_store.sweep_orphan_bytes(group=1, stop=stop) == 1
    assert sum(_blobs(pg_store, sha)[0] for sha in shas) == 2
