"""The file drop destination: one file per message and destination in a directory.

A file is written atomically and never replaces another: the body goes to a new file in the same
directory that has no name yet (Linux's ``O_TMPFILE``), is flushed to disk (its own ``fsync``,
or one ``syncfs`` for a batch: below), then linked to its final name (``linkat``, which fails
rather than replace an existing file), and the directory entry is flushed too. A reader polling
the directory sees either no file or the whole file, never half of one. Where the file system
has no unnamed files (some network ones, other systems) the new file is a temporary one
instead, created exclusively, linked and then unlinked; temporary files start with a dot and
end in ``.tmp`` so pollers can skip them. The folder's file system must support hard links
(every local POSIX one does).

The name is ``<message id>-<destination>-<store>.json`` (FHIR Bundle) or ``.hl7`` (HL7v2).
``<store>`` is 8 hex digits naming the store whose message ids these are, so that two engines
with separate stores (whose message ids both start at 1) writing into one folder never produce
the same name, while the nodes sharing one store all produce the same one:

* PostgreSQL: the tag of the database and schema (:func:`engine.store.identity.database_tag`,
  from the cluster's system identifier), read when the worker opens the store and handed to the
  destination by the registry. Every node of one database names a message's file alike.
* SQLite, or a PostgreSQL whose identity cannot be read: the engine's own tag
  (:func:`engine_tag`: a hash of the host name and the engine home; the SQLite database is the
  home's), as before, so existing sites' names do not change.

A redelivery of the same message finds its file and is done (delivering twice is harmless); the
file already there is never replaced. That holds across nodes too: when a node dies after writing
a file but before recording the delivery, the node that takes its claim over (engine/store/
nodes.py) writes under the same name, finds the file, and the folder keeps one copy. On SQLite,
or without the database's identity, it holds for one engine only (a second node with its own tag
would write a second copy).

A document (payload kind ``document``) is written as two files, named the same way: its bytes
(``<message id>-<destination>-<store>.pdf``, the extension from its media type; streamed from the
store, never held whole) and then a sidecar ``<...>.meta.json`` with its metadata (type, patient,
date, sender, SHA-256 ...), so a poller that waits for the sidecar finds the document whole. A
document its route mapped to HL7v2 is written as the MDM^T02 with its data (``.hl7``); one mapped
to FHIR as the DocumentReference with the data inline in its attachment (``.json``: a folder has
no Binary endpoint to refer to).

A relative ``directory`` in a route file is the engine home's (``ENGINE_HOME``), never the current
directory's.

The directory's own fsync (which makes the new name durable) is shared: a write that has
linked its file waits for the next fsync of the directory that starts after it, and one fsync
serves every write linked before it began (a group commit, as the store does for messages). With
eight deliveries in flight the folder is synced once for each group instead of once for each
file; each file's own data is on disk before it is linked, so a name never points at half a
file. A delivery is reported only once its name is durable.

The dispatcher hands this destination the deliveries it claimed together (``deliver_batch``):
their files are written in one hand-off to the destination's threads and the folder synced once
for the batch. On Linux the batch's files are written unnamed and none is fsynced on its own:
one ``syncfs`` of the folder's file system makes all of them durable, and only then is each
linked (:func:`_write_synced`; a ``syncfs`` slowed by others' data on the same file system sends
the folder back to an fsync a file for a minute). Elsewhere each file is fsynced before its link,
the batch split among the threads (at least 8 files each). Delivered one at a time, each
file cost three hand-offs between threads (the write, the folder's sync, the outcome's
transaction), and a worker delivering alone spent 2.2-2.3 ms of CPU a message; in batches
1.2-1.4 ms (bench figures in the README).

A kill leaves no unnamed file behind (the file system frees it). With temporary files, a kill
between a temporary file's link and its unlink leaves the temporary file behind. The
first delivery of a destination in a process removes its own temporary files (its destination's
name and store tag) older than :data:`STALE_TMP_S`: no write takes that long, so none is another
node's write in progress.

Errors that may pass (disk full, I/O error, a busy file) are retryable; errors that the next try
will meet again (permission denied, read-only file system, a name too long, a directory in the way)
are permanent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, field_validator

from engine.adapters.destination import DeliveryResult, Payload
from engine.documents.model import DocumentContent, DocumentEnvelope
from engine.mappings.documents import inline_attachment
from engine.mappings.mdm import fill_mdm
from engine.settings import engine_home

__all__ = ["FileDestination", "FileDropDestination", "engine_tag", "file_name"]

log = logging.getLogger(__name__)

_EXTENSIONS = {"fhir-bundle": ".json", "hl7v2": ".hl7"}
#: a document's file extension, from its media type (read from its bytes at intake)
_MEDIA_EXTENSIONS = {
    "application/pdf": ".pdf",
    "image/tiff": ".tif",
    "image/jpeg": ".jpg",
    "image/png": ".png",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_TAG = re.compile(r"[0-9a-f]{8}")
#: threads of a destination's own for its writes and fsyncs: as many as the deliveries the
#: dispatcher lets it have in flight by default (engine/flow/deliver.py, ``per_destination``;
#: a route file's ``concurrency`` beyond it shares these); a batch
#: is split among them, at least :data:`BATCH_SHARE` files to a thread
IO_THREADS = 8
BATCH_SHARE = 8
T = TypeVar("T")


class _Io(Protocol):
    """Runs a blocking call on the destination's threads."""

    def __call__(self, call: Callable[[], T]) -> Awaitable[T]: ...


#: seconds after which a destination's own temporary file is a leftover of a killed write
STALE_TMP_S = 3600.0
_PERMANENT = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENAMETOOLONG,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EEXIST,  # a file where the directory should be
    }
)


class FileDestination(BaseModel):
    """A route file's ``type: file`` destination: a directory, one file per message and
    destination, written atomically."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path

    @field_validator("directory")
    @classmethod
    def _under_home(cls, value: Path) -> Path:
        value = value.expanduser()
        return value if value.is_absolute() else engine_home() / value


def engine_tag() -> str:
    """This engine's mark in file names where the store names none (SQLite): 8 hex digits of a
    hash of the host and the home."""
    who = f"{socket.gethostname()}\0{engine_home()}".encode()
    return hashlib.sha256(who).hexdigest()[:8]


def file_name(payload: Payload, tag: str | None = None) -> str:
    """``<message id>-<destination>-<store>.<json|hl7>``, the destination reduced to safe
    characters; ``tag`` (the store's) defaults to :func:`engine_tag`."""
    return _stem(payload, tag or engine_tag()) + _EXTENSIONS[payload.kind]


def _stem(payload: Payload, tag: str) -> str:
    """``<message id>-<destination>-<store>``: every file's name (a document's two files too)
    before its extension."""
    return f"{payload.message_id}-{_UNSAFE.sub('_', payload.destination)}-{tag}"


async def _stream_new(directory: Path, name: str, content: DocumentContent, io: _Io) -> str | None:
    """Write ``content`` to ``name`` as :func:`_write_new` does, chunk by chunk (a 25 MiB scan
    is never held whole); returns the SHA-256 of what was written, or None when ``name`` was
    already there (delivered before). The caller refuses a hash that is not the stored one:
    the file is then removed, never left under the document's name. The caller syncs the
    directory."""
    await io(partial(directory.mkdir, parents=True, exist_ok=True))
    target = directory / name
    if target.exists():
        return None
    fd, tmp = _open_new(directory, name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in content.stream():
                digest.update(chunk)
                await io(partial(f.write, chunk))
            await io(f.flush)
            await io(partial(os.fsync, f.fileno()))
            if digest.hexdigest() != content.sha256:
                return digest.hexdigest()
            if not await io(partial(_link, f.fileno(), tmp, directory, name)):
                return None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return digest.hexdigest()


#: Linux's unnamed files (``O_TMPFILE``, named afterwards through ``/proc/self/fd``); the
#: directories whose file system refused one get named temporary files from then on
_UNNAMED = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
_NO_UNNAMED: set[Path] = set()
#: what ``open(O_TMPFILE)`` answers on a file system without unnamed files
_UNNAMED_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})


def _open_new(directory: Path, name: str) -> tuple[int, str | None]:
    """A new file in ``directory`` to write ``name``'s body to, and its temporary name (None:
    it has none yet). An unnamed file where the file system allows it: in a folder that holds
    hundreds of thousands of files (a drop nobody has emptied for a while), making, looking up
    and removing a temporary name cost more than the write: 0.39-0.47 ms of CPU a file in a
    folder of 140,000, against 0.08-0.15 ms unnamed (0.17 and 0.07 ms in an empty one; 5
    December 2026). A kill before the link leaves nothing behind."""
    if _UNNAMED and directory not in _NO_UNNAMED:
        try:
            return _open_unnamed(directory), None
        except OSError as exc:
            if exc.errno not in _UNNAMED_UNSUPPORTED:
                raise
            _NO_UNNAMED.add(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    return fd, tmp


def _open_unnamed(directory: Path) -> int:
    """A new file in ``directory`` with no name yet (``O_TMPFILE``), the engine's alone (0600)."""
    return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)


def _open_folder(directory: Path) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _link(fd: int, tmp: str | None, directory: Path, name: str, folder: int | None = None) -> bool:
    """Give the written file (``fd``, or its temporary name) the name ``name``; False when the
    name is taken (``link`` fails rather than replace: another writer was first). ``folder``:
    the directory's descriptor when the caller holds one (else opened for this link)."""
    try:
        if tmp is not None:
            os.link(tmp, directory / name)
            return True
        own = folder is None
        dir_fd = _open_folder(directory) if folder is None else folder
        try:  # a directory fd makes os.link a linkat() that follows the /proc link
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd)
        finally:
            if own:
                os.close(dir_fd)
    except FileExistsError:
        return False
    return True


def _write_new(directory: Path, name: str, body: bytes, *, make_dir: bool = True) -> bool:
    """Write ``name`` whole, or find it there (False); an existing file is never replaced. The
    caller syncs the directory (:class:`_DirectorySync`). ``make_dir``: create the directory
    first when it is missing (False: the caller did)."""
    if make_dir:
        directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_new(directory, name)
    try:
        _write_all(fd, body)
        os.fsync(fd)
        return _link(fd, tmp, directory, name)
    finally:
        os.close(fd)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _write_each(directory: Path, files: list[tuple[str, bytes]]) -> list[bool | OSError]:
    """:func:`_write_new` for each (name, body) in turn, in one thread: for each, whether it
    was written (False: found there) or the error that stopped it (the others still go)."""
    done: list[bool | OSError] = []
    for name, body in files:
        try:
            done.append(_write_new(directory, name, body, make_dir=False))
        except OSError as exc:
            done.append(exc)
    return done


def _load_syncfs() -> Callable[[int], None] | None:
    """Linux's ``syncfs(2)`` from the C library (every file's data on one file system flushed
    in one call; its errors reported since Linux 5.8), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes, call.restype = [ctypes.c_int], ctypes.c_int

    def syncfs(fd: int) -> None:
        if call(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


_SYNCFS = _load_syncfs()
#: files written before one ``syncfs`` at most (each holds a descriptor until it is linked)
SYNC_GROUP = 256
#: a ``syncfs`` slower than this (the file system busy with other writers' data, a backup, a
#: copy) sends the folder's batches back to one fsync a file for :data:`SLOW_SYNCFS_HOLD_S`
SLOW_SYNCFS_S = 0.25
SLOW_SYNCFS_HOLD_S = 60.0
#: the folders whose last syncfs was slow, and until when they fsync each file instead
_SYNCFS_SLOW: dict[Path, float] = {}


def _batch_syncs(directory: Path) -> bool:
    """Whether a batch of files for ``directory`` is made durable by one ``syncfs``
    (:func:`_write_synced`) rather than an fsync each (:func:`_write_each`)."""
    if _SYNCFS is None or not _UNNAMED or directory in _NO_UNNAMED:
        return False
    return _SYNCFS_SLOW.get(directory, 0.0) <= time.monotonic()


def _write_all(fd: int, body: bytes) -> None:
    view = memoryview(body)
    while view:
        view = view[os.write(fd, view) :]


def _write_synced(directory: Path, files: list[tuple[str, bytes]]) -> list[bool | OSError]:
    """:func:`_write_each`'s outcomes, with one flush to disk for many files: each body is
    written to an unnamed file and not synced on its own; one ``syncfs`` of the folder's file
    system makes them all durable; only then is each linked to its name, so a name still never
    points at half a file. An fsync each costs a flush of the disk's cache each: at 1,000
    files a second that was the worker's largest system call (8 % of its CPU in a 10-minute
    run at 1,000 msg/s, 5 December 2026). The file system's other dirty data is flushed too;
    a slow ``syncfs`` (:data:`SLOW_SYNCFS_S`) sends the folder back to an fsync a file for a
    while. The caller syncs the directory."""
    folder = _open_folder(directory)
    try:
        done: list[bool | OSError] = []
        for start in range(0, len(files), SYNC_GROUP):
            done += _sync_group(directory, folder, files[start : start + SYNC_GROUP])
        return done
    finally:
        os.close(folder)


def _sync_group(
    directory: Path, folder: int, files: list[tuple[str, bytes]]
) -> list[bool | OSError]:
    """:func:`_write_synced` for at most :data:`SYNC_GROUP` files (``folder``: the directory's
    descriptor)."""
    assert _SYNCFS is not None
    done: list[bool | OSError] = [False] * len(files)
    opened: dict[int, int] = {}  # index: descriptor of its unnamed file
    try:
        for i, (_, body) in enumerate(files):
            try:
                fd = _open_unnamed(directory)
            except OSError as exc:
                if exc.errno in _UNNAMED_UNSUPPORTED:  # nothing linked yet: all the old way
                    _NO_UNNAMED.add(directory)
                    return _write_each(directory, files)
                done[i] = exc
                continue
            opened[i] = fd
            try:
                _write_all(fd, body)
            except OSError as exc:
                done[i] = exc
                del opened[i]
                os.close(fd)
        if not opened:
            return done
        began = time.monotonic()
        try:
            _SYNCFS(folder)
        except OSError as exc:
            return [exc if i in opened else d for i, d in enumerate(done)]
        if time.monotonic() - began > SLOW_SYNCFS_S:
            _SYNCFS_SLOW[directory] = time.monotonic() + SLOW_SYNCFS_HOLD_S
            log.warning("file destination: syncfs slow, an fsync a file for a while")
        for i, fd in opened.items():
            try:
                done[i] = _link(fd, None, directory, files[i][0], folder)
            except OSError as exc:
                done[i] = exc
        return done
    finally:
        for fd in opened.values():
            os.close(fd)


def _sweep(directory: Path, stem: re.Pattern[str], older_than_s: float) -> int:
    """Remove the temporary files in ``directory`` whose name matches ``stem`` and that were
    last written more than ``older_than_s`` ago; how many."""
    removed = 0
    limit = time.time() - older_than_s
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not stem.fullmatch(entry.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.stat(follow_symlinks=False).st_mtime < limit:
                os.unlink(entry.path)
                removed += 1
    return removed


def _sync_directory(directory: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):  # make the new entry itself durable (POSIX)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _chunks(items: list[T], most: int, least: int) -> list[list[T]]:
    """``items`` in at most ``most`` runs of consecutive items, each of at least ``least``
    (but for a shorter whole)."""
    n = max(1, min(most, len(items) // max(1, least)))
    size = -(-len(items) // n)
    return [items[i : i + size] for i in range(0, len(items), size)]


class _DirectorySync:
    """The directory's fsync shared by the writes waiting for it (a group commit).

    :meth:`sync` returns once an fsync of the directory that *started* after the call has
    finished: every name linked before the call is then durable. Syncs are numbered as they
    start; a caller needs the one numbered after the count it saw, and finds it done when an
    earlier waiter ran it. Only one fsync runs at a time, so the writes that link while it runs
    all share the next one. A failed fsync raises for its caller; the others waiting run their
    own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0
        self._finished = 0
        #: fsyncs run (for the tests and the profile)
        self.count = 0

    async def sync(self, io: _Io) -> None:
        wanted = self._started + 1
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:  # a lock serves one event loop
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            if self._finished >= wanted:
                return
            self._started += 1
            number = self._started
            await io(partial(_sync_directory, self.directory))
            self.count += 1
            self._finished = number


class FileDropDestination:
    """Writes each payload to ``directory`` (created when missing).

    ``tag``: the store's (:func:`engine.store.identity.database_tag`, given by the registry),
    shared by every node of one database; None (SQLite) for :func:`engine_tag`.
    """

    def __init__(self, name: str, config: FileDestination, tag: str | None = None) -> None:
        if tag is not None and _TAG.fullmatch(tag) is None:
            raise ValueError("a store's tag is 8 lower-case hex digits")
        self.name = name
        self.config = config
        self.directory = config.directory
        self.tag = tag or engine_tag()
        self._swept = False
        self._dirsync = _DirectorySync(self.directory)
        self._pool: ThreadPoolExecutor | None = None

    def _io(self, call: Callable[[], T]) -> Awaitable[T]:
        """Run ``call`` (a write, an fsync) on this destination's own threads: a disk slow to
        sync holds them, never the thread pool the worker's database calls (claims, outcomes,
        heartbeats) run on."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="file-destination")
        return asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def _sweep_once(self) -> None:
        """This destination's temporary files left by a killed write (see the module), once."""
        self._swept = True
        dest = re.escape(_UNSAFE.sub("_", self.name))
        stem = re.compile(rf"\.\d+-{dest}-{self.tag}\..+\.tmp")
        removed = await self._io(partial(_sweep, self.directory, stem, STALE_TMP_S))
        if removed:
            log.warning(
                "file destination: leftover temporary files removed",
                extra={"destination": self.name, "count": removed},
            )

    async def deliver(self, payload: Payload) -> DeliveryResult:
        try:
            if not self._swept:
                await self._sweep_once()
            if payload.kind == "document":
                return await self._deliver_document(payload)
            name = file_name(payload, self.tag)
            written = await self._io(partial(_write_new, self.directory, name, payload.body))
            # found there too: the writer before may have died before its name was durable
            await self._dirsync.sync(self._io)
        except OSError as exc:
            return self._result(payload, file_name(payload, self.tag), exc)
        return self._result(payload, name, written)

    async def deliver_batch(self, payloads: list[Payload]) -> list[DeliveryResult]:
        """Deliver several payloads at once, each result in the order given: the messages'
        files written in one hand-off to this destination's threads (split among them when
        there are many) and their directory synced once for all, a document's as
        :meth:`deliver` writes it. The dispatcher calls this for the deliveries it claimed
        together (engine/flow/deliver.py): a delivery of one file each is three hand-offs
        between threads and an fsync of the directory; here it is a share of one. Each file's
        data is on disk before it is linked (one ``syncfs`` for the batch where it can, an
        fsync each otherwise), and no result says delivered before the directory holding its
        name is synced."""
        results: dict[int, DeliveryResult] = {}
        for i, payload in enumerate(payloads):
            if payload.kind == "document":
                results[i] = await self.deliver(payload)
        todo = [(i, p, file_name(p, self.tag)) for i, p in enumerate(payloads) if i not in results]
        if todo:
            try:
                if not self._swept:
                    await self._sweep_once()
                await self._io(partial(self.directory.mkdir, parents=True, exist_ok=True))
                files = [(n, p.body) for _, p, n in todo]
                if _batch_syncs(self.directory):
                    done = await self._io(partial(_write_synced, self.directory, files))
                else:
                    done = [
                        outcome
                        for part in await asyncio.gather(
                            *(
                                self._io(partial(_write_each, self.directory, c))
                                for c in _chunks(files, IO_THREADS, BATCH_SHARE)
                            )
                        )
                        for outcome in part
                    ]
                # found there too: the writer before may have died before its name was durable
                await self._dirsync.sync(self._io)
            except OSError as exc:
                done = [exc] * len(todo)
            for (i, payload, name), outcome in zip(todo, done, strict=True):
                results[i] = self._result(payload, name, outcome)
        return [results[i] for i in range(len(payloads))]

    def _result(self, payload: Payload, name: str, outcome: bool | OSError) -> DeliveryResult:
        """The result of writing one message's file: written, found there, or an error."""
        if isinstance(outcome, OSError):
            code = errno.errorcode.get(outcome.errno or 0, type(outcome).__name__)
            log.warning(
                "file delivery failed",
                extra={"destination": self.name, "message_id": payload.message_id, "error": code},
            )
            if outcome.errno in _PERMANENT:
                return DeliveryResult.fail(f"file: {code}")
            return DeliveryResult.retry(f"file: {code}")
        if not outcome:
            return DeliveryResult.success(f"file: {name} exists (delivered before)")
        return DeliveryResult.success(f"file: wrote {name} ({len(payload.body)} bytes)")

    async def _deliver_document(self, payload: Payload) -> DeliveryResult:
        """A document (see the module docstring): its bytes, then the sidecar, each written
        whole and never replaced; the MDM (``hl7v2``) or the DocumentReference with the data
        inline (``fhir``) when its route mapped it."""
        try:
            envelope = DocumentEnvelope.from_bytes(payload.body)
        except (ValueError, KeyError, TypeError):
            return DeliveryResult.fail("file: the payload is not a document envelope")
        body_ok = {
            "none": True,
            "hl7v2": isinstance(envelope.body, str),
            "fhir": isinstance(envelope.body, dict)
            and isinstance(envelope.body.get("DocumentReference"), dict),
        }.get(envelope.format, False)
        if not body_ok:
            return DeliveryResult.fail(
                f"file: a {envelope.format!r} document envelope without its body"
            )
        if payload.content is None:
            return DeliveryResult.retry("file: the document's bytes were not given")
        stem = _stem(payload, self.tag)
        if envelope.format == "none":
            name = stem + _MEDIA_EXTENSIONS.get(envelope.document.media_type, ".bin")
            sha256 = await _stream_new(self.directory, name, payload.content, self._io)
            if sha256 is not None and sha256 != envelope.document.sha256:
                return DeliveryResult.retry(
                    "file: the document's bytes read are not the ones stored"
                )
            await self._dirsync.sync(self._io)
        else:
            data = await payload.content.read()
            if hashlib.sha256(data).hexdigest() != envelope.document.sha256:
                return DeliveryResult.retry(
                    "file: the document's bytes read are not the ones stored"
                )
            if envelope.format == "hl7v2":
                name, body = stem + ".hl7", fill_mdm(envelope.body, data)
            else:
                docref = inline_attachment(envelope.body["DocumentReference"], data)
                name, body = stem + ".json", orjson.dumps(docref)
            del data
            await self._io(partial(_write_new, self.directory, name, body))
            await self._dirsync.sync(self._io)  # the document's name durable before its sidecar's
        sidecar = orjson.dumps(
            {"file": name, "format": envelope.format, "document": envelope.document.to_dict()},
            option=orjson.OPT_INDENT_2,
        )
        await self._io(partial(_write_new, self.directory, stem + ".meta.json", sidecar))
        await self._dirsync.sync(self._io)
        return DeliveryResult.success(f"file: wrote {name} ({envelope.document.size} bytes)")

    async def close(self) -> None:
        """No file is held open between deliveries; the threads are let go."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
