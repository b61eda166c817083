"""A document's bytes as a file of their own, beside a SQLite database (``engine.blobs/``).

On SQLite the database has one writer: every byte written inside a transaction holds the lock
that every MLLP ACK waits on, and the write-ahead log writes it twice (the log, then the
checkpoint). So beside a SQLite file the bytes go to a file named by their SHA-256
(``<db>.blobs/ab/abcdef...``), written and fsynced by the uploader's own thread *before* the
transaction that records the document: the transaction only adds rows. A file is written to a
temporary name, fsynced, renamed into place and its folder fsynced, so a name in place always
holds complete bytes; a crash between the rename and the commit leaves a file no row names
(swept after an hour: :meth:`BlobFiles.sweep`), never a row without its bytes.

While ``engine backup`` copies the files (engine/store/backup.py), it holds a shared ``flock``
on ``<db>.blobs.backuplock`` (:func:`backup_lock`): retention's removal and the sweep leave
every file in place meanwhile, since the backup's copy of the database may name a file whose
rows were purged after it. What they left, no row names: the next sweep removes it.

On PostgreSQL the bytes stay in the database (``document_chunks``): several nodes share it, and
a file on one node's disk would not be on the others'.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from sqlalchemy import Engine

__all__ = ["BlobFiles", "DocumentChanged", "backup_lock"]

_CHUNK = 1024 * 1024
#: a file no row names is a crashed commit's only when older than this
_ORPHAN_AGE_S = 3600.0


def backup_lock(root: Path) -> Path:
    """The file a backup of the files under ``root`` holds a shared ``flock`` on while it
    copies (``engine.blobs.backuplock`` beside ``engine.blobs``)."""
    return root.with_name(root.name + ".backuplock")


class DocumentChanged(ValueError):
    """The file's bytes are not those the intake hashed: it changed since (a scanner still
    writing). Nothing was stored; the folder looks at it again."""


class BlobFiles:
    """Documents' bytes as files under ``root``, by SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_engine(cls, db_engine: Engine) -> BlobFiles | None:
        """The folder beside a SQLite database file; None for any other database (the bytes
        then stay in it)."""
        url = db_engine.url
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return cls(Path(url.database).with_suffix(".blobs"))
        return None

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a SHA-256 in hex")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str, size: int) -> bool:
        """Whether complete bytes for ``sha256`` are in place (a file in place is complete)."""
        try:
            return self.path(sha256).stat().st_size == size
        except OSError:
            return False

    def place(self, source: Path, sha256: str, size: int) -> str:
        """Copy ``source`` into place as the bytes of ``sha256``, checking they hash to it and
        are ``size`` long (DocumentChanged otherwise: nothing placed), durably (file and folder
        fsynced). Returns the bytes' base64 SHA-1 (FHIR Attachment.hash), hashed on the way."""
        final = self.path(sha256)
        self._folder(final)
        digest = hashlib.sha256()
        sha1 = hashlib.sha1(usedforsecurity=False)
        total = 0
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=".part-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    sha1.update(chunk)
                    total += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if total != size or digest.hexdigest() != sha256:
                raise DocumentChanged(
                    f"the file changed since it was hashed (sha256 {sha256[:12]}, {size} bytes)"
                )
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(final.parent)
        return base64.b64encode(sha1.digest()).decode("ascii")

    def adopt(self, source: Path, sha256: str) -> None:
        """Move ``source`` into place as the bytes of ``sha256`` without reading it: a file the
        engine wrote itself and hashed as it wrote (an upload's spool file), so its bytes are
        written once. Fsynced, renamed, its new folder fsynced. ``source`` is gone after (its
        owner's clean-up must allow that). Across file systems it is copied instead."""
        final = self.path(sha256)
        self._folder(final)
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(source, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # a temporary name of its own: two uploads of the same bytes at once must not
            # write into one file, one renaming it into place while the other still writes
            fd, name = tempfile.mkstemp(dir=final.parent, prefix=".part-")
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as out, source.open("rb") as f:
                    shutil.copyfileobj(f, out, _CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        _fsync_dir(final.parent)

    def _folder(self, final: Path) -> None:
        """Make ``final``'s folder if it is not there yet, and fsync its entry into the root
        and the root's into its parent, once per folder in this process (the first file
        placed there after a start; another thread may find the folder made and not yet
        fsynced, and a crash may come between the two): a file committed in it is still found
        after a power cut, which the file's own fsync and its folder's do not ensure."""
        folder = final.parent
        if folder in _DURABLE and folder.is_dir():  # (removed by hand since: made again)
            return
        folder.mkdir(parents=True, exist_ok=True)
        _fsync_dir(self.root.parent)
        _fsync_dir(self.root)
        _DURABLE.add(folder)

    def chunks(self, sha256: str) -> Iterator[bytes]:
        """The bytes of ``sha256``, 1 MiB at a time; KeyError when the file is missing."""
        try:
            f = self.path(sha256).open("rb")
        except FileNotFoundError:
            raise KeyError(f"the file of the document bytes {sha256[:12]} is missing") from None
        return _read(f)

    def remove(self, hashes: Iterable[str]) -> None:
        """Remove the files of ``hashes`` (their rows are gone: called after that commit);
        none while a backup copies (:meth:`_unless_backup`): the sweep removes them later."""
        with self._unless_backup() as free:
            if not free:
                return
            for sha in hashes:
                with contextlib.suppress(OSError, ValueError):
                    self.path(sha).unlink()

    @contextlib.contextmanager
    def _unless_backup(self) -> Iterator[bool]:
        """Whether files named by a row once may be removed: not while a backup holds
        :func:`backup_lock` (it took it before its copy of the database, which may name them).
        Asked without waiting (a backup copies for minutes; retention runs under the writers'
        lock) and held exclusively to the block's end: a backup starting meanwhile waits for
        these few removals, and its copy of the database, made after, names none of them."""
        try:
            fd = os.open(backup_lock(self.root), os.O_RDONLY)
        except OSError:
            # no backup ever ran here; or its lock cannot be opened (not this user's to read):
            # removed as before, and a backup that needed a file fails, saying so
            fd = -1
        try:
            free = fd < 0 or _lock_now(fd)
            yield free
        finally:
            if fd >= 0:
                os.close(fd)  # (closing releases the flock)

    def sweep(
        self,
        unknown: Callable[[set[str]], set[str]],
        locked: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> int:
        """Remove files older than an hour that no row names (``unknown`` returns which of the
        hashes it is given have no row), and temporary files a crash left. Returns how many.

        ``locked``: the writers' lock, held from asking ``unknown`` to the last removal, each
        file's age looked at again under it: an upload of the same bytes puts a new file in
        place of an old unnamed one and records it under that lock, and its file is not taken
        for the old one. No file but temporary ones while a backup copies
        (:meth:`_unless_backup`): its copy of the database may name one no row names now."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - _ORPHAN_AGE_S
        old: dict[str, Path] = {}
        removed = 0
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime >= cutoff:
                        continue
                    if path.name.startswith(".part-"):
                        path.unlink()
                        removed += 1
                    else:
                        old[path.name] = path
        if old:
            with locked(), self._unless_backup() as free:
                for sha in unknown(set(old)) if free else ():
                    with contextlib.suppress(OSError):
                        if old[sha].stat().st_mtime < cutoff:
                            old[sha].unlink()
                            removed += 1
        return removed


def _lock_now(fd: int) -> bool:
    """An exclusive ``flock`` on ``fd`` if nobody holds one; False, not waiting, otherwise."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read(f: IO[bytes]) -> Iterator[bytes]:
    with f:
        while chunk := f.read(_CHUNK):
            yield chunk


#: the folders of bytes whose entries this process has fsynced (:meth:`BlobFiles._folder`)
_DURABLE: set[Path] = set()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
