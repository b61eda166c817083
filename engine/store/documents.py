"""Documents: each accepted document's metadata, its bytes (content-addressed, in chunks) and
the ``messages`` row of kind ``document`` that routes it, written in one transaction before the
document is accepted (engine/documents).

The bytes are stored once per SHA-256 (``document_blobs``): beside a SQLite database as a file
of their own (:mod:`engine.store.blobs`: written and fsynced by the caller's thread before the
transaction, so SQLite's one writer never waits on a document's bytes), in the database on
PostgreSQL (``document_chunks`` of at most 1 MiB; several nodes share it). The same bytes for
the same patient are one document (``documents.dedupe_key``): a second upload answers with the
first one's id and makes no second message.

The bytes are read from the spooled file one chunk at a time, hashed again as they go in: a file
that changed since the intake hashed it (a scanner still writing) is refused by the transaction
rolling back, never stored under a hash that is not its own. A document refused at intake (not a
PDF or image, an encrypted PDF, over the size cap, bad metadata) is still recorded, as a
``messages`` row of kind ``document`` in state ``error`` with the reason: its bytes kept when they
were all received, the first 4 KiB when it was over the cap (as an oversize MLLP frame is).
Retention purges a refusal, and the bytes it kept when nothing else needs them, after the
retention period, as it purges delivered messages (:func:`purge_documents_of`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from engine.documents.model import DocumentInfo
from engine.store.blobs import BlobFiles, DocumentChanged
from engine.store.clean import clean, clean_key
from engine.store.db import Repository, sqlstate, utcnow
from engine.store.tables import (
    REFUSALS_STAY,
    document_blobs,
    document_chunks,
    documents,
    messages,
)

__all__ = [
    "kept_by_refusal",
    "purge_documents_of",
    "refused_hashes",
    "CHUNK_BYTES",
    "REFUSED_HEAD_BYTES",
    "DocumentChanged",
    "DocumentToStore",
    "Documents",
    "NewDocument",
    "RefusedDocument",
    "StoredDocument",
]

#: the largest chunk of a document's bytes in one row
CHUNK_BYTES = 1024 * 1024
#: what is kept of a document refused for its size (the rest was never read)
REFUSED_HEAD_BYTES = 4096
#: how long one statement of the orphaned bytes' sweep may hold their rows (an upload reusing
#: them waits that long at most): ``Documents.sweep_orphan_bytes``
ORPHAN_LOCK_LIMIT_S = 0.5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewDocument:
    """A document to store: who and what it is. Its bytes come beside it (a file, already
    hashed and typed from its magic by the intake)."""

    patient_mrn: str
    document_type: str
    document_date: str  # YYYY-MM-DD
    sender: str
    channel: str  # folder, http, mllp
    patient_authority: str = ""
    practice: str | None = None
    department: str | None = None
    appointment: str | None = None
    encounter: str | None = None
    author: str | None = None
    title: str | None = None
    file_name: str | None = None
    unique_number: str | None = None
    parent_number: str | None = None  # TXA-13 of an MDM addendum or replacement
    relation: str | None = None  # appends, replaces (FHIR relatesTo.code)
    #: where it came from (an address, the folder's path), for the message row
    peer: str = ""


@dataclass(frozen=True)
class StoredDocument:
    """A document once committed: its metadata (with its id), its message, and whether it was
    already stored (the same bytes for the same patient)."""

    info: DocumentInfo
    message_id: int
    duplicate: bool


@dataclass(frozen=True)
class DocumentToStore:
    """One document of a group commit (:meth:`Documents.store_documents`)."""

    new: NewDocument
    source: Path
    sha256: str
    size: int
    media_type: str
    #: the bytes' base64 SHA-1 when :meth:`Documents.prepare_blob` already put them in place
    sha1: str | None = None


@dataclass(frozen=True)
class RefusedDocument:
    """A document the intake refused, to record (a ``messages`` row, state ``error``).

    ``fields`` is the metadata as it was given (it may be what was wrong); ``head`` the first
    bytes of a document refused for its size (at most :data:`REFUSED_HEAD_BYTES` are kept).
    """

    reason: str
    channel: str
    sender: str
    peer: str = ""
    size: int = 0
    sha256: str | None = None
    media_type: str | None = None
    file_name: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    head: bytes | None = None


def _width(table: Any, column: str) -> int | None:
    return getattr(table.c[column].type, "length", None)


#: DocumentInfo's text fields, cleaned and cut to their ``documents`` columns' widths
_TEXT = {
    f.name: _width(documents, f.name)
    for f in fields(DocumentInfo)
    if f.name not in ("document_id", "sha256", "size", "media_type", "sha1")
}
_MSG = {name: _width(messages, name) for name in ("peer", "trigger", "sending_application")}
_MSG_KEY_WIDTH = _width(messages, "dedupe_key")
_DOC_KEY_WIDTH = _width(documents, "dedupe_key")
#: a refused document's metadata as given: each value cut to this (it may be anything)
_FIELD_WIDTH = 256


def _info(row: Any) -> DocumentInfo:
    # (the SHA-1 is the blob's, not the row's: a document read back here is mapped with the
    # SHA-1 computed from its chunks)
    data = {
        f.name: getattr(row, f.name)
        for f in fields(DocumentInfo)
        if f.name not in ("document_id", "sha1")
    }
    return DocumentInfo(document_id=int(row.id), **data)


def dedupe_key(sha256: str, authority: str, mrn: str) -> str:
    """The same bytes for the same patient (``sha256|authority|mrn``): one document."""
    key = clean_key(f"{sha256}|{authority}|{mrn}", _DOC_KEY_WIDTH)
    assert key is not None
    return key


class Documents(Repository):
    """The documents' statements (mixed into :class:`~engine.store.SqlMessageStore`)."""

    _blob_files: BlobFiles | None | bool = False  # False: not looked up yet

    @property
    def blob_files(self) -> BlobFiles | None:
        """Where the bytes go as files (beside a SQLite database), or None (in the database)."""
        if self._blob_files is False:
            self._blob_files = BlobFiles.for_engine(self.db_engine)
        assert self._blob_files is not True
        return self._blob_files

    def prepare_blob(
        self, source: Path, sha256: str, size: int, *, sha1: str | None = None
    ) -> str | None:
        """Beside SQLite, put ``source``'s bytes in place as a file (fsynced) *before* the
        transaction that records them, in the caller's thread: returns their SHA-1, to pass
        as ``DocumentToStore.sha1``. None when there is nothing to do first (the bytes go in
        the database, or they are in place already). DocumentChanged when the file's bytes are
        not ``sha256``: nothing placed.

        ``sha1`` given: ``source`` is a file the engine wrote and hashed itself (an upload's
        spool file, SHA-256 and SHA-1 computed as it was written): it is moved into place
        unread (and is gone after), so its bytes are written once, not copied."""
        files = self.blob_files
        if files is None or files.has(sha256, size):
            return None
        if sha1 is not None:
            files.adopt(source, sha256)
            return sha1
        return files.place(source, sha256, size)

    _BY_KEY = select(documents).where(documents.c.dedupe_key == bindparam("key"))
    _BLOB = select(document_blobs.c.chunks, document_blobs.c.stored).where(
        document_blobs.c.sha256 == bindparam("sha")
    )
    #: bytes stored already: their row is *updated* (to itself), not only read, so that it has a
    #: new row version: retention's purge statement on PostgreSQL deletes bytes only at the
    #: version it read while no document needed them (engine/store/purge.py), and this one
    #: either waits for that purge (then finds no row, and stores the bytes again) or makes it
    #: keep them
    _REUSE_BLOB = (
        update(document_blobs)
        .where(document_blobs.c.sha256 == bindparam("sha"))
        .values(sha1=document_blobs.c.sha1)
        .returning(document_blobs.c.sha1)
    )
    #: PostgreSQL: the rows of several stored bytes a group of uploads reuses (``_REUSE_BLOB``
    #: locks each until the group commits), locked first, in the order of their SHA-256: two
    #: groups on two nodes reusing the same two in the other order would otherwise each wait
    #: for the other until PostgreSQL's deadlock check failed one (SQLite: a read, its writers
    #: take turns)
    _LOCK_BLOBS = (
        select(document_blobs.c.sha256)
        .where(document_blobs.c.sha256.in_(bindparam("shas", expanding=True)))
        .order_by(document_blobs.c.sha256)
        .with_for_update()
    )
    _INSERT_CHUNK = insert(document_chunks)
    _CHUNK = select(document_chunks.c.data).where(
        document_chunks.c.sha256 == bindparam("sha"), document_chunks.c.seq == bindparam("seq")
    )
    _INSERT_DOCUMENT = insert(documents).returning(documents.c.id)
    _INSERT_MESSAGE = insert(messages).returning(messages.c.id)
    _LINK = (
        update(documents)
        .where(documents.c.id == bindparam("doc_id"))
        .values(message_id=bindparam("mid"))
    )

    def store_document(
        self, new: NewDocument, source: Path, *, sha256: str, size: int, media_type: str
    ) -> StoredDocument:
        """Commit ``source``'s bytes (hashed ``sha256``, ``size`` bytes, of ``media_type``),
        the document and its ``messages`` row (kind ``document``, state ``received``, raw: the
        metadata as JSON) in one transaction; a duplicate returns the stored one.

        Committed before returning (on SQLite with the receiver's fsync): the caller may
        answer "accepted" once this returns. When the file's bytes are not
        ``sha256`` and ``size`` (it changed since it was hashed): DocumentChanged, nothing stored.
        """
        [result] = self.store_documents([DocumentToStore(new, source, sha256, size, media_type)])
        if isinstance(result, Exception):
            raise result
        return result

    def store_documents(self, batch: Sequence[DocumentToStore]) -> list[StoredDocument | Exception]:
        """Commit several documents in ONE transaction (group commit: one fsync for all the
        uploads that arrived together), each as :meth:`store_document` would, in a savepoint of
        its own: one that fails (its file changed: DocumentChanged) is rolled back alone and its
        exception returned in its place. A document the same as an earlier one of the batch is
        that one's duplicate. If the transaction itself fails, it raises (nothing stored)."""
        results: list[StoredDocument | Exception] = []
        with self._tx() as conn:
            shas = sorted({item.sha256 for item in batch})
            if len(shas) > 1:  # the rows of stored bytes this group reuses, locked in one order
                conn.execute(self._LOCK_BLOBS, {"shas": shas})
            for item in batch:
                results.append(self._store_one(conn, item))
        return results

    def _store_one(self, conn: Connection, item: DocumentToStore) -> StoredDocument | Exception:
        new = item.new
        text: dict[str, Any] = {
            name: clean(getattr(new, name), width) for name, width in _TEXT.items()
        }
        text["patient_authority"] = text["patient_authority"] or ""
        key = dedupe_key(item.sha256, text["patient_authority"], text["patient_mrn"] or "")
        # PostgreSQL: two uploads of the same document (or of the same bytes) at once both find
        # nothing and the second insert breaks the unique key (once the first committed): its
        # retry finds the first
        for attempt in range(2):
            try:
                with conn.begin_nested():
                    found = conn.execute(self._BY_KEY, {"key": key}).first()
                    if found is not None:
                        mid = found.message_id
                        return StoredDocument(_info(found), int(mid or 0), duplicate=True)
                    return self._insert(conn, item, text, key)
            except IntegrityError as exc:
                if attempt:
                    return exc
            except DocumentChanged as exc:  # the file changed since it was hashed
                return exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _insert(
        self, conn: Connection, item: DocumentToStore, text: dict[str, Any], key: str
    ) -> StoredDocument:
        sha1 = self._put_blob(conn, item.source, item.sha256, item.size, placed=item.sha1)
        now = utcnow()
        doc_id = conn.execute(
            self._INSERT_DOCUMENT,
            {
                **text,
                "received_at": now,
                "updated_at": now,
                "sha256": item.sha256,
                "size": item.size,
                "media_type": item.media_type,
                "dedupe_key": key,
            },
        ).scalar_one()
        info = DocumentInfo(
            document_id=int(doc_id),
            sha256=item.sha256,
            size=item.size,
            media_type=item.media_type,
            sha1=sha1,
            **text,
        )
        raw = info.to_json()
        mid = conn.execute(
            self._INSERT_MESSAGE,
            {
                "received_at": now,
                "updated_at": now,
                "channel": item.new.channel,
                "peer": clean(item.new.peer, _MSG["peer"]) or "",
                "kind": "document",
                "size": len(raw),
                "raw": raw,
                "state": "received",
                "message_type": "DOC",
                "trigger": clean(info.document_type, _MSG["trigger"]),
                "sending_application": clean(info.sender, _MSG["sending_application"]),
                "patient_key": clean(info.patient_key, _width(messages, "patient_key")),
                "dedupe_key": clean_key(f"document|{key}", _MSG_KEY_WIDTH),
            },
        ).scalar_one()
        conn.execute(self._LINK, {"doc_id": doc_id, "mid": mid})
        return StoredDocument(info, int(mid), duplicate=False)

    def _put_blob(
        self,
        conn: Connection,
        source: Path,
        sha256: str,
        size: int,
        *,
        placed: str | None = None,
    ) -> str | None:
        """Record the bytes of ``sha256``; nothing when already stored. Beside SQLite their
        file is put in place (unless :meth:`prepare_blob` did: ``placed`` is then its SHA-1);
        elsewhere the file's bytes go into ``document_chunks`` one chunk at a time (never the
        whole file in memory). Either way they are checked to still hash to ``sha256``.

        Returns the bytes' base64 SHA-1 (FHIR Attachment.hash), hashed here beside the SHA-256
        while the bytes pass anyway, so the processor never reads a document back to map it
        (that read was a fifth of the worker's time per 1 MiB document); None for bytes stored
        before the store kept it."""
        row = conn.execute(self._REUSE_BLOB, {"sha": sha256}).first()
        if row is not None:
            return str(row.sha1) if row.sha1 else None
        files = self.blob_files
        if files is not None:
            if placed is None or not files.has(sha256, size):
                placed = files.place(source, sha256, size)
            conn.execute(
                insert(document_blobs),
                {
                    "sha256": sha256,
                    "size": size,
                    "chunks": 0,
                    "created_at": utcnow(),
                    "sha1": placed,
                    "stored": "file",
                },
            )
            return placed
        digest = hashlib.sha256()
        sha1 = hashlib.sha1(usedforsecurity=False)
        seq = total = 0
        with source.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
                sha1.update(chunk)
                total += len(chunk)
                conn.execute(self._INSERT_CHUNK, {"sha256": sha256, "seq": seq, "data": chunk})
                seq += 1
        if total != size or digest.hexdigest() != sha256:
            # the transaction rolls back: no chunk of bytes that are not what was hashed stays
            raise DocumentChanged(
                f"the file changed since it was hashed (sha256 {sha256[:12]}, {size} bytes)"
            )
        hash_b64 = base64.b64encode(sha1.digest()).decode("ascii")
        conn.execute(
            insert(document_blobs),
            {
                "sha256": sha256,
                "size": size,
                "chunks": seq,
                "created_at": utcnow(),
                "sha1": hash_b64,
                "stored": "db",
            },
        )
        return hash_b64

    def refuse_document(self, refused: RefusedDocument, source: Path | None = None) -> int:
        """Record a refused document: a ``messages`` row (kind ``document``, state ``error``,
        the reason) whose raw is JSON naming what came (size, hash, type, metadata as given).

        With ``source`` (and ``refused.sha256``) the bytes are kept in the blob store as an
        accepted document's are; without, the first 4 KiB of ``refused.head`` go in the JSON
        (a document over the size cap, read no further). Returns the message's id.
        """
        kept = source is not None and refused.sha256 is not None
        body: dict[str, Any] = {
            "refused": refused.reason,
            "sender": refused.sender,
            "channel": refused.channel,
            "size": refused.size,
            "sha256": refused.sha256,
            "media_type": refused.media_type,
            "file_name": refused.file_name,
            "fields": {str(k)[:64]: str(v)[:_FIELD_WIDTH] for k, v in refused.fields.items()},
            "bytes_kept": kept,
        }
        if not kept and refused.head is not None:
            body["head_base64"] = base64.b64encode(refused.head[:REFUSED_HEAD_BYTES]).decode()
        raw = orjson.dumps(body)
        doc_type = refused.fields.get("document_type")
        for attempt in range(2):
            try:
                with self._tx() as conn:
                    if kept:
                        assert source is not None and refused.sha256 is not None
                        self._put_blob(conn, source, refused.sha256, refused.size)
                    now = utcnow()
                    mid = conn.execute(
                        self._INSERT_MESSAGE,
                        {
                            "received_at": now,
                            "updated_at": now,
                            "channel": refused.channel,
                            "peer": clean(refused.peer, _MSG["peer"]) or "",
                            "kind": "document",
                            "size": len(raw),
                            "raw": raw,
                            "state": "error",
                            "reason": clean(refused.reason, _width(messages, "reason")),
                            "message_type": "DOC",
                            "trigger": clean(doc_type, _MSG["trigger"]),
                            "sending_application": clean(
                                refused.sender, _MSG["sending_application"]
                            ),
                        },
                    ).scalar_one()
                    return int(mid)
            except IntegrityError:  # the same bytes' blob written at the same moment
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def document_chunks(self, sha256: str) -> Iterator[bytes]:
        """The bytes stored under ``sha256``, chunk by chunk (blocking: run it in a thread).

        KeyError when no bytes are stored under it. Each chunk is read in a short read of its
        own: the bytes never change once stored, and no transaction stays open while the
        caller sends a chunk somewhere slow.
        """
        with self.db_engine.connect() as conn:
            row = conn.execute(self._BLOB, {"sha": sha256}).first()
        if row is None:
            raise KeyError(f"no document bytes stored under sha256 {sha256[:12]}")
        if row.stored == "file":
            files = self.blob_files
            if files is None:
                raise KeyError(f"the document bytes {sha256[:12]} are in a file, not here")
            return files.chunks(sha256)
        return self._chunks(sha256, int(row.chunks))

    def sweep_blob_files(self) -> int:
        """Remove the files of bytes no row names (a commit that crashed after its file was put
        in place; bytes purged while a file was being read): only files older than an hour."""
        files = self.blob_files
        if files is None:
            return 0

        def unknown(hashes: set[str]) -> set[str]:
            ordered, known = sorted(hashes), set[str]()
            with self.db_engine.connect() as conn:
                for i in range(0, len(ordered), 500):
                    known.update(
                        conn.execute(
                            select(document_blobs.c.sha256).where(
                                document_blobs.c.sha256.in_(ordered[i : i + 500])
                            )
                        ).scalars()
                    )
            return hashes - known

        return files.sweep(unknown, self._write_lock.held)

    #: bytes stored longer ago than this that nothing names are swept (a few uploads in
    #: flight name bytes they have just stored, in their own transaction)
    ORPHAN_AGE_S = 3600.0

    def sweep_orphan_bytes(
        self, page: int = 500, group: int = 10, stop: Callable[[], bool] | None = None
    ) -> int:
        """PostgreSQL: delete stored document bytes (``document_blobs`` rows and their chunks)
        that no document names and no refusal keeps, stored over :attr:`ORPHAN_AGE_S` ago; how
        many. Retention frees bytes in the statement that purges their last document, but two
        purges at once (a leader replaced mid-batch while the old one finishes) each see the
        other's documents still there and both leave the bytes their documents shared, which
        nothing else would ever remove.

        Read without locks, ``page`` rows a statement: the row versions of every candidate
        first, then the refusals that keep bytes, once (as retention reads them). Then
        deleted ``group`` at a time, each group one statement bounded by
        :data:`ORPHAN_LOCK_LIMIT_S` (an upload reusing those bytes waits at most that) and
        only at the version read and still unnamed: an upload that reused the bytes meanwhile
        updated their row and keeps them. A group cancelled at the limit is tried one by one,
        and bytes whose own deletion is cancelled are left for the next sweep. ``stop`` is
        asked between groups. SQLite's purges take turns: nothing to sweep (its files of
        bytes: :meth:`sweep_blob_files`)."""
        stopped = stop or (lambda: False)
        if self.db_engine.dialect.name != "postgresql":
            return 0
        cutoff = utcnow() - timedelta(seconds=self.ORPHAN_AGE_S)
        blobs: dict[str, str] = {}
        after = ""
        while not stopped():
            with self.db_engine.connect() as conn:  # a transaction a page: no table held long
                found = {"after": after, "cutoff": cutoff, "page": page}
                rows = conn.execute(self._ORPHANS, found).all()
            blobs.update({str(r.sha256): str(r.version) for r in rows})
            if len(rows) < page:
                break
            after = rows[-1].sha256
        if blobs:
            with self.db_engine.connect() as conn:
                for sha in refused_hashes(conn, set(blobs), set()):
                    del blobs[sha]
        items, swept = list(blobs.items()), 0
        for i in range(0, len(items), group):
            if stopped():
                break
            try:
                swept += self._sweep_group(items[i : i + group])
            except DBAPIError as exc:  # this group waits for the next sweep; the others go on
                log.warning("document bytes not swept", extra={"error": type(exc).__name__})
        return swept

    def _sweep_group(self, items: list[tuple[str, str]]) -> int:
        """One group of :meth:`sweep_orphan_bytes` in one statement, bounded at
        :data:`ORPHAN_LOCK_LIMIT_S`; cancelled there, each alone. Alone, only the wait for
        the bytes' row is bounded so (their deletion may take longer: a large document's
        chunks), and bytes still held are left for the next sweep."""
        limit_ms = max(1, round(ORPHAN_LOCK_LIMIT_S * 1000))
        alone = len(items) == 1
        try:
            with self.db_engine.begin() as conn:
                if alone:
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {limit_ms}")
                    conn.exec_driver_sql("SET LOCAL statement_timeout = 60000")
                else:
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {limit_ms}")
                shas, versions = [sha for sha, _ in items], [ver for _, ver in items]
                return int(
                    conn.execute(self._SWEEP, {"shas": shas, "versions": versions}).scalar_one()
                )
        except DBAPIError as exc:
            # query_canceled (the group's limit) or lock_not_available (a row held)
            if sqlstate(exc) not in ("57014", "55P03"):
                raise
        if not alone:
            return sum(self._sweep_group([item]) for item in items)
        log.warning("document bytes no document names left: their row was held")
        return 0

    _ORPHANS = text(
        "SELECT b.sha256, b.xmin::text AS version FROM document_blobs b "
        "WHERE b.sha256 > :after AND b.created_at < :cutoff "
        "AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.sha256 = b.sha256) "
        "ORDER BY b.sha256 LIMIT :page"
    )
    _SWEEP = text(
        "WITH read AS (SELECT * FROM unnest(CAST(:shas AS text[]), CAST(:versions AS text[])) "
        "AS r(sha, version)), "
        "doomed AS (DELETE FROM document_blobs b USING read "
        "WHERE b.sha256 = read.sha AND b.xmin::text = read.version "
        "AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.sha256 = b.sha256) "
        "RETURNING b.sha256), "
        "chunks AS (DELETE FROM document_chunks c WHERE c.sha256 IN (SELECT sha256 FROM doomed)) "
        "SELECT count(*) FROM doomed"
    )

    def _chunks(self, sha256: str, count: int) -> Iterator[bytes]:
        for seq in range(count):
            with self.db_engine.connect() as conn:
                data = conn.execute(self._CHUNK, {"sha": sha256, "seq": seq}).scalar_one()
            yield bytes(data)


def kept_by_refusal(raw: bytes) -> str | None:
    """The SHA-256 of the bytes a refused upload kept (its ``messages`` row's raw, the JSON
    :meth:`Documents.refuse_document` writes), or None: not a refusal, or none kept."""
    try:
        body = orjson.loads(bytes(raw))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or "refused" not in body or not body.get("bytes_kept"):
        return None
    sha = body.get("sha256")
    return sha if isinstance(sha, str) else None


def refused_hashes(conn: Connection, candidates: set[str], purged: set[int]) -> set[str]:
    """Of ``candidates``, the SHA-256s whose bytes a refusal that stays still keeps (a row of
    kind ``document`` in state ``error``, or ``replayed`` by an operator, not among ``purged``):
    its bytes go only with the last refusal (or document) that names them."""
    kept: set[str] = set()
    # the terms of ix_messages_refusals, literally; SQLite, which prefers the index on state
    # (every message in error), is told to take it
    table = (
        "messages INDEXED BY ix_messages_refusals" if conn.dialect.name == "sqlite" else "messages"
    )
    rows = conn.execute(
        select(text("id"), text("raw")).select_from(text(table)).where(text(REFUSALS_STAY))
    )
    for mid, raw in rows:
        if mid not in purged and (sha := kept_by_refusal(raw)) in candidates:
            kept.add(sha)
    return kept


def purge_documents_of(conn: Connection, message_ids: Sequence[int]) -> set[str]:
    """Retention on SQLite, in the transaction that purges ``message_ids`` (messages of kind
    ``document``; PostgreSQL's one statement does the same: engine/store/purge.py): their
    documents go with them, and so do the bytes no other document (nor a
    refusal that stays) still needs, a purged refusal's kept bytes too. Returns the SHA-256s
    whose bytes are files (beside SQLite): the caller removes them once its transaction has
    committed (:meth:`BlobFiles.remove`), never before. A document whose message is not purged
    (waiting for its patient, dead, replayed onto a copy that is not delivered) keeps its row
    and its bytes."""
    if not message_ids:
        return set()
    rows = conn.execute(
        select(documents.c.id, documents.c.message_id, documents.c.sha256).where(
            documents.c.message_id.in_(message_ids)
        )
    ).all()
    if rows:
        conn.execute(delete(documents).where(documents.c.id.in_([r.id for r in rows])))
    hashes = {r.sha256 for r in rows}
    # the refusals among them (no document row): the bytes each kept, named in its raw
    placed = {r.message_id for r in rows}
    refusals = [m for m in message_ids if m not in placed]
    if refusals:
        for raw in conn.execute(select(messages.c.raw).where(messages.c.id.in_(refusals))):
            if (sha := kept_by_refusal(raw[0])) is not None:
                hashes.add(sha)
    if not hashes:
        return set()
    still = set(
        conn.execute(
            select(documents.c.sha256).where(documents.c.sha256.in_(hashes)).distinct()
        ).scalars()
    )
    gone = hashes - still
    if gone:
        gone -= refused_hashes(conn, gone, set(message_ids))
    if not gone:
        return set()
    files = set(
        conn.execute(
            select(document_blobs.c.sha256).where(
                document_blobs.c.sha256.in_(gone), document_blobs.c.stored == "file"
            )
        ).scalars()
    )
    conn.execute(delete(document_chunks).where(document_chunks.c.sha256.in_(gone)))
    conn.execute(delete(document_blobs).where(document_blobs.c.sha256.in_(gone)))
    return files
