"""Backup and restore of a SQLite engine: the database and its documents' files, copied online.

A backup is a folder (made ``0700``, its files ``0600``: it holds patient data)::

    engine.db        the database, copied with SQLite's online backup API
    engine.blobs/    the documents' bytes beside it (engine/store/blobs.py), ab/abcdef...
    backup.json      what was copied: time, engine version, schema revision, sizes, SHA-256s

**Online.** The database is copied in one step of the backup API (``sqlite3.Connection.backup``
with every page at once): one read transaction, so the copy is the database as of one commit,
while the engine goes on writing (WAL: a reader never blocks the writer). The documents' files
are copied after: a file is in place before the commit that names it (blobs.py), so every file
the copy names already exists; each is hashed as it is copied and must match its name. A file
retention removed between the two steps fails the backup (run it again), never a backup with a
row whose bytes are missing. The copy is checked with ``PRAGMA integrity_check``.

**Restore** checks the backup again (integrity, every file's SHA-256, a schema revision this
engine knows), refuses while any process has the database open (the engine holds a shared
lock on the WAL index, ``<db>-shm``, for as long as it runs: :func:`database_user`), moves the
current database, its log and its files aside into ``pre-restore-<time>/`` beside it (nothing is
deleted), and puts the backup's in place. The engine migrates it on its next start.

PostgreSQL is backed up with its own tools (``pg_dump``/``pg_restore``): :func:`pg_commands`.

Incomplete: Linux only for the running-engine check (the ``struct flock`` layout of
``F_GETLK``); elsewhere the check is skipped with a warning in the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import struct
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from engine.errors import EngineError

__all__ = [
    "BackupResult",
    "backup_sqlite",
    "database_user",
    "pg_commands",
    "restore_sqlite",
]

MANIFEST = "backup.json"
DB_NAME = "engine.db"
BLOBS_NAME = "engine.blobs"
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
    """Copy the SQLite ``database`` and its documents' files into the new folder ``target``."""
    if not database.is_file():
        raise EngineError(f"no engine database at {database}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise EngineError(f"{target} exists and is not an empty folder: name a new one")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    copy = target / DB_NAME
    _online_copy(database, copy)
    revision, blobs = _check_copy(copy)
    size = sum(blobs.values())
    _copy_blobs(database.with_suffix(".blobs"), target / BLOBS_NAME, blobs, when="backed up")
    manifest = {
        "format": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine_version": version,
        "source": str(database),
        "revision": revision,
        "database": {"file": DB_NAME, "bytes": copy.stat().st_size, "sha256": _sha256(copy)},
        "documents": {"folder": BLOBS_NAME, "files": len(blobs), "bytes": size},
    }
    _write_synced(target / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    _fsync_dir(target)
    return BackupResult(target, copy.stat().st_size, revision, len(blobs), size)


def restore_sqlite(source: Path, database: Path, *, known_revisions: set[str]) -> BackupResult:
    """Put the backup in ``source`` in place of ``database`` (which no process may have open)."""
    manifest = _read_manifest(source)
    copy = source / DB_NAME
    written = manifest.get("database")
    if not isinstance(written, dict) or _sha256(copy) != written.get("sha256"):
        raise EngineError(f"{copy} is not the file the backup wrote (its SHA-256 differs)")
    revision, blobs = _check_copy(copy)
    if revision is not None and revision not in known_revisions:
        raise EngineError(
            f"the backup's schema revision {revision} is unknown to this engine "
            "(made by a newer version?): restore it with that version"
        )
    notes: list[str] = []
    if (user := database_user(database)) is not None:
        raise EngineError(
            f"{database} is open by process {user} (a running engine?): stop it, then restore"
        )
    if sys.platform != "linux":
        notes.append("not checked whether the engine runs (Linux only): it must be stopped")
    database.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    new_db = database.with_name(f".{database.name}.restoring")
    new_blobs = database.with_name(f".{database.stem}.blobs.restoring")
    for leftover in (new_db, new_blobs):  # an interrupted restore's
        if leftover.is_dir():
            shutil.rmtree(leftover)
        leftover.unlink(missing_ok=True)
    _copy_file(copy, new_db)
    _copy_blobs(source / BLOBS_NAME, new_blobs, blobs, when="in the backup")
    if (user := database_user(database)) is not None:  # started while we copied
        shutil.rmtree(new_blobs)
        new_db.unlink()
        raise EngineError(f"{database} was opened by process {user} meanwhile: stop it first")
    aside = _move_aside(database, database.parent / f"pre-restore-{stamp}")
    new_db.replace(database)
    new_blobs.replace(database.with_suffix(".blobs"))
    _fsync_dir(database.parent)
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


def _online_copy(database: Path, copy: Path) -> None:
    """Every page in one step of the backup API: one read transaction, one commit's state."""
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
    os.chmod(copy, 0o600)
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
            f"(first {missing[0][:12]}): not {when}; if the engine's retention removed them "
            "meanwhile, run the backup again"
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
    base, n = folder, 1
    while folder.exists():  # two restores within a second
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    folder.mkdir(mode=0o700)
    for path in present:
        path.replace(folder / path.name)
    _fsync_dir(folder)
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
