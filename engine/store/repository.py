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
from pathlib import Path

from sqlalchemy import select

from engine.store.audit import Audit
from engine.store.console_stats import ConsoleStats
from engine.store.deliveries import Deliveries
from engine.store.documents import Documents
from engine.store.eligibility import EligibilityChecks
from engine.store.index import ResourceIndex
from engine.store.messages import MessageStore
from engine.store.nodes import Nodes
from engine.store.operator import DocumentActions, Operator
from engine.store.search import MessageSearch
from engine.store.users import Users

__all__ = ["SqlMessageStore"]

log = logging.getLogger(__name__)


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
    Documents,
    ConsoleStats,
    Users,
):
    """The message store on a SQLAlchemy engine: messages, deliveries, the resource index,
    eligibility checks, the operator's search, replay and resend, documents' matching, and the
    audit trail
    (``SqlMessageStore(db_engine)``)."""

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (creates it on a new database)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.db_engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database without waiting for (or
        blocking) readers and writers, so the log does not grow without end. Elsewhere nothing.
        """
        if self.db_engine.dialect.name != "sqlite":
            return
        with self.db_engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()

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
