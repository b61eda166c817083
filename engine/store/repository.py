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

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError

from engine.errors import EngineError
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

__all__ = ["BUSY_TIMEOUT_MS", "RESTART_WAIT_MS", "WAL_LIMIT_BYTES", "SqlMessageStore"]

log = logging.getLogger(__name__)

#: the length past which a SQLite checkpoint makes the write-ahead log start over (see
#: ``checkpoint``)
WAL_LIMIT_BYTES = 128 * 1024 * 1024
#: each frame of the log: a page and its 24-byte header
WAL_FRAME_HEADER = 24
#: how long that checkpoint waits for the writer and readers under way before it gives up
RESTART_WAIT_MS = 100


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

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest Alembic revision (creates it on a new database).

        On PostgreSQL a step that waits for a table another session holds gives up after
        :data:`~engine.store.db.MIGRATION_LOCK_WAIT_S` (the other nodes' statements on that
        table queue behind it meanwhile): the migration rolls back, says so in the log, and
        tries again, for :data:`~engine.store.db.MIGRATION_RETRY_FOR_S`; then it fails naming
        the sessions in a long transaction (EngineError)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        deadline: float | None = None  # from the first wait that ran out: see below
        attempt = 0
        while True:
            try:
                with self.db_engine.begin() as conn, unbounded_statements(conn):
                    # unbounded: a step may rebuild an index of millions of rows, and the next
                    # node's start waits here for the migration lock as long as that takes
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, revision)
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
        at most :data:`RESTART_WAIT_MS` (then it gives up and tries again at the next round),
        and the next write starts the log over at its beginning. The file keeps its size and
        is written over, never grows past about the limit, and is removed when the last
        connection closes. (A TRUNCATE, which emptied the file, held the writers 55-75 ms on
        this machine, and the worst ACKs at 200 messages/s were those that waited for it; a
        RESTART held them 1-5 ms.)
        """
        if self.db_engine.dialect.name != "sqlite":
            return
        with self.db_engine.connect() as conn:
            _, frames, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
            page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
        size = max(0, frames) * (page + WAL_FRAME_HEADER)  # frames: -1 when not in WAL mode
        if size <= WAL_LIMIT_BYTES:
            return
        started = time.monotonic()
        with self._write_lock.held(), self.db_engine.connect() as conn:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
            try:
                busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)").one()[0]
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        log.info(
            "write-ahead log started over" if not busy else "write-ahead log not restarted: busy",
            extra={"wal_bytes": size, "ms": round(1000 * (time.monotonic() - started), 1)},
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
