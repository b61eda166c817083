"""The message store the engine uses: its parts combined on one database.

Each part holds the statements of what it stores (:mod:`~engine.store.messages`,
:mod:`~engine.store.deliveries`, :mod:`~engine.store.index`, :mod:`~engine.store.eligibility`);
this class adds what concerns the database as a whole: its schema, SQLite's checkpoints and the
readiness probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, OperationalError

from engine.errors import ConfigError, EngineError
from engine.store import db
from engine.store.audit import Audit
from engine.store.cluster import Cluster
from engine.store.console_stats import ConsoleStats
from engine.store.db import BUSY_TIMEOUT_MS, unbounded_statements
from engine.store.deliveries import Deliveries
from engine.store.documents import Documents
from engine.store.eligibility import EligibilityChecks
from engine.store.handled import HandledMarks
from engine.store.index import ResourceIndex
from engine.store.messages import MessageStore
from engine.store.nodes import Nodes
from engine.store.operator import DocumentActions, Operator
from engine.store.search import MessageSearch
from engine.store.users import Users

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "BUSY_TIMEOUT_MS",
    "RESTART_BACKOFF_MAX_S",
    "RESTART_WAIT_MS",
    "WAL_LIMIT_BYTES",
    "RestartPacing",
    "SqlMessageStore",
]

log = logging.getLogger(__name__)

#: the length past which a SQLite checkpoint makes the write-ahead log start over (see
#: ``checkpoint``)
WAL_LIMIT_BYTES = 128 * 1024 * 1024
#: each frame of the log: a page and its 24-byte header
WAL_FRAME_HEADER = 24
#: how long that checkpoint waits for the writer and readers under way before it gives up
RESTART_WAIT_MS = 100
#: the longest pause between two tries of that checkpoint while it keeps finding a reader
#: that holds the log (see :class:`RestartPacing`)
RESTART_BACKOFF_MAX_S = 60.0


class RestartPacing:
    """When the RESTART checkpoint may be tried again after it found the log held.

    A reader that keeps one read transaction open for minutes (``engine backup`` copies the
    database in one, a long export) holds the log: no RESTART can complete until it ends, and
    each try holds the writers for :data:`RESTART_WAIT_MS` before it gives up. Tried every
    second by each of the two processes that checkpoint (``engine serve`` and its first worker),
    that stalled the writers up to 200 ms of every second, for as long as the backup ran. So
    after a try that came back busy the next waits twice as long as the one before (2 s, 4 s,
    ... up to :data:`RESTART_BACKOFF_MAX_S`); the PASSIVE checkpoint goes on meanwhile. A
    RESTART that completes, or a log back under the limit, ends the pause.

    The pause is cut short when the PASSIVE checkpoint copies more of the log than it could when
    the RESTART failed: the reader that held it back (and the RESTART with it) has let go, so
    the log need not grow on for up to a minute after a backup ends (it keeps that size until
    the last connection closes).
    """

    def __init__(self) -> None:
        #: the pause after the last RESTART that failed; 0 when the last one did not
        self.wait_s = 0.0
        self._due = 0.0
        #: the log's frames copied into the database when that RESTART failed
        self._copied = 0

    def ready(self, copied: int) -> bool:
        """Whether to try a RESTART now, the PASSIVE checkpoint having ``copied`` frames."""
        return not self.wait_s or copied > self._copied or time.monotonic() >= self._due

    def failed(self, copied: int) -> None:
        """A RESTART came back busy, ``copied`` frames of the log in the database."""
        self.wait_s = min(RESTART_BACKOFF_MAX_S, 2 * max(1.0, self.wait_s))
        self._due = time.monotonic() + self.wait_s
        self._copied = copied

    def reset(self) -> None:
        """A RESTART completed, or the log is under the limit again."""
        self.wait_s = 0.0


class SqlMessageStore(
    MessageStore,
    Deliveries,
    ResourceIndex,
    EligibilityChecks,
    MessageSearch,
    Operator,
    DocumentActions,
    Audit,
    Nodes,
    Cluster,
    Documents,
    ConsoleStats,
    HandledMarks,
    Users,
):
    """The message store on a SQLAlchemy engine: messages, deliveries, the resource index,
    eligibility checks, the operator's search, replay and resend, documents' matching, and the
    audit trail
    (``SqlMessageStore(db_engine)``)."""

    def __init__(self, db_engine: Engine) -> None:
        super().__init__(db_engine)
        #: when :meth:`checkpoint` may try a RESTART again after one found the log held
        self.restarts = RestartPacing()

    def require_current_schema(self) -> None:
        """For what uses the store without changing its schema (the CLI's commands): a
        ConfigError when the database is not at this engine's newest revision. Older: the
        nodes running now may be of the older version, and a newer CLI installed beside them
        must not change the schema under them; `engine serve` of this version migrates it.
        Newer: as :meth:`migrate` says it. A database that cannot be reached raises
        SQLAlchemy's error, which the caller words."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = alembic_config()
        with self.db_engine.connect() as conn:
            if (newer := _newer_schema(conn, cfg)) is not None:
                raise newer
            heads = MigrationContext.configure(conn).get_current_heads()
        head = ScriptDirectory.from_config(cfg).get_current_head()
        if tuple(heads) != (head,):
            raise ConfigError(
                f"the database's schema is at revision {', '.join(heads) or '(none)'}, older "
                f"than this engine's {head}: start `engine serve` of this version on it, which "
                "migrates it (every node of the database must then run this version); "
                "a command leaves the schema as it is, for the nodes running now"
            )

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest Alembic revision (creates it on a new database).

        On PostgreSQL a step that waits for a table another session holds gives up after
        :data:`~engine.store.db.MIGRATION_LOCK_WAIT_S` (the other nodes' statements on that
        table queue behind it meanwhile): the migration rolls back, says so in the log, and
        tries again, for :data:`~engine.store.db.MIGRATION_RETRY_FOR_S`; then it fails naming
        the sessions in a long transaction (EngineError).

        A step that fails otherwise (rows that break a new unique index, a table this role does
        not own, a full disk) is an EngineError naming the step's revision and the database's
        reason; a database at a revision this engine does not know (a newer engine migrated it)
        a ConfigError saying so. Those are not a database that cannot be reached: that raises
        SQLAlchemy's error, which the caller words (:func:`~engine.store.db.connection_problem`).
        """
        cfg = alembic_config()
        deadline: float | None = None  # from the first wait that ran out: see below
        attempt = 0
        while True:
            try:
                self._upgrade(cfg, revision)
                return
            except OperationalError as exc:
                if not db.lock_wait_ran_out(exc):
                    raise
                attempt += 1
                # the time to wait for another node's migration (the migration lock), or to
                # run a long step, is not counted: only the time since the first wait ran out
                deadline = deadline or time.monotonic() + db.MIGRATION_RETRY_FOR_S
                if time.monotonic() >= deadline:
                    raise EngineError(self._held_too_long()) from None
                log.warning(
                    "schema migration waited for a table another session holds: trying again",
                    extra={"attempt": attempt, "wait_s": db.MIGRATION_LOCK_WAIT_S},
                )
                # at least as long as a step's wait: the other nodes' statements go on between
                time.sleep(db.MIGRATION_LOCK_WAIT_S * random.uniform(1.0, 2.0))

    def _upgrade(self, cfg: Config, revision: str) -> None:
        """One try of :meth:`migrate`: every step in one transaction."""
        from alembic import command
        from alembic.util import CommandError

        # connecting is outside the try: a database that cannot be reached is the caller's to say
        with self.db_engine.connect() as conn:
            try:
                with conn.begin(), unbounded_statements(conn):
                    # unbounded: a step may rebuild an index of millions of rows, and the next
                    # node's start waits here for the migration lock as long as that takes
                    cfg.attributes["connection"] = conn
                    cfg.attributes["applied"] = []  # each step's revision once done (env.py)
                    command.upgrade(cfg, revision)
            except CommandError:
                newer = _newer_schema(conn, cfg)
                if newer is None:
                    raise
                raise newer from None
            except DBAPIError as exc:
                if db.lock_wait_ran_out(exc) or exc.connection_invalidated:
                    raise  # tried again; or the database went away, which is no step's fault
                step = _failed_step(conn, cfg, revision)
                raise EngineError(
                    f"database schema migration to {step} failed: {_short_reason(exc)}"
                ) from exc

    def _held_too_long(self) -> str:
        try:
            with self.db_engine.connect() as conn:
                held = db.table_holders(conn, db.MIGRATION_LOCK_WAIT_S)
        except DBAPIError as exc:  # the error to give is the migration's, not this one's
            log.warning("sessions holding the tables not read", extra={"error": type(exc).__name__})
            held = []
        who = (
            ", ".join(
                f"pid {pid} ({'?' if age is None else f'{age:.0f}'} s; {tables})"
                for pid, age, tables in held
            )
            or "none now"
        )
        return (
            f"the schema migration could not lock its tables for {db.MIGRATION_RETRY_FOR_S:.0f} "
            f"s: other sessions held them (those holding a table for longer than "
            f"{db.MIGRATION_LOCK_WAIT_S:g} s: {who}); end those or wait, then start again"
        )

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database without waiting for (or
        blocking) readers and writers. Elsewhere nothing.

        A PASSIVE checkpoint never makes the log start over while writes keep coming (there is
        always a frame newer than the checkpoint), so under a steady load the ``-wal`` file
        grows without end: 1.5 GB in 3 minutes at 200 messages/s with documents, in the soak.
        Once the log in use (its frames since it last started over, not the file's size) is
        past :data:`WAL_LIMIT_BYTES`, the checkpoint is a RESTART instead: it waits for the
        writer under way and for the readers of older frames, blocking new writers meanwhile,
        at most :data:`RESTART_WAIT_MS` (then it gives up and tries again at a later round),
        and the next write starts the log over at its beginning. The file keeps its size and
        is written over, never grows past about the limit, and is removed when the last
        connection closes. (A TRUNCATE, which emptied the file, held the writers 55-75 ms on
        this machine, and the worst ACKs at 200 messages/s were those that waited for it; a
        RESTART held them 1-5 ms.)

        While a long read transaction (a backup) holds the log, every RESTART comes back busy
        after its wait: the tries are spaced out then (:class:`RestartPacing`), and only the
        PASSIVE checkpoint runs between them.
        """
        if self.db_engine.dialect.name != "sqlite":
            return
        with self.db_engine.connect() as conn:
            _, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
            page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
        if frames < 0:  # not in WAL mode, or the other process's checkpoint under way (busy)
            return
        size = frames * (page + WAL_FRAME_HEADER)
        if size <= WAL_LIMIT_BYTES:
            self.restarts.reset()  # the log started over, here or in the other process
            return
        if not self.restarts.ready(copied):
            return
        started = time.monotonic()
        with self._write_lock.held(), self.db_engine.connect() as conn:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
            try:
                busy, _, restart_copied = conn.exec_driver_sql(
                    "PRAGMA wal_checkpoint(RESTART)"
                ).one()
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        took = {"wal_bytes": size, "ms": round(1000 * (time.monotonic() - started), 1)}
        if not busy:
            self.restarts.reset()
            log.info("write-ahead log started over", extra=took)
            return
        # the RESTART copies what it can first: its count, if higher, is where the reader
        # holding the log stopped it (-1 when it could not start: another checkpoint ran)
        self.restarts.failed(max(copied, restart_copied))
        log.info(
            "write-ahead log not restarted: busy",
            extra={**took, "next_try_s": self.restarts.wait_s},
        )

    async def checkpoints(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """Run :meth:`checkpoint` every ``every_s`` until ``stop`` is set."""
        if self.db_engine.dialect.name != "sqlite":
            return
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.checkpoint)
            except Exception as exc:  # busy, or the disk is full: try again later
                log.warning("checkpoint failed", extra={"error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    def ping(self) -> bool:
        """True when the database answers (for /readyz)."""
        with self.db_engine.connect() as conn:
            return bool(conn.execute(select(1)).scalar_one() == 1)


def _failed_step(conn: Connection, cfg: Config, target: str) -> str:
    """The revision of the step that failed: the one after the last done (env.py lists them),
    or after the database's own when none was (every step rolled back with the failure). When
    that cannot be told, the target and the database's revision."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(cfg)
    done: list[str] = cfg.attributes.get("applied") or []
    after: str | None = "?"
    try:
        after = done[-1] if done else MigrationContext.configure(conn).get_current_revision()
        following = script.get_revision(after).nextrev if after else set(script.get_bases())
    except Exception:  # the database's error is the one to give, not this one's
        following = set()
    if len(following) == 1:
        return str(next(iter(following)))
    head = script.get_current_head() if target == "head" else target
    return f"{head} (from {after or 'an empty schema'})"


def _short_reason(exc: DBAPIError) -> str:
    """The database's reason for a failed step, in one line and without values from rows:
    PostgreSQL gives those in its DETAIL (the duplicated key of a unique index), a line of its
    own left out, and after a colon in a data error's message (SQLSTATE class 22: 'invalid
    input syntax for type integer: "abc"'), cut there. SQLite's reasons carry none."""
    orig = exc.orig
    primary = getattr(getattr(orig, "diag", None), "message_primary", None)
    lines = str(primary or orig).strip().splitlines()
    reason = lines[0].strip() if lines else ""
    if (db.sqlstate(exc) or "").startswith("22"):
        reason = reason.split(": ", 1)[0]
    return reason or type(orig).__name__


def alembic_config() -> Config:
    """Alembic's configuration of the engine's migrations (engine/store/migrations)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def _newer_schema(conn: Connection, cfg: Config) -> ConfigError | None:
    """The error for a database at a revision this engine does not know (Alembic's "Can't
    locate revision"), or None when its revisions are all known (another CommandError)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(cfg)
    known = {rev.revision for rev in script.walk_revisions()}
    try:
        heads = MigrationContext.configure(conn).get_current_heads()
    except DBAPIError:
        return None
    unknown = [head for head in heads if head not in known]
    if not unknown:
        return None
    return ConfigError(
        f"the database's schema (revision {', '.join(unknown)}) is newer than this engine knows "
        f"(its newest is {script.get_current_head()}): run the newer engine, or restore a "
        "backup taken before the upgrade"
    )
