"""What the soak reads about the running engine: from /proc (resident memory, open file
descriptors, descriptors on the SQLite files) and from the store (the backlog), read-only."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = [
    "backlog",
    "cpu_s",
    "db_fds",
    "eligibility_checks",
    "fd_count",
    "loadavg",
    "rss_mb",
    "worker_pid",
]


def rss_mb(pid: int | None) -> float:
    """VmRSS of one process in MB (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _fd_targets(pid: int | None) -> list[str]:
    if pid is None:
        return []
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for name in names:
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue  # closed meanwhile
    return out


def fd_count(pid: int | None) -> int:
    """Open file descriptors of one process (entries of /proc/PID/fd)."""
    return len(_fd_targets(pid))


def db_fds(pid: int | None, db: Path) -> tuple[int, int]:
    """(connections, descriptors) of one process on the SQLite store: each SQLite connection
    holds exactly one descriptor on the database file itself, so those count connections; the
    second figure adds the ``-wal`` and ``-shm`` files' descriptors."""
    main = str(db.resolve())
    targets = _fd_targets(pid)
    conns = sum(1 for t in targets if t == main)
    files = sum(1 for t in targets if t in (main, main + "-wal", main + "-shm"))
    return conns, files


def _query(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return -1


def backlog(db: Path) -> tuple[int, int]:
    """(messages not yet delivered: received or routed, deliveries pending or waiting); -1 when
    the store could not be read this time."""
    msgs = _query(db, "SELECT count(*) FROM messages WHERE state IN ('received', 'routed')")
    dels = _query(db, "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'waiting')")
    return msgs, dels


def eligibility_checks(db: Path) -> int:
    """Eligibility checks stored so far (the scheduled runs are doing their work)."""
    return _query(db, "SELECT count(*) FROM eligibility_checks")


def worker_pid(receiver: int) -> int | None:
    """The receiver's worker process (multiprocessing's spawned child), if running."""
    try:
        tasks = list(Path(f"/proc/{receiver}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                return int(child)
    return None


def cpu_s(pid: int | None) -> float:
    """User plus system CPU seconds of one process so far (/proc/PID/stat fields 14 and 15)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    """The machine's one-minute load average (other work on its cores slows the engine)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
