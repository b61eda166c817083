"""The store's database: the SQLAlchemy engine, SQLite's settings, the writers' lock and the
write transaction every part of the store runs its statements in.

SQLite (WAL) is the embedded default, PostgreSQL the production choice; both run the same code
and the same tests. SQLite has one writer at a time: a write transaction takes its lock up front
(``BEGIN IMMEDIATE``) after queueing on :class:`WriteLock`. PostgreSQL takes many writers; work
is claimed there with ``SELECT ... FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BindParameter, Connection, Engine, create_engine, event, literal, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InvalidatePoolError, NoSuchModuleError

from engine.errors import ConfigError
from engine.store.clock import DbClock

__all__ = [
    "BUSY_TIMEOUT_MS",
    "Repository",
    "WORKER_STATEMENT_TIMEOUT_S",
    "WriteLock",
    "aware",
    "connection_problem",
    "create_db_engine",
    "failure_name",
    "hold_migration_lock",
    "in_index_order",
    "sqlstate",
    "state_literal",
    "statement_cancelled",
    "unbounded_statements",
    "utcnow",
]

#: how long a PostgreSQL connection attempt may take (a server that accepts but never answers
#: would otherwise hold start-up for ever); a ``connect_timeout`` in the URL wins
CONNECT_TIMEOUT_S = 10
#: the longest one statement of the queue workers may run on PostgreSQL (``statement_timeout``,
#: set when the connection opens). A safety net, not a pace: their statements take milliseconds.
#: It is there for a plan gone wrong: on 6 December a settle whose plan came from an empty
#: table's statistics ran 9.5 and 19.8 minutes at 195 % of PostgreSQL's CPU while the queue
#: stood still. Cancelled, the statement's transaction rolls back, the worker logs it, waits
#: and tries again (by then the leader's ANALYZE has usually made the plan anew). Migrations and
#: the leader's VACUUM run without it (:func:`unbounded_statements`). A ``statement_timeout``
#: in the URL's ``options`` wins.
WORKER_STATEMENT_TIMEOUT_S = 60
_SUPPORTED = "use postgresql://user@host:5432/name or sqlite:///path/engine.db"


def _parse(url: str) -> URL:
    """The URL parsed, or a ConfigError naming ENGINE_DATABASE_URL (the value is not echoed:
    it may hold a password)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"ENGINE_DATABASE_URL: not a database URL ({_SUPPORTED})") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"ENGINE_DATABASE_URL: database {backend!r} is not supported ({_SUPPORTED})"
        )
    return parsed


def connection_problem(db_engine: Engine, exc: Exception) -> ConfigError:
    """A failed connection as one line naming the database (host and port, or the SQLite file;
    never the password) and ENGINE_DATABASE_URL."""
    url = db_engine.url
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc) else ""
    reason = text.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip() or type(exc).__name__
    if url.get_backend_name() == "sqlite":
        where = f"the SQLite database {url.database}"
    else:
        where = f"the database at {url.host or 'localhost'}:{url.port or 5432}"
    return ConfigError(f"ENGINE_DATABASE_URL: cannot connect to {where} ({reason})")


def create_db_engine(
    url: str, *, durable: bool = True, statement_timeout_s: float | None = None
) -> Engine:
    """A SQLAlchemy engine (``db_engine``) for the URL; SQLite gets WAL and a created directory.

    ``durable`` (the receiver): every commit is fsynced (SQLite ``synchronous=FULL``), because an
    ACK promises the message survives a power cut. The queue workers pass ``durable=False``
    (``synchronous=NORMAL``: still safe against a crash of the process, and under WAL a commit
    needs no fsync): what they write can be redone — a message whose processing was lost is
    claimed again, a delivery whose outcome was lost is delivered again (idempotently) — and
    their shorter transactions keep the receiver's ACKs fast.

    ``statement_timeout_s`` (PostgreSQL; the workers pass :data:`WORKER_STATEMENT_TIMEOUT_S`):
    every connection opens with that ``statement_timeout``, added to the URL's own ``options``
    or else to ``PGOPTIONS`` (a search_path there stays) unless those already set one; not when
    the URL or ``PGSERVICE`` names a service file and the URL gives no options.

    A URL that does not parse, names a database other than PostgreSQL or SQLite, or a driver
    that is not installed, and a SQLite folder that cannot be created, raise a ConfigError naming
    ENGINE_DATABASE_URL (nothing connects yet: :func:`connection_problem` words that failure).
    """
    parsed = _parse(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, durable=durable)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args: dict[str, Any] = (
            {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_S}
        )
        for key, value in CLIENT_KEEPALIVES.items():
            if key not in parsed.query:
                connect_args[key] = value
        session = dict(SESSION_BOUNDS)
        if statement_timeout_s is not None:
            session["statement_timeout"] = _milliseconds(statement_timeout_s)
        options = _session_options(parsed.query, session)
        if options is not None:
            connect_args["options"] = options  # replaces the URL's: it includes them
        engine = create_engine(parsed, pool_size=10, max_overflow=10, connect_args=connect_args)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"ENGINE_DATABASE_URL: driver {parsed.drivername!r} is not available ({_SUPPORTED})"
        ) from exc
    _ping_when_idle(engine)
    return engine


#: a pooled PostgreSQL connection back in the pool for less than this is handed out without
#: asking the server first
PING_AFTER_IDLE_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Ask the server whether a pooled connection still works when it has been idle in the pool
    for :data:`PING_AFTER_IDLE_S` or more, not on every checkout.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip (an empty query) before every
    transaction: with the receiver's small group commits, a fifth of its round trips and about
    3 % of its CPU, and as much of each worker's (py-spy, 7 December 2026). A connection used a
    moment ago is alive unless the server went away in that moment; a statement on a dead one
    fails, SQLAlchemy sees a disconnect and drops every connection the pool held from before
    it, so after a restart of PostgreSQL or a cut connection at most the one transaction that
    found it fails (and is done again: the receiver answers its senders with a NAK, the
    workers claim again). A broken connection psycopg already knows of is replaced without a
    round trip. A ping or a connection found dead renews the whole pool
    (``InvalidatePoolError``, as ``pool_pre_ping`` does): the server that ended it ended the
    others too."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _idle_since(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _alive(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if getattr(dbapi_connection, "broken", False) or dbapi_connection.closed:
            raise InvalidatePoolError("the connection was broken while in the pool")
        since = record.info.pop("idle_since", None)
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise InvalidatePoolError(str(exc)) from exc
            raise


#: PostgreSQL: every connection's TCP keepalives (libpq), unless the URL sets them: a
#: connection to a database host that went away (powered off, cut off) fails in about 20 s,
#: not in the hours the kernel's defaults take
CLIENT_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}
#: PostgreSQL: every session's settings on the server's side, unless the URL's options (or
#: ``PGOPTIONS``) set them. The server's keepalives end the session of a node whose host went
#: away (paused, powered off, cut off) in about 20 s, and a session left idle inside a
#: transaction (its process stopped, not its host) after 5 minutes: either held its row locks
#: until then, and a message it was inserting held every other node's insert of a resend of
#: it, and with it their whole group commit, for the kernel's 2 hours (review of 7 December).
#: No transaction of the engine waits on its process that long: the workers' statements are
#: bounded at 60 s and their transactions hold no work between statements.
SESSION_BOUNDS = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "3",
    "tcp_keepalives_count": "3",
    "idle_in_transaction_session_timeout": "300000",
}


def _milliseconds(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)) if seconds > 0 else 0)  # 0: none


def _with_statement_timeout(
    query: Mapping[str, str | tuple[str, ...]], seconds: float
) -> str | None:
    """:func:`_session_options` with ``statement_timeout`` alone."""
    return _session_options(query, {"statement_timeout": _milliseconds(seconds)})


def _session_options(
    query: Mapping[str, str | tuple[str, ...]], settings: Mapping[str, str]
) -> str | None:
    """The libpq ``options`` the connection would have (the URL's, given once or repeated, or
    else ``PGOPTIONS``) with ``-c name=value`` added for each setting they do not set already
    (the administrator's wins); None when there is nothing to add, and when a service file is
    named without options in the URL (options given here would replace the service's, and with
    them a search_path)."""
    options = query.get("options")
    if options is None and ("service" in query or os.environ.get("PGSERVICE")):
        return None
    if isinstance(options, tuple):
        given = " ".join(options)
    else:
        given = options if options is not None else os.environ.get("PGOPTIONS", "")
    added = [
        f"-c {name}={value}"
        for name, value in settings.items()
        if name not in given and name.replace("_", "-") not in given
    ]
    return " ".join([given, *added]).strip() if added else None


def sqlstate(exc: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE of a failed statement (the driver's error under SQLAlchemy's), or
    None (SQLite, or not a database error)."""
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return code if isinstance(code, str) else None


def statement_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL cancelling a statement (SQLSTATE 57014: its
    ``statement_timeout``, or an operator's ``pg_cancel_backend``), not the database away."""
    return sqlstate(exc) == "57014"


def failure_name(exc: BaseException) -> str:
    """What a worker's loop logs of a failure: its type, or ``statement cancelled`` when
    PostgreSQL cancelled it (its type, OperationalError, is also the database away)."""
    return "statement cancelled" if statement_cancelled(exc) else type(exc).__name__


@contextmanager
def unbounded_statements(conn: Connection) -> Iterator[Connection]:
    """Run the statements inside without the connection's ``statement_timeout`` (PostgreSQL;
    elsewhere nothing): a migration or a VACUUM may rightly take minutes on a large store.

    In a transaction the setting is ``SET LOCAL`` (it ends with the transaction, whatever
    happens). On an AUTOCOMMIT connection it is restored (``RESET``: the value the connection
    opened with) after; if that cannot be done the connection is invalidated, so that no pooled
    connection is left without its limit.
    """
    if conn.dialect.name != "postgresql":
        yield conn
        return
    if not getattr(conn.connection.dbapi_connection, "autocommit", False):  # a transaction
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
        yield conn
        return
    conn.exec_driver_sql("SET statement_timeout = 0")
    try:
        yield conn
    finally:
        try:
            conn.exec_driver_sql("RESET statement_timeout")
        except Exception:
            conn.invalidate()


def _sqlite_engine(parsed: URL, *, durable: bool) -> Engine:
    if parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"ENGINE_DATABASE_URL: cannot create the database folder {folder} "
                f"({exc.strerror or exc}); set ENGINE_HOME or ENGINE_DATABASE_URL"
            ) from exc
        _refuse_unfinished_restore(Path(parsed.database))
    db_engine = create_engine(
        parsed, connect_args={"check_same_thread": False, "isolation_level": None}
    )
    _configure_sqlite(db_engine, durable=durable)
    return db_engine


def _file_id(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (device and inode), None when there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _refuse_unfinished_restore(database: Path) -> None:
    """A SQLite store a restore began to replace and did not finish is not opened: with no
    database in place, an engine would make an empty one (engine/store/backup.py)."""
    from engine.store.backup import unfinished_restore

    if (why := unfinished_restore(database)) is not None:
        raise ConfigError(why)


#: how long a SQLite statement waits for a lock before it fails (``database is locked``)
BUSY_TIMEOUT_MS = 10_000


def _into_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL`` on a new connection. Processes opening a new database file
    at the same moment (two engine processes started together on a new store) each try to
    switch it to WAL, which needs the file to itself, and SQLite answers ``database is locked``
    at once rather than wait for it (1 in 12 children of a pair failed so, 7 December): tried
    again for up to :data:`BUSY_TIMEOUT_MS`."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite(db_engine: Engine, *, durable: bool) -> None:
    """WAL and the pragmas on every new connection; write transactions begin IMMEDIATE."""

    @event.listens_for(db_engine, "connect")
    def _pragma(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # first: the next may wait
        _into_wal(cur)
        cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        # no checkpoint inside a commit (an ACK would wait for it, ~100 ms at times):
        # ``checkpoint`` runs beside the writers instead (engine serve, engine worker)
        cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(db_engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        # a write transaction takes the write lock up front (no deadlock when two
        # transactions both upgrade); reads stay deferred, so under WAL they never wait
        if conn.get_execution_options().get("write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class WriteLock:
    """Serialises SQLite writers across threads and processes with lock files, the receiver's
    commits first.

    SQLite lets one writer in at a time and makes the others poll with growing sleeps (up to
    100 ms each), which shows as ACK latency when the worker process writes while the receiver
    does. An ``flock`` on ``<db>.writelock`` wakes a waiter the moment the lock is free.

    ``flock`` keeps no queue, so the queue workers' writers could take turns while the receiver
    waits. A second lock, ``<db>.writeintent``, gives the receiver's group commit (which ACKs
    wait on) the first turn: it holds the intent exclusively while it waits for the write lock;
    every other writer passes through the intent (shared) before queueing for the write lock.
    The receiver thus waits for at most the one transaction already running, and the workers
    still get a turn between two of its commits. The threads of one process share one lock per
    file (:meth:`for_engine`) and take their turns on it first, the receiver's again before
    the others. On PostgreSQL (row locks, no single writer) this is a no-op.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        # the threads of this process take turns here first, the receiver's before others
        self._turn = threading.Condition()
        self._busy = False
        self._priority_waiting = 0
        self._fds: tuple[int, int] | None = None
        #: how long the last priority writer waited for the lock (the receiver's commits)
        self.priority_wait_s = 0.0

    @classmethod
    def for_engine(cls, db_engine: Engine) -> WriteLock:
        """The lock beside a SQLite database file, one per file in a process (every part of
        the store shares it, and its two descriptors); a no-op lock for anything else."""
        url = db_engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return cls(None)
        path = Path(os.path.abspath(url.database)).with_suffix(".writelock")
        with _shared_guard:
            lock = _shared.get(path)
            if lock is None:
                lock = _shared[path] = cls(path)
            return lock

    def __del__(self) -> None:
        # the last store on this file is gone: give its descriptors back (a test suite makes
        # thousands of stores; one process's engine keeps its lock for its life)
        fds, self._fds = getattr(self, "_fds", None), None
        for fd in fds or ():
            try:
                os.close(fd)
            except OSError:
                pass

    def _open(self) -> tuple[int, int]:
        if self._fds is None:
            assert self.path is not None
            lock = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                intent = os.open(
                    self.path.with_suffix(".writeintent"), os.O_RDWR | os.O_CREAT, 0o600
                )
            except OSError:
                os.close(lock)
                raise
            self._fds = (lock, intent)
        return self._fds

    @contextmanager
    def held(self, *, priority: bool = False) -> Iterator[None]:
        """Hold the write lock; ``priority`` (the receiver) goes before writers arriving later."""
        if self.path is None:
            yield
            return
        started = time.monotonic()
        self._take_turn(priority)
        try:
            lock, intent = self._open()
            if priority:
                fcntl.flock(intent, fcntl.LOCK_EX)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                finally:
                    fcntl.flock(intent, fcntl.LOCK_UN)
                self.priority_wait_s = time.monotonic() - started
            else:
                fcntl.flock(intent, fcntl.LOCK_SH)  # behind a receiver that is waiting
                fcntl.flock(intent, fcntl.LOCK_UN)
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            with self._turn:
                self._busy = False
                self._turn.notify_all()

    def _take_turn(self, priority: bool) -> None:
        """This process's turn: one thread at a time, a priority writer before the others."""
        with self._turn:
            if priority:
                self._priority_waiting += 1
                try:
                    while self._busy:
                        self._turn.wait()
                finally:
                    self._priority_waiting -= 1
            else:
                while self._busy or self._priority_waiting:
                    self._turn.wait()
            self._busy = True


#: the WriteLock of each SQLite file in this process, while any store on it lives
_shared: weakref.WeakValueDictionary[Path, WriteLock] = weakref.WeakValueDictionary()
_shared_guard = threading.Lock()


class Repository:
    """What every part of the store shares: the database and its write transactions.

    The parts (messages, deliveries, the resource index, eligibility) each subclass this, and
    :class:`~engine.store.repository.SqlMessageStore` combines them on one database.
    """

    def __init__(self, db_engine: Engine) -> None:
        self.db_engine = db_engine
        self._write_lock = WriteLock.for_engine(db_engine)
        #: the database's clock, which claims' fallback time-outs use (engine/store/clock.py)
        self.clock = DbClock.for_engine(db_engine)

    def now(self) -> datetime:
        """Now in the database's clock (this host's, corrected by the measured offset; on
        SQLite the host's): what a claim's fallback time-out is written and compared in."""
        return self.clock.now()

    @contextmanager
    def _tx(self, *, priority: bool = False) -> Iterator[Connection]:
        """A write transaction (on SQLite: BEGIN IMMEDIATE, under the writers' file lock;
        ``priority`` for the receiver's commits, which ACKs wait on)."""
        with self._write_locked(priority=priority) as conn, conn.begin():
            yield conn

    @contextmanager
    def _write_locked(self, *, priority: bool = False) -> Iterator[Connection]:
        """A connection for write transactions, under the writers' file lock on SQLite until
        the block ends: what it does after a commit no other writer comes between."""
        with self._write_lock.held(priority=priority), self.db_engine.connect() as conn:
            conn.execution_options(write=True)
            yield conn


def utcnow() -> datetime:
    """Now, in UTC: the store writes every time in UTC."""
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


#: PostgreSQL, for the rest of the transaction: no bitmap scan and no whole sort (see
#: :func:`in_index_order`)
_IN_INDEX_ORDER = text(
    "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true)"
)


def in_index_order(conn: Connection) -> None:
    """PostgreSQL: make the claims that follow in ``conn``'s transaction walk their queue's
    index in order and stop at their limit.

    A queue's statistics are stale by nature: they were taken when a state (``received``,
    ``pending``) held a few rows, and a backlog grows faster than autovacuum analyzes (after
    10 % of a table changes: never, for a backlog in a table of millions). The planner then
    reads every row of the state and sorts them, for each claim: 3,000 pending deliveries made
    each claim take 4-19 ms in the pg-cost run (4 December 2026), and 100,000 would make the
    worker fall further behind the deeper its backlog. Reading in index order costs the same
    when the queue is short. SQLite's planner keeps its order by itself: nothing to do."""
    if conn.dialect.name == "postgresql":
        conn.execute(_IN_INDEX_ORDER)


def state_literal(state: str) -> BindParameter[str]:
    """A queue state written into the statement's text, not sent as a parameter.

    psycopg prepares a statement run five times on a connection, and PostgreSQL may then keep a
    generic plan, made without the parameters' values: it reckons any state to hold an equal
    share of the table. The queue states are nothing like equal (a few received or processing
    messages among millions delivered), so a probe for one of them walked the table from its
    start. Written into the text, the state is planned for with the table's statistics, which
    the leader keeps fresh (engine/jobs/upkeep.py)."""
    return literal(state, literal_execute=True)


#: the PostgreSQL advisory lock key migrations take (any fixed number; this is "engmig" in ASCII)
MIGRATION_LOCK_KEY = 0x656E676D6967


#: PostgreSQL: how long a migration step waits for a table that another session holds (a
#: long report, a transaction left open) before the whole migration gives up, rolls back and
#: tries again. While a step such as ``ALTER TABLE messages`` waits for its lock, every other
#: node's statements on that table queue behind it: its receivers stop ACKing. Without a limit
#: they would wait as long as that other session; with it, at most this long at a time.
MIGRATION_LOCK_WAIT_S = 2.0
#: how long the migration keeps trying before it fails, naming the long transactions
MIGRATION_RETRY_FOR_S = 300.0


#: PostgreSQL's lock_not_available (``lock_timeout``) and deadlock_detected: a migration that
#: got either is rolled back whole and tried again
_LOCK_STATES = frozenset({"55P03", "40P01"})


def lock_wait_ran_out(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL's ``lock_timeout`` (SQLSTATE 55P03) or a deadlock it broke
    (40P01): a wait for other sessions' locks that a new attempt may not meet."""
    return sqlstate(exc) in _LOCK_STATES


def table_holders(conn: Connection, older_than_s: float) -> list[tuple[int, float | None, str]]:
    """PostgreSQL: the other sessions holding a lock on a table of this schema, in a transaction
    for over ``older_than_s`` (pid, seconds or None when the database does not show this role
    another role's sessions, the tables), longest first: those a migration step waits for.
    From ``pg_locks``, which shows every session's locks to every role."""
    rows = conn.exec_driver_sql(
        "SELECT l.pid, extract(epoch FROM now() - a.xact_start), "
        "string_agg(DISTINCT c.relname, ', ' ORDER BY c.relname) "
        "FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_backend_pid() "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND c.relkind IN ('r', 'p') "
        "AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) "
        "AND (a.xact_start IS NULL OR a.xact_start < now() - make_interval(secs => %(s)s)) "
        "GROUP BY l.pid, a.xact_start ORDER BY a.xact_start NULLS LAST, l.pid",
        {"s": older_than_s},
    )
    return [(int(pid), None if age is None else float(age), str(t)) for pid, age, t in rows]


def hold_migration_lock(conn: Connection) -> None:
    """Make migrations run one process at a time: held from now until ``conn``'s transaction
    (the one the upgrade runs in) commits or rolls back.

    Several nodes started together on one database would otherwise all see the old revision
    and all apply the same steps (the second fails on a table the first made). The lock lasts
    until the transaction ends, not until the upgrade's last statement: a node that waited
    then reads the revision the first one committed, and finds nothing to do.

    PostgreSQL: ``pg_advisory_xact_lock`` (released by the server at commit or rollback, or when
    the connection dies). SQLite: an ``flock`` on ``<db>.migratelock`` beside the database,
    released when the transaction ends (a process that dies releases it too).
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        # from here on, the steps' own locks: see MIGRATION_LOCK_WAIT_S
        wait_ms = max(1, int(MIGRATION_LOCK_WAIT_S * 1000))
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")
        return
    database = conn.engine.url.database
    if conn.dialect.name != "sqlite" or not database or database == ":memory:":
        return
    opened = _file_id(Path(database))  # the file this connection opened, a moment ago
    fd = os.open(Path(database).with_suffix(".migratelock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # a start that waited here for a restore: stopped half-way, or done (the connection's
        # file, made while the old one was moved aside, is no longer the database)
        _refuse_unfinished_restore(Path(database))
        if _file_id(Path(database)) != opened:
            raise ConfigError(
                f"{database} was replaced while this engine waited to start (a restore): "
                "start it again"
            )
    except BaseException:
        os.close(fd)
        raise

    held = [fd]
    dbapi_conn = conn.connection.dbapi_connection

    def release(*_args: Any) -> None:
        if held:
            os.close(held.pop())  # closing the descriptor releases the flock

    def checked_in(dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection is dbapi_conn:
            release()

    # after the commit, when the connection goes back to the pool (the Connection's own
    # ``commit`` event fires before the commit: a waiter would read the old revision)
    event.listen(conn.engine.pool, "checkin", checked_in)
    event.listen(conn, "rollback", release)  # nothing committed: the next may go at once
