"""What the soak reads about the running engine: from /proc (resident memory, open file
descriptors, CPU time, descriptors on the SQLite files) and from the store (the backlog,
eligibility checks; on PostgreSQL the connections, from ``pg_stat_activity``), read-only."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = [
    "PostgresStore",
    "SqliteStore",
    "cpu_s",
    "create_database",
    "db_fds",
    "drop_database",
    "fd_count",
    "loadavg",
    "rss_mb",
    "worker_pid",
    "worker_pids",
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


class SqliteStore:
    """The SQLite store, read-only: the backlog, eligibility checks, and connections counted
    from the engine's descriptors on the database file."""

    def __init__(self, db: Path) -> None:
        self.db = db
        #: why the last query that read -1 failed (the soak's line for that sample says it)
        self.error = ""

    def _query(self, sql: str) -> int:
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
                row = conn.execute(sql).fetchone()
            return int(row[0]) if row else 0
        except sqlite3.Error as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return -1

    def backlog(self) -> tuple[int, int]:
        """(messages not yet delivered: received or routed, deliveries pending or waiting); -1
        when the store could not be read this time."""
        return self._query(BACKLOG), self._query(PENDING)

    def eligibility_checks(self) -> int:
        """Eligibility checks stored so far (the scheduled runs are doing their work)."""
        return self._query("SELECT count(*) FROM eligibility_checks")

    def connections(self, pids: list[int | None]) -> tuple[int, int]:
        """(connections, descriptors on the database files) of the engine's processes."""
        found = [db_fds(pid, self.db) for pid in pids]
        return sum(c for c, _ in found), sum(f for _, f in found)

    def wal_mb(self) -> float:
        """The size of the write-ahead log (checkpointed and restarted, it stays bounded)."""
        try:
            return self.db.with_name(self.db.name + "-wal").stat().st_size / 1e6
        except OSError:
            return 0.0

    def close(self) -> None:
        pass


class PostgresStore:
    """A PostgreSQL database of the soak's own (made for the run, dropped after): the same
    figures, connections from ``pg_stat_activity`` (client backends on that database, this
    probe's own excluded)."""

    def __init__(self, url: str, dbname: str) -> None:
        import psycopg

        self.dbname = dbname
        self.conn = psycopg.connect(_libpq(url, dbname), autocommit=True)
        self.error = ""

    def _query(self, sql: str) -> int:
        import psycopg

        try:
            row = self.conn.execute(sql.encode(), prepare=False).fetchone()
            return int(row[0]) if row else 0
        except psycopg.Error as exc:
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return -1

    def backlog(self) -> tuple[int, int]:
        return self._query(BACKLOG), self._query(PENDING)

    def eligibility_checks(self) -> int:
        return self._query("SELECT count(*) FROM eligibility_checks")

    def connections(self, pids: list[int | None]) -> tuple[int, int]:
        n = self._query(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            f"AND datname = '{self.dbname}' AND pid <> pg_backend_pid()"
        )
        return n, 0

    def wal_mb(self) -> float:
        return 0.0  # PostgreSQL recycles its WAL segments itself

    def close(self) -> None:
        self.conn.close()


def _libpq(url: str, dbname: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq's, pointing at ``dbname``."""
    from sqlalchemy.engine import make_url

    u = make_url(url).set(drivername="postgresql", database=dbname)
    return u.render_as_string(hide_password=False)


def create_database(url: str, dbname: str) -> str:
    """Make database ``dbname`` on the server of ``url``; the engine's URL for it."""
    import psycopg
    from sqlalchemy.engine import make_url

    try:
        server = _libpq(url, make_url(url).database or "postgres")
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}"'.encode())
            c.execute(f'CREATE DATABASE "{dbname}"'.encode())
    except psycopg.Error as exc:
        raise RuntimeError(f"could not make database {dbname}: {type(exc).__name__}") from exc
    return make_url(url).set(database=dbname).render_as_string(hide_password=False)


def drop_database(url: str, dbname: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(_libpq(url, make_url(url).database or "postgres"), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'.encode())


BACKLOG = "SELECT count(*) FROM messages WHERE state IN ('received', 'routed')"
PENDING = "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'waiting')"


def worker_pids(receiver: int) -> list[int]:
    """The receiver's worker processes (multiprocessing's spawned children; not its resource
    tracker), in the order of their process ids."""
    try:
        tasks = list(Path(f"/proc/{receiver}/task").iterdir())
    except OSError:
        return []
    found = []
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
                found.append(int(child))
    return sorted(found)


def worker_pid(receiver: int) -> int | None:
    """The receiver's first worker process, if one is running."""
    pids = worker_pids(receiver)
    return pids[0] if pids else None


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
