"""The intake: a document received (uploaded, dropped in the folder) is stored before it is
accepted, as a message is.

Its bytes are spooled to a file under ``var_dir/spool`` while hashed (SHA-256) and counted, so a
25 MiB scan is never held in memory; reading stops one byte past the cap
(``ENGINE_MAX_DOCUMENT_BYTES``). Then its metadata is checked (who: the MRN; what: a type of the
site's document type table; when: a date), its type read from its bytes' magic
(:mod:`engine.documents.sniff`), and the store commits bytes, document and message in one
transaction (:meth:`~engine.store.documents.Documents.store_documents`): that commit is the
acceptance, with the receiver's fsync. Documents arriving together share one transaction (a
group commit, as the message receiver's), each in a savepoint of its own. The spooled file is
removed either way. The blocking work runs on threads of the intake's own.

A refused document is recorded too — a ``messages`` row of kind ``document``, state ``error``,
the reason — with its bytes when they were all read, its first 4 KiB when it was over the cap:
everything received is kept or its refusal is. :class:`DocumentRefused` then names the problem
(its ``kind`` picks the HTTP status) and the refusal's message id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterable, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

from engine.documents.sniff import DocumentRefused, RefusalKind, media_type_of, sniff
from engine.settings import Settings
from engine.store.documents import (
    REFUSED_HEAD_BYTES,
    DocumentChanged,
    DocumentToStore,
    NewDocument,
    RefusedDocument,
    StoredDocument,
)

if TYPE_CHECKING:
    from engine.mappings.document_types import DocumentTypes

__all__ = [
    "Accepted",
    "DocumentChanged",
    "DocumentFields",
    "DocumentIntake",
    "DocumentRefused",
    "DocumentStore",
    "RefusalKind",
    "Spool",
    "StoreUnavailable",
]

log = logging.getLogger(__name__)

#: a document type code when the site has no document type table
_TYPE_CODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: the longest value of each optional field (its ``documents`` column)
_WIDTHS = {
    "authority": 64,
    "practice": 64,
    "department": 64,
    "appointment": 128,
    "encounter": 128,
    "author": 255,
    "title": 255,
}
#: spooled files older than this are a crashed receiver's, removed at start
_STALE_SPOOL_S = 3600.0


class StoreUnavailable(Exception):
    """The store failed: nothing was accepted nor recorded; the sender must send again."""


class DocumentStore(Protocol):
    """What the intake needs of the store (:class:`~engine.store.SqlMessageStore`)."""

    def store_document(
        self, new: NewDocument, source: Path, *, sha256: str, size: int, media_type: str
    ) -> StoredDocument: ...

    def refuse_document(self, refused: RefusedDocument, source: Path | None = None) -> int: ...


@dataclass(frozen=True)
class DocumentFields:
    """A document's metadata as given (a form, a sidecar file, a file name): text, unchecked."""

    mrn: str | None = None
    document_type: str | None = None
    date: str | None = None
    authority: str | None = None
    practice: str | None = None
    department: str | None = None
    appointment: str | None = None
    encounter: str | None = None
    author: str | None = None
    title: str | None = None

    def given(self) -> dict[str, str]:
        """The fields that were given (for a refusal's record)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Accepted:
    """A document committed: what ``POST /documents`` answers."""

    document_id: int
    message_id: int
    sha256: str
    size: int
    media_type: str
    duplicate: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Spool:
    """A document's bytes on their way in: a file under the spool folder, hashed and counted
    as written. Past the cap nothing more is written (:attr:`over`); :attr:`head` keeps the
    first 4 KiB for the refusal's record. Blocking: write from a thread."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix="document-", suffix=".part")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.max_bytes = max_bytes
        self.size = 0
        self.over = False
        self.discarded = False
        self.head = b""
        self._hash = hashlib.sha256()
        self._sha1 = hashlib.sha1(usedforsecurity=False)

    def write(self, data: bytes) -> bool:
        """Add ``data``; False once the document is over the cap (read no more)."""
        if self.over:
            return False
        if len(self.head) < REFUSED_HEAD_BYTES:
            self.head += data[: REFUSED_HEAD_BYTES - len(self.head)]
        self.size += len(data)
        if self.size > self.max_bytes:
            self.over = True
            return False
        self._file.write(data)
        self._hash.update(data)
        self._sha1.update(data)
        return True

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def sha1(self) -> str:
        """The bytes' base64 SHA-1 (FHIR Attachment.hash), hashed as they were written."""
        return base64.b64encode(self._sha1.digest()).decode("ascii")

    def close(self) -> None:
        """Flush and close the file (no fsync: the store's commit is the durable copy)."""
        if not self._file.closed:
            self._file.close()

    def discard(self) -> None:
        """Close and remove the file (once: later calls do nothing)."""
        if self.discarded:
            return
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.discarded = True


def _hash_file(path: Path, max_bytes: int) -> tuple[str, int, bytes, bool]:
    """SHA-256, size, first 4 KiB and whether it is over the cap, of a file read in chunks."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            if not head:
                head = chunk[:REFUSED_HEAD_BYTES]
            size += len(chunk)
            if size > max_bytes:
                return "", size, head, True
            digest.update(chunk)
    return digest.hexdigest(), size, head, False


#: a group commit takes documents up to this many bytes together (at least one): the
#: transaction holds SQLite's one writer's lock while it copies them, and MLLP ACKs wait on it
_BATCH_BYTES = 8 * 1024 * 1024
_BATCH_DOCUMENTS = 32
#: threads for the documents' blocking work (spool writes, PDF checks, commits): their own, so
#: uploads waiting on a commit never take the threads the message receiver's commits run on
_THREADS = 16

T = TypeVar("T")


@dataclass
class _Slot:
    item: DocumentToStore
    result: StoredDocument | Exception | None = None
    done: bool = False


@dataclass
class _GroupCommit:
    """Documents stored together share one transaction, and one fsync (leader and followers:
    the thread that gets the commit lock commits every document waiting, its own and those
    queued behind it, while they wait; each then finds its result). An upload alone commits
    at once; eight at once pay for about one commit instead of eight."""

    store: DocumentStore
    _pending: list[_Slot] = field(default_factory=list)
    _queue_lock: threading.Lock = field(default_factory=threading.Lock)
    _commit_lock: threading.Lock = field(default_factory=threading.Lock)

    def store_document(self, item: DocumentToStore) -> StoredDocument:
        slot = _Slot(item)
        with self._queue_lock:
            self._pending.append(slot)
        while True:
            with self._commit_lock:
                if not slot.done:
                    self._commit(self._take())
            if slot.done:
                break
        if isinstance(slot.result, Exception):
            raise slot.result
        assert slot.result is not None
        return slot.result

    def _take(self) -> list[_Slot]:
        with self._queue_lock:
            size = 0
            n = 0
            for slot in self._pending[:_BATCH_DOCUMENTS]:
                if n and size + slot.item.size > _BATCH_BYTES:
                    break
                size += slot.item.size
                n += 1
            batch, self._pending = self._pending[:n], self._pending[n:]
        return batch

    def _commit(self, batch: list[_Slot]) -> None:
        items = [s.item for s in batch]
        results: Sequence[StoredDocument | Exception]
        try:
            many = getattr(self.store, "store_documents", None)
            if many is not None:
                results = many(items)
            else:
                results = [self._one(i) for i in items]
        except Exception as exc:  # the transaction failed: every document in it
            results = [exc] * len(batch)
        for slot, result in zip(batch, results, strict=True):
            slot.result, slot.done = result, True

    def _one(self, item: DocumentToStore) -> StoredDocument | Exception:
        try:
            return self.store.store_document(
                item.new,
                item.source,
                sha256=item.sha256,
                size=item.size,
                media_type=item.media_type,
            )
        except Exception as exc:
            return exc


def load_document_types(settings: Settings) -> frozenset[str] | None:
    """The site's document type codes (the built-in table with ENGINE_MAPPINGS_DIR's over it),
    or None when there is no table (any code of the right shape is then taken)."""
    from engine.mappings.document_types import load_document_types as load_table

    table = load_table(settings.mappings_dir)
    return frozenset(table.types) or None


class DocumentIntake:
    """Takes documents in: spool, check, commit (see the module docstring).

    ``document_types``: the site's document type table
    (:class:`~engine.mappings.document_types.DocumentTypes`) or the codes a document's type must
    be one of (None: any code matching ``^[a-z0-9][a-z0-9-]{0,63}$``); a reload swaps it
    (:meth:`use_document_types`). ``on_stored`` is called after each commit (to wake a worker
    in this process; the worker process polls the store).
    """

    #: the codes a document's type must be one of (None: any) and their names, by code
    _types: tuple[frozenset[str] | None, dict[str, str]]

    def __init__(
        self,
        store: DocumentStore,
        *,
        max_bytes: int,
        spool_dir: Path,
        timezone: str = "America/New_York",
        document_types: DocumentTypes | Collection[str] | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.spool_dir = spool_dir
        self.zone = ZoneInfo(timezone)
        self.use_document_types(document_types)
        self.on_stored = on_stored
        self._group = _GroupCommit(store)
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(
        cls, store: DocumentStore, settings: Settings, types: DocumentTypes | None = None
    ) -> DocumentIntake:
        """The intake of ``engine serve``: the cap, spool folder and time zone from the
        settings; the document type table given (the running configuration's), else read from
        the settings' mapping folder (a broken table stops start-up naming it)."""
        if types is None:
            from engine.mappings.document_types import load_document_types as load_table

            types = load_table(settings.mappings_dir)
        intake = cls(
            store,
            max_bytes=settings.max_document_bytes,
            spool_dir=settings.var_dir / "spool",
            timezone=settings.timezone,
            document_types=types,
        )
        intake.clean_spool()
        return intake

    def use_document_types(self, types: DocumentTypes | Collection[str] | None) -> None:
        """Take a (reloaded) document type table: its codes and their names swapped as one
        reference, so a document being checked sees the old table or the new, never a mix."""
        from engine.mappings.document_types import DocumentTypes

        if isinstance(types, DocumentTypes):
            names = {code: t.display for code, t in types.types.items()}
            self._types = (frozenset(names) or None, names)
        else:
            self._types = (frozenset(types) if types is not None else None, {})

    @property
    def document_types(self) -> frozenset[str] | None:
        """The codes a document's type must be one of (None: any code of the right shape)."""
        return self._types[0]

    @property
    def type_names(self) -> dict[str, str]:
        """Each type's name people read, by code (empty when given the codes alone)."""
        return self._types[1]

    def clean_spool(self) -> None:
        """Remove spooled files a crashed receiver left (never accepted: their senders were
        not answered, and send again)."""
        if not self.spool_dir.is_dir():
            return
        cutoff = time.time() - _STALE_SPOOL_S
        for path in self.spool_dir.glob("document-*.part"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in one of the documents' threads (blocking work off the event loop)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="documents")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Let the documents' threads go (work under way finishes)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def spool(self) -> Spool:
        """A new spool file for a document's bytes (blocking)."""
        return Spool(self.spool_dir, self.max_bytes)

    # -- receiving ---------------------------------------------------------------------------

    async def accept(
        self,
        chunks: AsyncIterable[bytes],
        fields: DocumentFields,
        *,
        channel: str,
        sender: str,
        peer: str = "",
        file_name: str | None = None,
    ) -> Accepted:
        """Spool ``chunks`` (stopping one byte past the cap), check and commit the document.

        DocumentRefused (recorded) when it cannot be taken; StoreUnavailable when the store
        failed (nothing recorded: send again).
        """
        spool = await self.run(self.spool)
        try:
            async for chunk in chunks:
                if not await self.run(spool.write, chunk):
                    break
            return await self.accept_spooled(
                spool, fields, channel=channel, sender=sender, peer=peer, file_name=file_name
            )
        finally:
            await self.run(spool.discard)

    async def accept_spooled(
        self,
        spool: Spool,
        fields: DocumentFields,
        *,
        channel: str,
        sender: str,
        peer: str = "",
        file_name: str | None = None,
    ) -> Accepted:
        """Check and commit a spooled document (the caller discards the spool after; an
        accepted one is discarded here)."""
        refusal = RefusedDocument(
            reason="",
            channel=channel,
            sender=sender,
            peer=peer,
            size=spool.size,
            file_name=file_name,
            fields=fields.given(),
        )
        if spool.over:
            await self.run(spool.close)
            return await self._refuse_oversize(refusal, spool.head)
        return await self._accept_file(
            spool.path, spool.sha256, spool.size, fields, refusal, file_name, spool=spool
        )

    async def accept_file(
        self,
        path: Path,
        fields: DocumentFields,
        *,
        channel: str,
        sender: str,
        peer: str = "",
        file_name: str | None = None,
    ) -> Accepted:
        """Check and commit a document from a file where it lies (the watched folder), hashed
        in place; the file is left where it is (the caller moves it once this returns)."""
        sha256, size, head, over = await self.run(_hash_file, path, self.max_bytes)
        name = file_name if file_name is not None else path.name
        refusal = RefusedDocument(
            reason="",
            channel=channel,
            sender=sender,
            peer=peer,
            size=size,
            file_name=name,
            fields=fields.given(),
        )
        if over:
            return await self._refuse_oversize(refusal, head)
        return await self._accept_file(path, sha256, size, fields, refusal, name)

    async def _accept_file(
        self,
        path: Path,
        sha256: str,
        size: int,
        fields: DocumentFields,
        refusal: RefusedDocument,
        file_name: str | None,
        *,
        spool: Spool | None = None,
    ) -> Accepted:
        """Check and commit ``path``. ``spool`` given: ``path`` is that spool's file, hashed as
        it was written; beside SQLite it is moved into the store unread (and is gone after)."""
        refusal = RefusedDocument(**{**asdict(refusal), "sha256": sha256})
        try:
            new = self.check(fields, channel=refusal.channel, sender=refusal.sender)
        except DocumentRefused as refused:
            if spool is not None:
                await self.run(spool.close)
            await self._record(refused, refusal, path)
            raise
        new = NewDocument(**{**asdict(new), "peer": refusal.peer, "file_name": file_name})
        try:
            done = await self.run(self._store_file, new, path, sha256, size, spool)
        except DocumentChanged:  # the file changed since it was hashed (a folder's): look again
            raise
        except Exception as exc:
            log.error("document store failed", extra={"error": type(exc).__name__})
            raise StoreUnavailable("the document could not be stored; send it again") from exc
        if isinstance(done, DocumentRefused):
            await self._record(done, refusal, path)
            raise done
        media_type, stored = done
        if self.on_stored is not None and not stored.duplicate:
            self.on_stored()
        log.info(
            "document stored",
            extra={
                "document_id": stored.info.document_id,
                "message_id": stored.message_id,
                "sha256": sha256[:12],
                "size": size,
                "media_type": media_type,
                "type": stored.info.document_type,
                "channel": refusal.channel,
                "duplicate": stored.duplicate,
            },
        )
        return Accepted(
            stored.info.document_id, stored.message_id, sha256, size, media_type, stored.duplicate
        )

    def _store_file(
        self, new: NewDocument, path: Path, sha256: str, size: int, spool: Spool | None
    ) -> tuple[str, StoredDocument] | DocumentRefused:
        """The blocking part of accepting a checked document, in one of the intake's threads
        (one hand-off per document, not one per step: each costs two context switches):
        the spool closed, the type read from the bytes (a refusal is returned, for the caller
        to record), the bytes made a blob, the group commit, the spool discarded."""
        if spool is not None:
            spool.close()
        try:
            media_type = sniff(path)
        except DocumentRefused as refused:
            return refused
        # beside SQLite the bytes become a file of their own, fsynced here in this upload's
        # thread, before the group commit: the commit then adds rows only, and uploads write
        # their bytes side by side instead of one by one under SQLite's one writer
        sha1 = spool.sha1 if spool is not None else None
        prepare = getattr(self.store, "prepare_blob", None)
        if prepare is not None:
            sha1 = prepare(path, sha256, size, sha1=sha1)
        stored = self._group.store_document(
            DocumentToStore(new, path, sha256, size, media_type, sha1=sha1)
        )
        if spool is not None:
            spool.discard()
        return media_type, stored

    async def refuse(
        self,
        reason: str,
        *,
        kind: RefusalKind,
        fields: DocumentFields,
        channel: str,
        sender: str,
        peer: str = "",
        spool: Spool | None = None,
        size: int | None = None,
        file_name: str | None = None,
    ) -> DocumentRefused:
        """Record a refusal the caller found (a malformed form, a declared length over the cap)
        and return the DocumentRefused to raise: with the spooled bytes when they were all
        read, else what was read of them (at most 4 KiB)."""
        refused = DocumentRefused(reason, kind=kind)
        kept = spool is not None and not spool.over and spool.size > 0
        if spool is not None:
            await self.run(spool.close)
        refusal = RefusedDocument(
            reason=reason,
            channel=channel,
            sender=sender,
            peer=peer,
            size=size if size is not None else (spool.size if spool else 0),
            sha256=spool.sha256 if kept and spool else None,
            file_name=file_name,
            fields=fields.given(),
            head=spool.head if spool is not None and not kept else None,
        )
        await self._record(refused, refusal, spool.path if kept and spool else None)
        return refused

    async def _refuse_oversize(self, refusal: RefusedDocument, head: bytes) -> Accepted:
        refused = DocumentRefused(
            f"document larger than the {self.max_bytes}-byte limit (ENGINE_MAX_DOCUMENT_BYTES):"
            " refused unread past the limit; split it, scan it at a lower resolution, or have"
            " the limit raised",
            kind="size",
        )
        with contextlib.suppress(DocumentRefused):  # media type only as a hint for the record
            refusal = RefusedDocument(**{**asdict(refusal), "media_type": media_type_of(head)})
        await self._record(refused, RefusedDocument(**{**asdict(refusal), "head": head}), None)
        raise refused

    async def _record(
        self, refused: DocumentRefused, refusal: RefusedDocument, source: Path | None
    ) -> None:
        """Store the refusal (its bytes from ``source`` when given); its id on ``refused``."""
        record = RefusedDocument(**{**asdict(refusal), "reason": str(refused)})
        try:
            mid = await self.run(self.store.refuse_document, record, source)
        except Exception as exc:
            log.error("document refusal not stored", extra={"error": type(exc).__name__})
            raise StoreUnavailable("the document could not be stored; send it again") from exc
        refused.message_id = mid
        log.warning(
            "document refused",
            extra={
                "message_id": mid,
                "kind": refused.kind,
                "size": refusal.size,
                "channel": refusal.channel,
            },
        )

    # -- checking ----------------------------------------------------------------------------

    def today(self) -> str:
        """Today where the practice is (ENGINE_TIMEZONE)."""
        return datetime.now(self.zone).date().isoformat()

    def check(self, fields: DocumentFields, *, channel: str, sender: str) -> NewDocument:
        """The document's metadata checked; DocumentRefused (kind ``metadata``) naming every
        problem (never echoing the MRN: it names a patient)."""
        problems: list[str] = []
        mrn = (fields.mrn or "").strip()
        if not mrn:
            problems.append("mrn is missing")
        elif len(mrn) > 64:
            problems.append("mrn is longer than 64 characters")
        elif not mrn.isprintable():
            problems.append("mrn has unprintable characters")
        doc_type = (fields.document_type or "").strip()
        if not doc_type:
            problems.append("document_type is missing")
        elif (codes := self._types[0]) is not None:
            if doc_type not in codes:
                known = ", ".join(sorted(codes))
                problems.append(
                    f"document_type {doc_type[:64]!r} is not in the site's document type table"
                    f" (tables/document_types.yaml; known: {known})"
                )
        elif not _TYPE_CODE.match(doc_type):
            problems.append(
                f"document_type {doc_type[:64]!r} is not a type code (lower-case letters, digits"
                " and '-', at most 64: insurance-card)"
            )
        when = (fields.date or "").strip() or self.today()
        if not _DATE.match(when):
            problems.append(f"date {when[:32]!r} is not a date (YYYY-MM-DD)")
        else:
            try:
                date.fromisoformat(when)
            except ValueError:
                problems.append(f"date {when!r} is not a day of the calendar")
        optional: dict[str, str | None] = {}
        for name, width in _WIDTHS.items():
            value = (getattr(fields, name) or "").strip()
            if len(value) > width:
                problems.append(f"{name} is longer than {width} characters")
            elif not value.isprintable():
                problems.append(f"{name} has unprintable characters")
            optional[name] = value or None
        if problems:
            raise DocumentRefused("bad metadata: " + "; ".join(problems), kind="metadata")
        return NewDocument(
            patient_mrn=mrn,
            document_type=doc_type,
            document_date=when,
            sender=sender,
            channel=channel,
            patient_authority=optional["authority"] or "",
            practice=optional["practice"],
            department=optional["department"],
            appointment=optional["appointment"],
            encounter=optional["encounter"],
            author=optional["author"],
            title=optional["title"],
        )
