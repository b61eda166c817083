"""Retention's one statement on PostgreSQL (engine/store/purge.py) against an upload of the same
bytes at the same moment: the purge reads what a batch's document messages would free without
locks, then deletes their bytes in one statement; an upload that reuses those bytes meanwhile
(``Documents._put_blob``) must keep them, whether it committed between the read and the
statement or is still in flight while the statement runs. Before this check the new document
or refusal would have named bytes no longer stored."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, event

from engine.store import SqlMessageStore, create_db_engine
from engine.store.blobs import BlobFiles
from engine.store.documents import DocumentToStore
from engine.store.purge import Purged
from tests.conftest import a_newer_message
from tests.documents.intake_support import new_document, write
from tests.documents.test_document_retention import _blobs, _delivered_long_ago, _put
from tests.documents.test_refusal_retention import _refuse

KEEP = timedelta(days=30)
T = TypeVar("T")


@pytest.fixture
def pg_store(postgres_schema_url: str) -> Iterator[SqlMessageStore]:
    db = create_db_engine(postgres_schema_url)
    store = SqlMessageStore(db)
    store.migrate()
    try:
        yield store
    finally:
        db.dispose()


def _old_document(store: SqlMessageStore, tmp_path: Path) -> tuple[Path, str, bytes]:
    """One document delivered long ago (its retention due); its file, SHA-256 and bytes."""
    data = b"%PDF-1.4\n" + os.urandom(300_000)
    path = write(tmp_path / "scan.pdf", data)
    mid, sha = _put(store, path, "MRN1")
    _delivered_long_ago(store, mid)
    return path, sha, data


def _stored(store: SqlMessageStore, sha: str) -> bytes:
    return b"".join(store.document_chunks(sha))


#: the purge's reads before its statement, each a moment for an upload to come between:
#: after the bytes' row versions, after the refusals outside the batch that keep bytes
READS = {"versions": "document_blobs.xmin", "refusals": "state IN ('error', 'replayed')"}


def _after_the_read(store: SqlMessageStore, meanwhile: Any, read: str = "versions") -> Purged:
    """Purge everything due, with ``meanwhile`` run once right after the purge's ``read``
    (:data:`READS`), before its statement."""
    done: list[bool] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not done and READS[read] in statement:
            done.append(True)
            meanwhile()

    event.listen(store.db_engine, "after_cursor_execute", after)
    try:
        purged = store.purge_range(KEEP, lock_limit_s=5.0)
    finally:
        event.remove(store.db_engine, "after_cursor_execute", after)
    assert done, f"the purge never read {read}"
    return purged


@pytest.mark.postgres
@pytest.mark.parametrize("read", list(READS))
def test_a_refusal_keeping_the_bytes_after_a_read_keeps_them(
    pg_store: SqlMessageStore, tmp_path: Path, read: str
) -> None:
    """A refused upload of the same bytes, committed between one of the purge's reads and its
    statement: the purge takes the old document but not the bytes the refusal now keeps (the
    refusals outside the batch read before the versions, such a refusal committed between the
    two was seen by neither)."""
    path, sha, data = _old_document(pg_store, tmp_path)
    refusals: list[int] = []
    purged = _after_the_read(pg_store, lambda: refusals.append(_refuse(pg_store, path)), read)
    assert (purged.rows, purged.documents) == (1, 1) and refusals
    assert _blobs(pg_store, sha) == (1, True)
    assert _stored(pg_store, sha) == data


@pytest.mark.postgres
def test_a_document_reusing_the_bytes_after_the_read_keeps_them(
    pg_store: SqlMessageStore, tmp_path: Path
) -> None:
    path, sha, data = _old_document(pg_store, tmp_path)
    purged = _after_the_read(pg_store, lambda: _put(pg_store, path, "MRN2"))
    assert (purged.rows, purged.documents) == (1, 1)
    assert _blobs(pg_store, sha) == (1, True)
    assert _stored(pg_store, sha) == data


def _waits_for_a_lock(admin: Engine, pid: int) -> bool:
    """Whether the backend ``pid`` (the purge's own) is waiting for a lock."""
    with admin.connect() as conn:
        return (
            conn.exec_driver_sql(
                f"SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = {pid}"
            ).scalar_one_or_none()
            is True
        )


def beside_an_upload(
    store: SqlMessageStore, path: Path, sha: str, action: Callable[[], T], marker: str = ""
) -> tuple[bool, list[T], Any]:
    """Run ``action`` in a thread while an upload of the bytes at ``path`` (another patient)
    holds its transaction open, until ``action``'s statement (the first of ``store``'s whose
    text holds ``marker``) waits on the upload's row lock; then commit the upload. Whether it
    waited, what ``action`` returned, and the upload's result."""
    running: list[int] = []

    @event.listens_for(store.db_engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if marker in statement:
            running.append(conn.connection.dbapi_connection.info.backend_pid)

    url = store.db_engine.url.render_as_string(hide_password=False)
    upload, admin = SqlMessageStore(create_db_engine(url)), create_db_engine(url)
    result: list[T] = []
    waited = False
    try:
        with upload._tx() as conn:  # the upload's own transaction, kept open here
            size = path.stat().st_size
            item = DocumentToStore(new_document("MRN2"), path, sha, size, "application/pdf")
            stored = upload._store_one(conn, item)
            assert not isinstance(stored, Exception) and not stored.duplicate
            thread = threading.Thread(target=lambda: result.append(action()))
            thread.start()
            for _ in range(400):  # until the statement waits on the upload's row lock
                if running and (waited := _waits_for_a_lock(admin, running[-1])):
                    break
                if not thread.is_alive():
                    break
                thread.join(0.05)
        thread.join(60)
    finally:
        event.remove(store.db_engine, "before_cursor_execute", record)
        upload.db_engine.dispose()
        admin.dispose()
    return waited, result, stored


@pytest.mark.postgres
def test_an_upload_reusing_the_bytes_while_the_statement_runs_keeps_them(
    pg_store: SqlMessageStore, tmp_path: Path
) -> None:
    """A second upload of the same bytes (another patient) in flight, its transaction open,
    when the purge's statement comes to the bytes' row: the statement waits for it, then finds
    the row changed and leaves the bytes; the second document is stored with them."""
    path, sha, data = _old_document(pg_store, tmp_path)
    waited, result, stored = beside_an_upload(
        pg_store, path, sha, lambda: pg_store.purge_range(KEEP, lock_limit_s=60)
    )
    assert waited, "the purge's statement never waited for the upload"
    assert result and (result[0].rows, result[0].documents) == (1, 1)
    assert _blobs(pg_store, sha) == (1, True)
    assert _stored(pg_store, sha) == data
    assert pg_store.raw(stored.message_id) is not None


@pytest.mark.postgres
def test_an_upload_after_the_purge_stores_the_bytes_again(
    pg_store: SqlMessageStore, tmp_path: Path
) -> None:
    path, sha, data = _old_document(pg_store, tmp_path)
    assert pg_store.purge_range(KEEP, lock_limit_s=5.0).rows == 1
    assert _blobs(pg_store, sha) == (0, False)
    _put(pg_store, path, "MRN1")
    assert _blobs(pg_store, sha) == (1, True)
    assert _stored(pg_store, sha) == data
    assert hashlib.sha256(_stored(pg_store, sha)).hexdigest() == sha


def test_on_sqlite_an_upload_right_after_the_purge_commits_keeps_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite keeps the bytes as files beside the database, removed once the purge's deletion
    of their rows has committed. An upload of the same bytes that came between that commit and
    the removal found no row and the file still in place, recorded the bytes again, and lost
    them to the removal: the removal is now done before the purge lets go of the writers'
    lock, and the upload, waiting for that lock, puts the file back after."""
    store = SqlMessageStore(create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}"))
    store.migrate()
    path, sha, data = _old_document(store, tmp_path)
    uploads: list[Any] = []
    threads: list[threading.Thread] = []
    removing = BlobFiles.remove

    def remove(files: BlobFiles, hashes: Any) -> None:
        # an upload of the same bytes (another patient) arrives right after the commit
        threads.append(threading.Thread(target=lambda: uploads.append(_put(store, path, "MRN2"))))
        threads[0].start()
        threads[0].join(0.5)  # it waits for the writers' lock (before: stored in this time)
        removing(files, hashes)

    monkeypatch.setattr(BlobFiles, "remove", remove)
    a_newer_message(store)
    assert store.purge_range(KEEP).rows == 1
    assert len(threads) == 1, "the purge removed no file"
    threads[0].join(30)
    assert not threads[0].is_alive() and len(uploads) == 1
    assert _blobs(store, sha) == (1, True)
    assert _stored(store, sha) == data
    store.db_engine.dispose()


@pytest.mark.postgres
def test_a_group_of_uploads_locks_the_stored_bytes_it_reuses_in_one_order(
    pg_store: SqlMessageStore, tmp_path: Path
) -> None:
    """A group commit that reuses two stored bytes, given in the reverse of their SHA-256s'
    order, while another session holds the first one's row: the group waits for it without
    holding the second, so another group reusing them the other way round cannot be waiting
    for it in turn (before, each reused row was locked as its document came, and two such
    groups on two nodes waited for each other until PostgreSQL's deadlock check failed one)."""
    stored = []
    for n in range(2):
        data = b"%PDF-1.4\n" + os.urandom(1000)
        path = write(tmp_path / f"scan{n}.pdf", data)
        stored.append((_put(pg_store, path, "MRN1")[1], path, len(data)))
    stored.sort()
    (first, _, _), (second, _, _) = stored
    group = [
        DocumentToStore(new_document("MRN2"), path, sha, size, "application/pdf")
        for sha, path, size in reversed(stored)
    ]
    pids: list[int] = []

    @event.listens_for(pg_store.db_engine, "before_cursor_execute")
    def record(conn: Any, *args: Any) -> None:
        pids.append(conn.connection.dbapi_connection.info.backend_pid)

    url = pg_store.db_engine.url.render_as_string(hide_password=False)
    other = create_db_engine(url)
    results: list[Any] = []
    nowait = "SELECT sha256 FROM document_blobs WHERE sha256 = '{}' FOR UPDATE NOWAIT"
    try:
        with other.connect() as holder:
            holder.begin()
            holder.exec_driver_sql(nowait.format(first))
            holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            thread = threading.Thread(
                target=lambda: results.append(pg_store.store_documents(group))
            )
            thread.start()
            blocked = False
            for _ in range(400):  # until the group waits for the held row
                if pids:
                    blocked = bool(
                        holder.exec_driver_sql(
                            "SELECT pg_stat_clear_snapshot(),"
                            f" {holder_pid} = ANY (pg_blocking_pids({pids[-1]}))"
                        ).one()[1]
                    )
                if blocked or not thread.is_alive():
                    break
                thread.join(0.05)
            assert blocked, "the group never waited for the held row"
            # the group holds no lock on the second bytes while it waits for the first
            assert holder.exec_driver_sql(nowait.format(second)).scalar_one() == second
            holder.rollback()
        thread.join(60)
    finally:
        event.remove(pg_store.db_engine, "before_cursor_execute", record)
        other.dispose()
    [done] = results
    assert [isinstance(r, Exception) for r in done] == [False, False]
    for sha, _, _ in stored:
        assert _blobs(pg_store, sha) == (1, True)
