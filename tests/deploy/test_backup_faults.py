"""``engine backup`` / ``engine restore`` when something happens meanwhile: retention purging the
documents whose files the backup is copying, a backup killed half way, a restore that crashes
between its renames, a backup file that changes while restore copies it, an engine starting
during a restore; and who may read or open the files each makes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from engine.errors import ConfigError, EngineError
from engine.store import SqlMessageStore, create_db_engine
from engine.store import backup as module
from engine.store.backup import backup_sqlite, restore_sqlite
from engine.store.db import utcnow
from engine.store.tables import messages
from tests.conftest import a_newer_message
from tests.deploy.test_backup import count_copy, run, seed_documents

NOBODY = 65534


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def _backed_up(home: Path, tmp_path: Path, n: int = 2) -> tuple[list[str], Path]:
    hashes = seed_documents(home / "engine.db", tmp_path, n)
    folder = tmp_path / "backup"
    backup_sqlite(home / "engine.db", folder, version="test")
    return hashes, folder


def _restore(folder: Path, database: Path) -> module.BackupResult:
    revision = json.loads((folder / "backup.json").read_text())["revision"]
    return restore_sqlite(folder, database, known_revisions={revision})


def test_retention_during_the_file_copy_leaves_the_files_the_copy_names(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hourly purge (then the sweep of unnamed files) runs between the copy of the database
    and the copy of the files it names: neither removes one while the backup runs; the sweep
    does once it is over."""
    database = home / "engine.db"
    hashes = seed_documents(database, tmp_path, 3)
    store = SqlMessageStore(create_db_engine(f"sqlite:///{database}"))
    files = store.blob_files
    assert files is not None
    checked = module._check_copy

    def then_retention(copy: Path) -> Any:
        found = checked(copy)
        with store.db_engine.begin() as conn:
            conn.execute(
                update(messages).values(state="delivered", updated_at=utcnow() - timedelta(days=90))
            )
        a_newer_message(store)  # (SQLite keeps the newest message)
        assert store.purge_range(timedelta(days=30)).rows == 3
        hour_ago = time.time() - 7200
        for sha in hashes:  # no longer named, and old: what the sweep removes
            with contextlib.suppress(FileNotFoundError):  # (removed by the purge)
                os.utime(files.path(sha), (hour_ago, hour_ago))
        assert store.sweep_blob_files() == 0
        return found

    monkeypatch.setattr(module, "_check_copy", then_retention)
    try:
        done = backup_sqlite(database, tmp_path / "b", version="test")
        assert done.documents == 3
        for sha in hashes:
            assert (tmp_path / "b" / "engine.blobs" / sha[:2] / sha).is_file()
        assert all(files.path(sha).exists() for sha in hashes)  # left by retention...
        assert store.sweep_blob_files() == 3  # ...for the sweep, the backup over
        assert not any(files.path(sha).exists() for sha in hashes)
    finally:
        store.db_engine.dispose()


_KILLED_MID_COPY = """
import os, signal, sys
from pathlib import Path
from engine.store import backup

copy = backup._copy_file
def dying(source, target):
    if "engine.blobs" in str(source):  # the database copied, the documents' files on their way
        os.kill(os.getpid(), signal.SIGKILL)
    return copy(source, target)
backup._copy_file = dying
backup.backup_sqlite(Path(sys.argv[1]), Path(sys.argv[2]), version="test")
"""


def test_a_backup_killed_or_failed_half_way_does_not_refuse_the_next_to_that_folder(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``engine backup /var/backups/engine/$(date +%F)`` from cron: one that failed or was
    killed must not make every later run that day fail on a folder that is not empty."""
    database = home / "engine.db"
    seed_documents(database, tmp_path, 2)
    target = tmp_path / "backups" / "2026-01-02"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_COPY, str(database), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not target.exists()  # nothing half written where the backup is looked for
    again = run(home, "backup", str(target))
    assert again.returncode == 0, again.stderr
    assert "2 document file(s)" in again.stdout
    assert sorted(p.name for p in target.parent.iterdir()) == ["2026-01-02"]  # left one gone
    assert count_copy(target / "engine.db", "document_blobs") == 2

    # a backup that fails (here: a file the database names is missing) leaves nothing either
    other = tmp_path / "backups" / "2026-01-03"

    def failing(*_args: Any, **_kwargs: Any) -> None:
        raise EngineError("1 document file(s) the database names are not in ...")

    monkeypatch.setattr(module, "_copy_blobs", failing)
    with pytest.raises(EngineError):
        backup_sqlite(database, other, version="test")
    assert sorted(p.name for p in other.parent.iterdir()) == ["2026-01-02"]
    monkeypatch.undo()
    assert backup_sqlite(database, other, version="test").documents == 2


def test_a_partial_folder_is_removed_only_when_a_killed_backup_left_it(
    home: Path, tmp_path: Path
) -> None:
    database = home / "engine.db"
    seed_documents(database, tmp_path, 1)
    target = tmp_path / "b"
    partial = tmp_path / "b.partial"
    partial.mkdir()
    (partial / "engine.db").write_bytes(b"half")
    fd = os.open(partial, os.O_RDONLY)
    try:  # another backup is writing it
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(EngineError, match="another backup is writing .*b.partial"):
            backup_sqlite(database, target, version="test")
        assert (partial / "engine.db").read_bytes() == b"half" and not target.exists()
    finally:
        os.close(fd)
    (partial / "notes.txt").write_text("someone's")  # not what a backup writes: kept
    with pytest.raises(EngineError, match="not a backup left unfinished"):
        backup_sqlite(database, target, version="test")
    assert (partial / "notes.txt").exists()
    (partial / "notes.txt").unlink()
    assert backup_sqlite(database, target, version="test").documents == 1
    assert not partial.exists()


def test_backup_files_are_never_readable_by_others(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not even while the database is being copied (SQLite makes a new file by the umask), and
    an empty folder named for the backup is made private too."""
    database = home / "engine.db"
    seed_documents(database, tmp_path, 2)
    target = tmp_path / "mnt"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    seen: dict[str, int] = {}

    class Watched(sqlite3.Connection):
        def backup(self, *args: Any, **kwargs: Any) -> None:
            for path in target.rglob("*"):  # the copy is made: what is there, and its mode
                seen[str(path.relative_to(target))] = path.stat().st_mode & 0o777
            super().backup(*args, **kwargs)

    connect = sqlite3.connect

    def watched(where: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if Path(str(where)) == database:
            kwargs["factory"] = Watched
        return connect(where, *args, **kwargs)

    monkeypatch.setattr(module.sqlite3, "connect", watched)
    previous = os.umask(0o022)
    try:
        backup_sqlite(database, target, version="test")
    finally:
        os.umask(previous)
    assert any(name.endswith("engine.db") for name in seen)
    assert {name: oct(mode) for name, mode in seen.items() if mode & 0o077} == {}
    assert oct(target.stat().st_mode & 0o777) == "0o700"
    assert sorted(p.name for p in target.iterdir()) == ["backup.json", "engine.blobs", "engine.db"]
    for path in target.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path


def test_an_empty_folder_named_keeps_its_place_and_a_killed_backups_leftover_goes(
    home: Path, tmp_path: Path
) -> None:
    """An empty folder named (a mount point cannot be renamed onto) is filled from inside."""
    database = home / "engine.db"
    seed_documents(database, tmp_path, 1)
    target = tmp_path / "mnt"
    target.mkdir()
    inode = target.stat().st_ino
    (target / ".partial").mkdir()
    (target / ".partial" / "engine.db").write_bytes(b"half")  # a killed backup's
    done = backup_sqlite(database, target, version="test")
    assert done.folder == target and target.stat().st_ino == inode
    assert sorted(p.name for p in target.iterdir()) == ["backup.json", "engine.blobs", "engine.db"]
    assert count_copy(target / "engine.db", "document_blobs") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user takes root")
def test_restore_as_root_gives_the_files_to_the_owner_of_the_database_replaced(
    home: Path, tmp_path: Path
) -> None:
    hashes, folder = _backed_up(home, tmp_path)
    database = home / "engine.db"
    os.chown(database, NOBODY, NOBODY)
    _restore(folder, database)
    restored = [database, home / "engine.blobs", *(home / "engine.blobs").rglob("*")]
    assert sum(path.is_file() for path in restored) == 1 + len(hashes)
    for path in restored:
        assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY, NOBODY), path
    lock = home / "engine.migratelock"  # the engine opens it read-write at its start
    assert not lock.exists() or lock.stat().st_uid == NOBODY


def test_restore_by_another_user_than_the_databases_owner_is_refused(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hashes, folder = _backed_up(home, tmp_path)
    database = home / "engine.db"
    me = database.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: me + 1000 if me else 1000)
    with pytest.raises(EngineError, match=r"engine\.db belongs to user .*not to the user running"):
        _restore(folder, database)
    assert not list(home.glob("pre-restore-*"))


class Crash(BaseException):
    """The process dying at that point."""


def test_a_crash_between_the_renames_leaves_no_database_without_its_files(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashes, folder = _backed_up(home, tmp_path)
    database = home / "engine.db"
    replace = Path.replace
    renamed: list[str] = []

    def crashing(self: Path, target: Any) -> Path:
        if self.name.endswith(".restoring"):
            if renamed:  # the second of the two renames into place
                raise Crash
            renamed.append(self.name)
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", crashing)
    with pytest.raises(Crash):
        _restore(folder, database)
    monkeypatch.undo()
    assert renamed  # the first was done
    # a database there (the one replaced, or the backup's) finds every file it names
    if database.exists():
        for sha in hashes:
            assert (home / "engine.blobs" / sha[:2] / sha).is_file()
    # no engine starts on it: it would make an empty database, and its sweep would remove the
    # restored files no row names
    with pytest.raises(ConfigError, match="restore of .* was stopped before it finished"):
        create_db_engine(f"sqlite:///{database}")
    assert not database.exists()
    # and a restore run again puts both in place
    _restore(folder, database)
    for sha in hashes:
        assert (home / "engine.blobs" / sha[:2] / sha).is_file()
    assert not module.restore_marker(database).exists()
    store = SqlMessageStore(create_db_engine(f"sqlite:///{database}"))
    store.migrate()  # an engine starts on it
    store.db_engine.dispose()


def test_an_engine_that_waited_for_a_restore_does_not_start_on_the_file_it_made(
    home: Path, tmp_path: Path
) -> None:
    """An engine that connected while the restore had moved the old database aside made an
    empty file there, then waited for the lock; the restore renamed the backup onto that
    name and finished. The engine, on its empty file, would have migrated it and left its
    log beside the restored database (found by review: the restore then read 0 messages)."""
    _backed_up(home, tmp_path)
    database = home / "engine.db"
    database.rename(tmp_path / "aside.db")  # moved aside...
    waiting = SqlMessageStore(create_db_engine(f"sqlite:///{database}"))
    with waiting.db_engine.connect() as conn:  # ...and an engine opens the name: a new file
        conn.exec_driver_sql("SELECT 1")
    lock = os.open(database.with_suffix(".migratelock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the restore's

    def restore_finishes() -> None:
        time.sleep(0.5)  # the engine waits for the lock meanwhile
        shutil.copy(tmp_path / "aside.db", tmp_path / "staged.db")
        (tmp_path / "staged.db").replace(database)
        os.close(lock)

    finishing = threading.Thread(target=restore_finishes)
    finishing.start()
    try:
        with pytest.raises(ConfigError, match="was replaced while this engine waited"):
            waiting.migrate()
    finally:
        finishing.join()
        waiting.db_engine.dispose()
    # the restored database is the backup's, whole
    assert _messages_in(database) == _messages_in(tmp_path / "aside.db") > 0


def _messages_in(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def test_an_engine_waiting_for_a_restore_that_stops_half_way_does_not_start(
    home: Path, tmp_path: Path
) -> None:
    """An engine started during a restore opens its database, then waits for the migration
    lock the restore holds. Were the restore killed between its renames, the engine would go
    on with no database in place: it checks again once it holds the lock."""
    _backed_up(home, tmp_path)
    database = home / "engine.db"
    waiting = SqlMessageStore(create_db_engine(f"sqlite:///{database}"))  # before the restore
    module.restore_marker(database).write_text("pre-restore-20261208T000000Z\n")  # as left
    try:
        with pytest.raises(ConfigError, match="run `engine restore` from the backup again"):
            waiting.migrate()
    finally:
        waiting.db_engine.dispose()


def test_a_backup_database_that_changes_while_it_is_copied_is_not_restored(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hashes, folder = _backed_up(home, tmp_path)
    database = home / "engine.db"
    before = database.read_bytes()
    checked = module._check_copy

    def then_changed(copy: Path) -> Any:
        found = checked(copy)
        if copy.parent == folder:  # checked already against backup.json: changed after that
            with copy.open("r+b") as f:
                f.seek(100)
                f.write(b"\xff")
        return found

    monkeypatch.setattr(module, "_check_copy", then_changed)
    with pytest.raises(EngineError, match=r"engine\.db changed while it was copied"):
        _restore(folder, database)
    assert database.read_bytes() == before
    assert not list(home.glob("pre-restore-*")) and not list(home.glob(".*restoring"))


def test_restore_is_refused_while_an_engine_starting_holds_the_migration_lock(
    home: Path, tmp_path: Path
) -> None:
    _hashes, folder = _backed_up(home, tmp_path)
    database = home / "engine.db"
    before = database.read_bytes()
    fd = os.open(home / "engine.migratelock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as hold_migration_lock does while the engine migrates
        with pytest.raises(EngineError, match=r"an engine is starting on .*engine\.db"):
            _restore(folder, database)
    finally:
        os.close(fd)
    assert database.read_bytes() == before and not list(home.glob("pre-restore-*"))
    _restore(folder, database)  # once it is gone


_OPENS = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("SELECT count(*) FROM messages").fetchone()
print("open", flush=True)
sys.stdin.read()
"""


def test_a_process_opening_the_database_as_restore_replaces_it_is_named(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine opens the database before it takes the migration lock: one that does so
    between restore's last check and its renames is not kept out, but restore says so."""
    _hashes, folder = _backed_up(home, tmp_path)
    database = home / "engine.db"
    move_aside = module._move_aside
    opened: list[subprocess.Popen[str]] = []

    def opened_first(*args: Any) -> Any:
        proc = subprocess.Popen(
            [sys.executable, "-c", _OPENS, str(database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        opened.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        return move_aside(*args)

    monkeypatch.setattr(module, "_move_aside", opened_first)
    try:
        with pytest.raises(EngineError) as raised:
            _restore(folder, database)
        said = str(raised.value)
        assert f"process {opened[0].pid} opened the database while it was being" in said
        assert "is restored (the one it replaced is in " in said and "pre-restore-" in said
    finally:
        for proc in opened:
            proc.communicate("", timeout=30)


def _nfs_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``flock`` as NFS answers it on a folder: an exclusive lock needs a file open for writing
    (EBADF); a shared one, and locks on files, work."""
    import errno
    import stat

    real = fcntl.flock

    def flock(fd: int, flags: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) and flags & fcntl.LOCK_EX:
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd, flags)

    monkeypatch.setattr(module.fcntl, "flock", flock)


def test_a_backup_to_a_folder_that_cannot_be_locked_nfs_still_works(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of 7 December: every backup to an NFS mount failed on the folder's lock."""
    database = home / "engine.db"
    seed_documents(database, tmp_path, 2)
    _nfs_locks(monkeypatch)
    done = backup_sqlite(database, tmp_path / "nfs" / "b", version="test")
    assert done.documents == 2 and (tmp_path / "nfs" / "b" / "backup.json").exists()
    assert any("cannot be locked" in note for note in done.notes)
    # a folder a backup left: never taken for a killed one's (no lock tells), the operator asked
    partial = tmp_path / "nfs" / "c.partial"
    partial.mkdir()
    (partial / "engine.db").write_bytes(b"half")
    with pytest.raises(EngineError, match="a backup may be writing it .*remove it"):
        backup_sqlite(database, tmp_path / "nfs" / "c", version="test")
    assert (partial / "engine.db").read_bytes() == b"half"
    shutil.rmtree(partial)
    assert backup_sqlite(database, tmp_path / "nfs" / "c", version="test").documents == 2
