"""Backup and restore of a SQLite engine: the database and its documents' files, copied online.

A backup is a folder (made ``0700``, its files ``0600`` from their creation: it holds patient
data)::

    engine.db        the database, copied with SQLite's online backup API
    engine.blobs/    the documents' bytes beside it (engine/store/blobs.py), ab/abcdef...
    backup.json      what was copied: time, engine version, schema revision, sizes, SHA-256s

**Online.** The database is copied in one step of the backup API (``sqlite3.Connection.backup``
with every page at once): one read transaction, so the copy is the database as of one commit,
while the engine goes on writing (WAL: a reader never blocks the writer). The documents' files
are copied after: a file is in place before the commit that names it (blobs.py), so every file
the copy names already exists; each is hashed as it is copied and must match its name. From
before the database's copy to the last file's, the backup holds a shared ``flock`` on
``<db>.blobs.backuplock``: the engine's retention and its sweep remove no document file
meanwhile (the next sweep removes what they left), so a file the copy names cannot go while it
runs. The copy is checked with ``PRAGMA integrity_check``.

**Whole or not at all.** The backup is built in ``<folder>.partial`` beside the folder named
(``<folder>/.partial`` inside an empty folder named, which may be a mount point) and put in
place once complete; one that fails is removed. One a killed backup left is removed by the next
backup to that folder (one another backup is writing is not: it holds a ``flock`` on it).

**Restore** checks the backup again (integrity, every file's SHA-256, a schema revision this
engine knows), refuses while any process has the database open (the engine holds a shared
lock on the WAL index, ``<db>-shm``, for as long as it runs: :func:`database_user`) or holds
``<db>.migratelock`` (an engine starting takes it to migrate: restore holds it throughout, so a
start waits for the restore's end), moves the current database, its log and its files aside
into ``pre-restore-<time>/`` beside it (nothing is deleted), and puts the backup's in place: its
documents' folder first, the database last (a crash between leaves no database, never one whose
files are elsewhere). Run as root, it gives the files it puts in place to the owner of the
database it replaces; run as another user than that owner, it refuses. The engine migrates the
restored database on its next start.

PostgreSQL is backed up with its own tools (``pg_dump``/``pg_restore``): :func:`pg_commands`.

Incomplete: Linux only for the running-engine check (the ``struct flock`` layout of
``F_GETLK``); elsewhere the check is skipped with a warning in the result. An engine opens the
database before it takes the migration lock, so one that opens it in the moment between
restore's last check and its renames is not kept out: restore then fails naming it, the backup
in place, and that process must be restarted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pwd
import shlex
import shutil
import sqlite3
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from engine.errors import EngineError
from engine.store.blobs import backup_lock

__all__ = [
    "BackupResult",
    "backup_sqlite",
    "database_user",
    "pg_commands",
    "restore_marker",
    "restore_sqlite",
    "unfinished_restore",
]

MANIFEST = "backup.json"
DB_NAME = "engine.db"
BLOBS_NAME = "engine.blobs"
PARTIAL = ".partial"
#: what a backup writes into its folder: a ``.partial`` folder holding nothing else is a
#: killed backup's, removed by the next one
_WRITTEN = frozenset({DB_NAME, f"{DB_NAME}-journal", BLOBS_NAME, MANIFEST})
_CHUNK = 1024 * 1024
#: SQLite's unix VFS: every connection to a WAL database holds a shared lock on this byte of
#: the ``-shm`` file while it is open (the "DMS" lock: os_unix.c ``UNIX_SHM_DMS``, byte 128)
_SHM_DMS_BYTE = 128


@dataclass
class BackupResult:
    """What a backup or restore copied."""

    folder: Path
    database_bytes: int
    revision: str | None
    documents: int
    document_bytes: int
    #: restore only: where the database it replaced was moved (None: there was none)
    moved_aside: Path | None = None
    notes: list[str] = field(default_factory=list)


def backup_sqlite(database: Path, target: Path, *, version: str) -> BackupResult:
    """Copy the SQLite ``database`` and its documents' files into the new (or empty) folder
    ``target``: the whole backup, or nothing there."""
    if not database.is_file():
        raise EngineError(f"no engine database at {database}")
    notes: list[str] = []
    with _building(target, notes) as folder, _files_kept(database, notes):
        copied = _copy_into(database, folder, version)
    copied.folder, copied.notes = target, notes
    return copied


def _copy_into(database: Path, folder: Path, version: str) -> BackupResult:
    copy = folder / DB_NAME
    _online_copy(database, copy)
    revision, blobs = _check_copy(copy)
    size = sum(blobs.values())
    _copy_blobs(database.with_suffix(".blobs"), folder / BLOBS_NAME, blobs, when="backed up")
    manifest = {
        "format": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine_version": version,
        "source": str(database),
        "revision": revision,
        "database": {"file": DB_NAME, "bytes": copy.stat().st_size, "sha256": _sha256(copy)},
        "documents": {"folder": BLOBS_NAME, "files": len(blobs), "bytes": size},
    }
    _write_synced(folder / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    _fsync_dir(folder)
    return BackupResult(folder, copy.stat().st_size, revision, len(blobs), size)


def restore_sqlite(source: Path, database: Path, *, known_revisions: set[str]) -> BackupResult:
    """Put the backup in ``source`` in place of ``database`` (which no process may have open)."""
    manifest = _read_manifest(source)
    copy = source / DB_NAME
    if not copy.is_file():
        raise EngineError(f"{copy} is missing: {source} is not a whole backup")
    written = manifest.get("database")
    expected = written.get("sha256") if isinstance(written, dict) else None
    if not isinstance(expected, str) or _sha256(copy) != expected:
        raise EngineError(f"{copy} is not the file the backup wrote (its SHA-256 differs)")
    revision, blobs = _check_copy(copy)
    if revision is not None and revision not in known_revisions:
        raise EngineError(
            f"the backup's schema revision {revision} is unknown to this engine "
            "(made by a newer version?): restore it with that version"
        )
    owner = _owner_for(database)
    notes: list[str] = []
    if sys.platform != "linux":
        notes.append("not checked whether the engine runs (Linux only): it must be stopped")
    database.parent.mkdir(parents=True, exist_ok=True)
    with _starts_held(database, owner):
        if (user := database_user(database)) is not None:
            raise EngineError(
                f"{database} is open by process {user} (a running engine?): stop it, then restore"
            )
        new_db, new_blobs = _stage(source, database, blobs, expected, owner)
        aside = _put_in_place(database, new_db, new_blobs)
    size = sum(blobs.values())
    return BackupResult(source, database.stat().st_size, revision, len(blobs), size, aside, notes)


def database_user(database: Path) -> int | None:
    """The id of a process that has the SQLite ``database`` open, or None.

    A connection to a WAL database holds a shared POSIX lock on byte 128 of ``<db>-shm`` while
    it is open (SQLite's "dead man switch", which tells the last connection it may clean up);
    ``F_GETLK`` asks who holds a lock that would conflict with an exclusive one there, without
    taking it. No ``-shm`` file: nobody has it open in WAL mode.
    """
    shm = database.with_name(database.name + "-shm")
    if sys.platform != "linux" or not shm.exists():
        return None
    # struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
    query = struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, _SHM_DMS_BYTE, 1, 0)
    fd = os.open(shm, os.O_RDONLY)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    finally:
        os.close(fd)
    kind, _whence, _start, _len, pid = struct.unpack("@hhqqi4x", answer)
    return None if kind == fcntl.F_UNLCK else int(pid)


def pg_commands(url: str, folder: Path) -> tuple[list[str], list[str]]:
    """The ``pg_dump`` and ``pg_restore`` command lines for the PostgreSQL ``url`` (shell-quoted;
    never its password: libpq reads that from ``~/.pgpass`` or ``PGPASSWORD``)."""
    parsed = make_url(url)
    plain = URL.create(
        "postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
    )
    target = shlex.quote(plain.render_as_string(hide_password=False))
    dump = shlex.quote(str(folder / "engine.pgdump"))
    schema = _search_path(parsed.query.get("options"))
    only = f" --schema={shlex.quote(schema)}" if schema else ""
    backup = [
        f"mkdir -p -m 700 {shlex.quote(str(folder))}",
        f"pg_dump --format=custom --no-owner{only} --file={dump} --dbname={target}",
        f"pg_restore --list {dump} > /dev/null   # the dump reads back",
    ]
    restore = [
        "# stop every node first (systemctl stop engine, on each)",
        f"pg_restore --clean --if-exists --no-owner --single-transaction --dbname={target} {dump}",
        "# then start the nodes (the first migrates the schema when the dump is older)",
    ]
    return backup, restore


def _search_path(options: object) -> str | None:
    """The schema of ``options=-csearch_path=X`` in a URL, when there is one."""
    values = options if isinstance(options, tuple) else (options,)
    for value in values:
        if isinstance(value, str) and "search_path=" in value:
            return value.split("search_path=", 1)[1].split()[0].split(",")[0]
    return None


@contextlib.contextmanager
def _building(target: Path, notes: list[str]) -> Iterator[Path]:
    """A folder of its own to build the backup in, put in place as ``target`` when the block
    ends, removed if it fails: a failed backup (retention, a full disk, a kill) leaves no half
    written ``target``, which would refuse every later run to it (a cron job's folder of the
    day). A new ``target`` is built beside it and renamed, one step; an empty folder named (a
    mount point, which cannot be renamed onto) from inside it, the manifest moved up last."""
    if target.exists() and (
        not target.is_dir() or any(p.name != PARTIAL for p in target.iterdir())
    ):
        raise EngineError(f"{target} exists and is not an empty folder: name a new one")
    inside = target.is_dir()
    if inside:
        _make_private(target, notes)
        partial = target / PARTIAL
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + PARTIAL)
    held = _claim(partial, notes)
    try:
        yield partial
        if inside:
            for name in (BLOBS_NAME, DB_NAME, MANIFEST):  # the manifest says it is whole
                (partial / name).rename(target / name)
            partial.rmdir()
            _fsync_dir(target)
        else:
            _rename_into_place(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        os.close(held)


#: what ``flock`` answers on a file system that cannot lock a folder so (NFS emulates it with a
#: byte-range lock, which an exclusive one needs a file open for writing for: EBADF)
_NO_FOLDER_LOCKS = frozenset({errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL})


def _lock(fd: int, flags: int) -> bool | None:
    """``flock``: True once held, False when another holds it (``LOCK_NB``), None when this
    file system cannot lock a folder so (NFS): the backup goes on without that lock."""
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_FOLDER_LOCKS:
            return None
        raise
    return True


def _claim(partial: Path, notes: list[str]) -> int:
    """Make ``partial`` (``0700``) and hold a ``flock`` on it (the descriptor returned, to
    close at the end): one a killed backup left is removed first, one another backup holds is
    not. The folder above is locked meanwhile, so that of two backups starting together one
    makes it and the other finds it held (neither takes the other's new folder for a left one).
    Where folders cannot be locked (NFS) the backup goes on without, with a note."""
    above = os.open(partial.parent, os.O_RDONLY)
    try:
        locks = _lock(above, fcntl.LOCK_EX) is not None
        if not locks:
            notes.append(
                f"{partial.parent} cannot be locked (NFS?): two backups to it at once are not "
                "kept apart"
            )
        if partial.exists() or partial.is_symlink():
            _remove_left(partial, locks)
        try:
            partial.mkdir(mode=0o700)  # (atomic, NFS too: of two backups one makes it)
        except FileExistsError:
            raise EngineError(
                f"another backup is writing {partial}: wait for it to end, or name another folder"
            ) from None
        fd = os.open(partial, os.O_RDONLY)
        if locks:
            _lock(fd, fcntl.LOCK_EX)  # free: made under the lock above
        return fd
    finally:
        os.close(above)  # (closing releases the flock)


def _remove_left(partial: Path, locks: bool = True) -> None:
    """Remove the ``partial`` folder a killed backup left: not one a backup still writes (it
    holds a ``flock`` on it), nor one that holds anything a backup does not write. Where folders
    cannot be locked (NFS) none is removed: a backup reading for minutes (its integrity check,
    its digest) writes nothing meanwhile, so no age tells a killed one's folder from a live
    one's, and the operator is asked to remove it."""
    if partial.is_symlink() or not partial.is_dir():
        raise EngineError(f"{partial} is in the way (not a folder): move it, or name another")
    if not locks:
        raise EngineError(
            f"{partial} is in the way: a backup may be writing it (this file system cannot lock "
            "folders to tell); once none runs, remove it, or name another folder"
        )
    fd = os.open(partial, os.O_RDONLY)
    try:
        if not _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            raise EngineError(
                f"another backup is writing {partial}: wait for it to end, or name another folder"
            ) from None
        if any(p.name not in _WRITTEN for p in partial.iterdir()):
            raise EngineError(
                f"{partial} is in the way and is not a backup left unfinished: move it, or "
                "name another folder"
            )
        shutil.rmtree(partial)
    finally:
        os.close(fd)


def _rename_into_place(partial: Path, target: Path) -> None:
    try:
        partial.rename(target)  # (onto an empty folder made meanwhile too: rename(2))
    except OSError as exc:
        raise EngineError(
            f"the backup could not be put in place as {target} ({exc.strerror}): nothing was "
            "kept; name a new folder"
        ) from None
    _fsync_dir(target.parent)


def _make_private(folder: Path, notes: list[str]) -> None:
    try:
        folder.chmod(0o700)
    except PermissionError:
        notes.append(
            f"{folder} is another user's: not made private (0700); the backup's files and "
            "folders in it are (0600, 0700)"
        )


@contextlib.contextmanager
def _files_kept(database: Path, notes: list[str]) -> Iterator[None]:
    """Hold a shared ``flock`` on ``<db>.blobs.backuplock`` for the block: the engine's
    retention and sweep remove no document file meanwhile (engine/store/blobs.py), so every
    file the copy of the database names is there to copy. Waits for a removal under way only
    (a few files, under the engine's writers' lock)."""
    path = backup_lock(database.with_suffix(".blobs"))
    try:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
            # whatever this user's umask: the engine's user opens it (read-only) to look
            os.fchmod(fd, 0o644)
        except FileExistsError:
            fd = os.open(path, os.O_RDONLY)
    except OSError as exc:  # (a user that may read the database but not write beside it)
        notes.append(
            f"{path} could not be made ({exc.strerror}): the engine's retention may remove a "
            "document file while it is copied (the backup then fails: run it again)"
        )
        fd = -1
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        if fd >= 0:
            os.close(fd)


def _owner_for(database: Path) -> tuple[int, int] | None:
    """Whom the restored files must belong to for the engine to open them: the owner of the
    database replaced (of its folder when there is none). Returned when running as root, to
    give them the files; None otherwise (they are this user's), and refused when the database
    is another user's."""
    try:
        st: os.stat_result | None = database.stat()
    except FileNotFoundError:
        st = None
    if os.geteuid() == 0:
        if st is None:
            with contextlib.suppress(FileNotFoundError):
                st = database.parent.stat()
        return None if st is None else (st.st_uid, st.st_gid)
    if st is not None and st.st_uid != os.geteuid():
        name = _user_name(st.st_uid)
        raise EngineError(
            f"{database} belongs to {name}, not to the user running restore: the engine "
            f"could not open the files restored; run restore as {name}, or as root (which "
            "gives them the files)"
        )
    return None


def _user_name(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"user id {uid}"


@contextlib.contextmanager
def _starts_held(database: Path, owner: tuple[int, int] | None) -> Iterator[None]:
    """Hold ``<db>.migratelock`` exclusively for the block (engine/store/db.py
    ``hold_migration_lock``): every engine start (``serve``, ``worker``, the commands that
    open the store) migrates under it first, so a start waits for the restore's end before it
    reads or writes a row (it opens the database before: :func:`_put_in_place` looks for
    that). Held by an engine migrating now: refused."""
    path = database.with_suffix(".migratelock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise EngineError(f"{path} cannot be opened ({exc.strerror})") from None
    try:
        if owner is not None:  # made by root: still the engine's to open (read-write)
            os.fchown(fd, *owner)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EngineError(
                f"an engine is starting on {database} (it holds {path} while it migrates): "
                "stop it, then restore"
            ) from None
        yield
    finally:
        os.close(fd)


def _stage(
    source: Path, database: Path, blobs: dict[str, int], sha256: str, owner: tuple[int, int] | None
) -> tuple[Path, Path]:
    """Copy the backup beside ``database`` under temporary names, checked as copied: the
    database's bytes must hash to the manifest's SHA-256 (the file was checked before, and may
    have changed since), each document file to its name. Given to ``owner`` (restore as root)."""
    new_db = database.with_name(f".{database.name}.restoring")
    new_blobs = database.with_name(f".{database.stem}.blobs.restoring")
    _remove(new_db, new_blobs)  # an interrupted restore's
    try:
        if _copy_file(source / DB_NAME, new_db) != sha256:
            raise EngineError(
                f"{source / DB_NAME} changed while it was copied (its SHA-256 is no longer the "
                f"one in {MANIFEST}): nothing was restored"
            )
        _copy_blobs(source / BLOBS_NAME, new_blobs, blobs, when="in the backup")
        if owner is not None:
            for path in (new_db, new_blobs, *new_blobs.rglob("*")):
                os.chown(path, *owner, follow_symlinks=False)
    except BaseException:
        _remove(new_db, new_blobs)
        raise
    return new_db, new_blobs


def _put_in_place(database: Path, new_db: Path, new_blobs: Path) -> Path | None:
    """Move the current database and its files aside and rename the staged ones into place:
    the documents' folder first, the database last, so a crash between leaves no database (a
    restore run again puts both), never one whose files are in ``pre-restore-*``. Where the
    replaced one went."""
    if (user := database_user(database)) is not None:  # started while we copied
        _remove(new_db, new_blobs)
        raise EngineError(f"{database} was opened by process {user} meanwhile: stop it first")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # until the database is in place, a start refuses (engine/store/db.py): killed between the
    # renames, the restore left no database, and an engine made an empty one whose hourly
    # sweep removed the restored document files no row named
    marker = restore_marker(database)
    folder = _unused(database.parent / f"pre-restore-{stamp}")
    _write_synced(marker, f"{folder.name}\n".encode())
    _fsync_dir(database.parent)
    aside = _move_aside(database, folder)
    new_blobs.replace(database.with_suffix(".blobs"))
    _fsync_dir(database.parent)
    new_db.replace(database)
    _fsync_dir(database.parent)
    marker.unlink()
    _fsync_dir(database.parent)
    # an engine that opened the database since the check above (it opens it before it takes
    # the migration lock, and waits for that) has the one moved aside open, its WAL index
    # moved with it or, made after the move began, left beside the restored one
    user = database_user(database)
    if user is None and aside is not None:
        user = database_user(aside / database.name)
    if user is not None:
        kept = f" (the one it replaced is in {aside})" if aside is not None else ""
        raise EngineError(
            f"{database} is restored{kept}, but process {user} opened the database while it "
            "was being replaced: stop that process, then start the engine again"
        )
    return aside


def restore_marker(database: Path) -> Path:
    """The file beside ``database`` that says a restore began to put a backup in its place
    and has not finished (its content: the folder the replaced database went to)."""
    return database.with_name(f"{database.name}.restore-unfinished")


def unfinished_restore(database: Path) -> str | None:
    """Why ``database`` must not be opened: a restore was stopped while it put a backup in
    place (:func:`restore_marker`); None when none was."""
    marker = restore_marker(database)
    try:
        aside = marker.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        aside = f"? ({exc.strerror})"
    return (
        f"a restore of {database} was stopped before it finished ({marker} is there): run "
        f"`engine restore` from the backup again (the database it replaced, if there was one, "
        f"is in {aside} beside it), then start the engine"
    )


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _online_copy(database: Path, copy: Path) -> None:
    """Every page in one step of the backup API: one read transaction, one commit's state."""
    # made 0600 before SQLite opens it: SQLite would make it by the umask (often readable by
    # all) until a chmod after the copy. Its journal takes the same mode (SQLite's unix VFS)
    os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    src = sqlite3.connect(database, timeout=30)
    try:
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)  # pages=-1: all at once
            # one self-contained file (the engine turns WAL on again when it opens it)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    _fsync(copy)


def _check_copy(copy: Path) -> tuple[str | None, dict[str, int]]:
    """``PRAGMA integrity_check`` of the copy; its schema revision and the document files it
    names (SHA-256 → size)."""
    with contextlib.closing(sqlite3.connect(f"{copy.absolute().as_uri()}?mode=ro", uri=True)) as db:
        try:
            verdict = [row[0] for row in db.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            raise EngineError(f"{copy} is not a SQLite database ({exc})") from None
        if verdict != ["ok"]:
            raise EngineError(f"{copy} fails PRAGMA integrity_check: {verdict[0]}")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "alembic_version" not in tables:
            raise EngineError(f"{copy} is not an engine database (no schema revision)")
        revision = db.execute("SELECT version_num FROM alembic_version").fetchone()
        blobs: dict[str, int] = {}
        if "document_blobs" in tables:
            columns = {row[1] for row in db.execute("PRAGMA table_info(document_blobs)")}
            where = " WHERE stored = 'file'" if "stored" in columns else " WHERE 0"
            for sha, size in db.execute(f"SELECT sha256, size FROM document_blobs{where}"):
                blobs[str(sha)] = int(size)
    return (str(revision[0]) if revision else None), blobs


def _copy_blobs(source: Path, target: Path, blobs: dict[str, int], *, when: str) -> None:
    """Copy each named file, hashing it: it must be there and hash to its name."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    missing = [sha for sha in blobs if not (source / sha[:2] / sha).is_file()]
    if missing:
        raise EngineError(
            f"{len(missing)} document file(s) the database names are not in {source} "
            f"(first {missing[0][:12]}): not {when}"
        )
    for sha, size in sorted(blobs.items()):
        folder = target / sha[:2]
        folder.mkdir(mode=0o700, exist_ok=True)
        digest = _copy_file(source / sha[:2] / sha, folder / sha)
        if digest != sha or (folder / sha).stat().st_size != size:
            raise EngineError(f"the document file {sha[:12]} does not hold its bytes ({when})")
    for folder in target.iterdir():
        _fsync_dir(folder)
    _fsync_dir(target)


def _copy_file(source: Path, target: Path) -> str:
    """Copy, fsync, mode 0600; returns the SHA-256 of the bytes copied."""
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, source.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _move_aside(database: Path, folder: Path) -> Path | None:
    """Move the database, its ``-wal`` and ``-shm`` and its documents' folder into ``folder``
    (kept together: the log is found by the database's name)."""
    names = [
        database.name,
        f"{database.name}-wal",
        f"{database.name}-shm",
        f"{database.stem}.blobs",
    ]
    present = [database.parent / name for name in names if (database.parent / name).exists()]
    if not present:
        return None
    folder = _unused(folder)
    folder.mkdir(mode=0o700)
    for path in present:
        path.replace(folder / path.name)
    _fsync_dir(folder)
    return folder


def _unused(folder: Path) -> Path:
    """``folder``, or ``folder-2``, ``-3``... the first that does not exist (two restores
    within a second)."""
    base, n = folder, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def _read_manifest(source: Path) -> dict[str, object]:
    path = source / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{source} is not an engine backup (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"{path} cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != 1:
        raise EngineError(f"{path} is not a backup this engine reads (format 1)")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    _fsync(folder)
