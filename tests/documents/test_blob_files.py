"""Beside SQLite a document's bytes are a file of their own, put in place (fsynced) before the
transaction that records them; on PostgreSQL they stay in the database. A crash between the two
leaves a file no row names, swept once old; retention removes a file only after its commit."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from engine.store import SqlMessageStore, create_db_engine
from engine.store.blobs import BlobFiles, DocumentChanged
from engine.store.db import utcnow
from engine.store.documents import DocumentToStore
from engine.store.tables import document_blobs, document_chunks, messages
from tests.conftest import a_newer_message
from tests.documents.intake_support import new_document, pdf_bytes, write


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlMessageStore]:
    """The store on SQLite only (the file tests: PostgreSQL keeps the bytes in the database)."""
    db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    yield store
    db.dispose()


def _files(store: SqlMessageStore) -> BlobFiles:
    files = store.blob_files
    assert files is not None
    return files


def test_postgresql_keeps_the_bytes_in_the_database(store: SqlMessageStore, tmp_path: Path) -> None:
    if store.db_engine.dialect.name != "postgresql":
        assert store.blob_files is not None
        assert store.blob_files.root == Path(str(store.db_engine.url.database)).with_suffix(
            ".blobs"
        )
        return
    assert store.blob_files is None
    data = pdf_bytes()
    path = write(tmp_path / "scan.pdf", data)
    assert store.prepare_blob(path, _sha(data), len(data)) is None
    stored = store.store_document(
        new_document(), path, sha256=_sha(data), size=len(data), media_type="application/pdf"
    )
    with store.db_engine.connect() as conn:
        where = document_blobs.c.sha256 == _sha(data)
        assert conn.execute(select(document_blobs.c.stored).where(where)).scalar_one() == "db"
        count = select(func.count()).select_from(document_chunks)
        assert conn.execute(count).scalar_one() == 1
    assert b"".join(store.document_chunks(stored.info.sha256)) == data


def test_prepared_bytes_are_in_place_before_the_commit_and_read_back(
    sqlite_store: SqlMessageStore, tmp_path: Path
) -> None:
    files = _files(sqlite_store)
    data = pdf_bytes(3)
    path = write(tmp_path / "scan.pdf", data)
    sha1 = sqlite_store.prepare_blob(path, _sha(data), len(data))
    assert sha1 is not None
    # in place and durable before any row names it
    assert files.path(_sha(data)).read_bytes() == data
    with sqlite_store.db_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(document_blobs)).scalar_one() == 0
    [stored] = sqlite_store.store_documents(
        [DocumentToStore(new_document(), path, _sha(data), len(data), "application/pdf", sha1)]
    )
    assert not isinstance(stored, Exception)
    assert stored.info.sha1 == sha1
    with sqlite_store.db_engine.connect() as conn:
        row = conn.execute(select(document_blobs)).one()
        assert (row.stored, row.chunks, row.sha1) == ("file", 0, sha1)
        assert conn.execute(select(func.count()).select_from(document_chunks)).scalar_one() == 0
    assert b"".join(sqlite_store.document_chunks(_sha(data))) == data
    # prepared again (the same bytes uploaded again): nothing to do, they are in place
    assert sqlite_store.prepare_blob(path, _sha(data), len(data)) is None


def test_a_file_that_changed_since_hashed_is_not_put_in_place(
    sqlite_store: SqlMessageStore, tmp_path: Path
) -> None:
    files = _files(sqlite_store)
    data = pdf_bytes()
    path = write(tmp_path / "scan.pdf", data + b"still writing")
    with pytest.raises(DocumentChanged):
        sqlite_store.prepare_blob(path, _sha(data), len(data))
    assert not files.path(_sha(data)).exists()
    assert [p for p in files.root.rglob("*") if p.is_file()] == []  # no temporary file left


def test_a_crash_between_the_file_and_the_commit_leaves_a_file_swept_once_old(
    sqlite_store: SqlMessageStore, tmp_path: Path
) -> None:
    files = _files(sqlite_store)
    kept = pdf_bytes(1)
    orphan = pdf_bytes(2)
    write(tmp_path / "kept.pdf", kept)
    sqlite_store.store_document(
        new_document(),
        tmp_path / "kept.pdf",
        sha256=_sha(kept),
        size=len(kept),
        media_type="application/pdf",
    )
    sqlite_store.prepare_blob(write(tmp_path / "orphan.pdf", orphan), _sha(orphan), len(orphan))
    # (the process died here: no row names the orphan)
    assert sqlite_store.sweep_blob_files() == 0  # too young: its commit may be on its way
    old = time.time() - 7200
    for sha in (_sha(kept), _sha(orphan)):
        os.utime(files.path(sha), (old, old))
    assert sqlite_store.sweep_blob_files() == 1
    assert files.path(_sha(kept)).exists()
    assert not files.path(_sha(orphan)).exists()
    assert b"".join(sqlite_store.document_chunks(_sha(kept))) == kept


def test_the_sweep_leaves_a_file_an_upload_put_in_place_of_an_old_one(
    sqlite_store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old file no row names, and an upload of the same bytes putting its own file in its
    place while the sweep asks the database which files are unnamed: the sweep looks at each
    file's age again under the writers' lock before removing it, and leaves the new one."""
    files = _files(sqlite_store)
    data = pdf_bytes(3)
    sha = _sha(data)
    sqlite_store.prepare_blob(write(tmp_path / "old.pdf", data), sha, len(data))
    old = time.time() - 7200
    os.utime(files.path(sha), (old, old))
    write(tmp_path / "new.pdf", data)
    sweep = files.sweep

    def sweep_with_an_upload(unknown: Any, locked: Any) -> int:
        def unknown_then_upload(hashes: set[str]) -> set[str]:
            answer = unknown(hashes)
            files.place(tmp_path / "new.pdf", sha, len(data))  # the upload's fresh file
            return answer

        return sweep(unknown_then_upload, locked)

    monkeypatch.setattr(files, "sweep", sweep_with_an_upload)
    assert sqlite_store.sweep_blob_files() == 0
    assert files.path(sha).exists()
    sqlite_store.store_document(
        new_document(),
        tmp_path / "new.pdf",
        sha256=sha,
        size=len(data),
        media_type="application/pdf",
    )
    assert b"".join(sqlite_store.document_chunks(sha)) == data


def test_retention_removes_the_file_once_its_rows_are_gone(
    sqlite_store: SqlMessageStore, tmp_path: Path
) -> None:
    files = _files(sqlite_store)
    data = pdf_bytes()
    path = write(tmp_path / "scan.pdf", data)
    stored = sqlite_store.store_document(
        new_document(), path, sha256=_sha(data), size=len(data), media_type="application/pdf"
    )
    with sqlite_store.db_engine.begin() as conn:
        conn.execute(
            update(messages)
            .where(messages.c.id == stored.message_id)
            .values(state="delivered", updated_at=utcnow() - timedelta(days=90))
        )
    assert files.path(_sha(data)).exists()
    a_newer_message(sqlite_store)
    assert sqlite_store.purge_range(timedelta(days=30)).rows == 1
    assert not files.path(_sha(data)).exists()
    with pytest.raises(KeyError):
        sqlite_store.document_chunks(_sha(data))


def test_a_missing_file_is_named_not_read_as_empty(
    sqlite_store: SqlMessageStore, tmp_path: Path
) -> None:
    files = _files(sqlite_store)
    data = pdf_bytes()
    path = write(tmp_path / "scan.pdf", data)
    sqlite_store.store_document(
        new_document(), path, sha256=_sha(data), size=len(data), media_type="application/pdf"
    )
    files.path(_sha(data)).unlink()
    with pytest.raises(KeyError, match="missing"):
        list(sqlite_store.document_chunks(_sha(data)))


def test_our_own_spool_file_is_moved_into_place_unread(
    sqlite_store: SqlMessageStore, tmp_path: Path
) -> None:
    """An upload's spool file (hashed as it was written) becomes the stored file itself: the
    same inode, its bytes written once."""
    files = _files(sqlite_store)
    data = pdf_bytes(2)
    spool = write(tmp_path / "document-1.part", data)
    inode = spool.stat().st_ino
    given = base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert sqlite_store.prepare_blob(spool, _sha(data), len(data), sha1=given) == given
    assert not spool.exists()
    assert files.path(_sha(data)).stat().st_ino == inode
    [stored] = sqlite_store.store_documents(
        [DocumentToStore(new_document(), spool, _sha(data), len(data), "application/pdf", given)]
    )
    assert not isinstance(stored, Exception)
    assert stored.info.sha1 == given
    assert b"".join(sqlite_store.document_chunks(_sha(data))) == data


def test_an_upload_through_the_intake_leaves_no_spool_and_one_file(tmp_path: Path) -> None:
    import asyncio

    from engine.documents.intake import DocumentFields, DocumentIntake

    db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    intake = DocumentIntake(store, max_bytes=1 << 20, spool_dir=tmp_path / "spool")
    data = pdf_bytes(1)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 100):
            yield data[i : i + 100]

    async def upload() -> Any:
        try:
            return await intake.accept(
                chunks(),
                DocumentFields(mrn="MRN1", document_type="insurance-card", date="2026-12-01"),
                channel="http",
                sender="front-desk",
            )
        finally:
            intake.close()

    accepted = asyncio.run(upload())
    assert not accepted.duplicate
    assert list((tmp_path / "spool").iterdir()) == []
    files = _files(store)
    assert files.path(accepted.sha256).read_bytes() == data
    assert [p.name for p in files.root.rglob("*") if p.is_file()] == [accepted.sha256]
    with db.connect() as conn:
        sha1 = conn.execute(select(document_blobs.c.sha1)).scalar_one()
    assert sha1 == base64.b64encode(hashlib.sha1(data).digest()).decode()
    db.dispose()


def test_adopting_across_file_systems_copies_under_a_name_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool on another file system than the blobs (EXDEV on the rename): the file is
    copied into a temporary file of its own (two uploads of the same bytes at once wrote into
    one fixed ``.part-`` name before), fsynced and renamed; nothing temporary is left."""
    from engine.store import blobs as module

    files = BlobFiles(tmp_path / "engine.blobs")
    data = pdf_bytes(4)
    spool = write(tmp_path / "spool.bin", data)
    renames: list[tuple[str, str]] = []
    replace = os.replace

    def across(src: Any, dst: Any) -> None:
        renames.append((Path(src).name, Path(dst).name))
        if Path(src) == spool:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        replace(src, dst)

    monkeypatch.setattr(module.os, "replace", across)
    files.adopt(spool, _sha(data))
    assert files.path(_sha(data)).read_bytes() == data
    [(_, _), (temporary, final)] = renames
    assert final == _sha(data) and temporary.startswith(".part-") and temporary != f".part-{final}"
    assert [p.name for p in files.path(_sha(data)).parent.iterdir()] == [_sha(data)]


def test_a_new_folder_of_bytes_is_fsynced_into_the_one_above(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first file under a prefix makes its folder: that folder's name is fsynced into the
    root (and the root's into its parent, on first use), not only the file and its folder."""
    from engine.store import blobs as module

    synced: list[Path] = []
    fsync_dir = module._fsync_dir

    def recorded(folder: Path) -> None:
        synced.append(folder)
        fsync_dir(folder)

    monkeypatch.setattr(module, "_fsync_dir", recorded)
    files = BlobFiles(tmp_path / "engine.blobs")
    data = pdf_bytes(5)
    files.place(write(tmp_path / "scan.pdf", data), _sha(data), len(data))
    folder = files.path(_sha(data)).parent
    assert set(synced) == {tmp_path, files.root, folder}
    synced.clear()
    # more bytes under the same prefix: the folder is there, only it is fsynced after the rename
    other = next(
        d for n in range(10_000) if _sha(d := data + str(n).encode())[:2] == _sha(data)[:2]
    )
    files.place(write(tmp_path / "scan2.pdf", other), _sha(other), len(other))
    assert files.path(_sha(other)).parent == folder and synced == [folder]
