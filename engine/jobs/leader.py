"""The leader: of the nodes sharing one PostgreSQL database, the one that runs the singleton jobs
(the eligibility schedule, pulls, retention and queue repair, alerts).

Elected through a PostgreSQL advisory lock (``pg_try_advisory_lock``, session level, see
https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS), held on a
connection of its own that nothing else uses: the database decides, no node's memory or clock.
Every :data:`POLL_S` a node that does not lead tries the lock; the leader checks every
:data:`CHECK_S` that its connection answers and still holds the lock (``pg_locks`` of its own
backend). When the check fails or takes longer than :data:`CHECK_TIMEOUT_S` the node steps
down at once: its singleton jobs are cancelled (a run cut short is given back, for the next
leader to resume: engine/jobs/scheduler.py) and the connection closed.

When a leader dies (kill -9, its host gone) its connection closes and PostgreSQL frees the lock;
the next node to poll takes it, within :data:`POLL_S` of the server noticing. A host that vanishes
without closing its socket is noticed by TCP keepalives, set short on the lock connection on
both sides (client: libpq ``keepalives_*``; server: ``tcp_keepalives_*`` for that session), about
15 s. The lock's key is a digest of the database's and the schema's names: nodes of one engine
(one schema) elect one leader, and two engines in two schemas of one database elect one each.

On SQLite (one host's file) there is no election: the first of ``engine serve``'s worker
processes leads from the start, the others never (engine/flow/worker.py), and that first one,
when it dies, is started again by the receiver with the same index.

Incomplete: a leader whose connection is cut by a network partition that leaves its socket open
on the server's side keeps the lock until the server's keepalives give up (about 15 s); its own
check fails first (it steps down within :data:`CHECK_S` + :data:`CHECK_TIMEOUT_S`), so two nodes
do not lead at once, but no other node leads in that interval either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

__all__ = ["CHECK_S", "CHECK_TIMEOUT_S", "KEEPALIVES", "POLL_S", "Leadership", "lock_key"]

log = logging.getLogger(__name__)

#: how often a node that does not lead tries to take the lock
POLL_S = 3.0
#: how often the leader checks that it still holds the lock
CHECK_S = 2.0
#: a check that takes longer than this counts as failed: the leader steps down
CHECK_TIMEOUT_S = 5.0
#: on a clean stop, how long the singleton jobs get to end before they are cancelled
STOP_GRACE_S = 5.0

#: the lock connection: short TCP keepalives, so a dead peer is found in seconds (the job store's
#: connections have them too: engine/jobs/scheduler.py)
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "connect_timeout": 5,
}
#: the lock session's settings, each on its own (one a server does not know, such as
#: idle_session_timeout before PostgreSQL 14, is skipped)
_SESSION = (
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
    "SET statement_timeout = '5s'",
    "SET idle_in_transaction_session_timeout = 0",
    "SET idle_session_timeout = 0",
)
_HELD = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
    "AND granted AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = :key"
)


def lock_key(database: str, schema: str) -> int:
    """The advisory lock's key for an engine in ``schema`` of ``database``: a signed 64-bit
    number (what ``pg_try_advisory_lock(bigint)`` takes)."""
    digest = hashlib.sha256(f"engine-leader\x1f{database}\x1f{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leadership:
    """One node's campaign: ``run`` until ``stop``, running ``lead`` whenever this node leads.

    ``lead(term)`` is the singleton jobs: it runs until ``term`` is set (a clean stop; given
    :data:`STOP_GRACE_S` to end) or is cancelled (the lock lost: at once). ``leading`` says
    whether this node leads now; ``on_change`` is told each time it is set (at the start, when a
    term begins and when it ends: the ``engine_leader`` gauge)."""

    def __init__(
        self,
        db_engine: Engine,
        node: str,
        *,
        poll_s: float = POLL_S,
        check_s: float = CHECK_S,
        check_timeout_s: float = CHECK_TIMEOUT_S,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.db_engine = db_engine
        self.node = node
        self.poll_s = poll_s
        self.check_s = check_s
        self.check_timeout_s = check_timeout_s
        self._on_change = on_change
        self.leading = False
        #: how many times this node was elected (tests, logs)
        self.terms = 0
        self._lock_engine: Engine | None = None
        self._key: int | None = None

    @property
    def leading(self) -> bool:
        return self._leading

    @leading.setter
    def leading(self, value: bool) -> None:
        self._leading = value
        if self._on_change is not None:
            try:
                self._on_change(value)
            except Exception as exc:  # an observer must never stop a term or its end
                log.warning("leadership change not reported", extra={"error": type(exc).__name__})

    async def run(
        self, stop: asyncio.Event, lead: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
    ) -> None:
        """Campaign until ``stop``; lead while elected."""
        if self.db_engine.dialect.name != "postgresql":
            self.leading, self.terms = True, 1  # one node on SQLite: it leads
            try:
                await lead(stop)
            finally:
                self.leading = False
            return
        # the lock's session carries the node's id (PostgreSQL keeps 63 characters of it), so
        # pg_locks and pg_stat_activity say which node leads (engine/store/cluster.py)
        named = {**KEEPALIVES, "application_name": self.node[:63]}
        self._lock_engine = create_engine(
            self.db_engine.url, poolclass=NullPool, connect_args=named
        )
        try:
            while not stop.is_set():
                conn = await self._campaign()
                if conn is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_s)
                    continue
                if await self._term(conn, stop, lead):
                    # lost: let a node whose connection is sound lead first
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_s * 2)
        finally:
            self._lock_engine.dispose()

    async def _campaign(self) -> Connection | None:
        """One try at the lock: the connection holding it, or None."""
        attempt = asyncio.ensure_future(asyncio.to_thread(self._try_lock))
        try:
            return await asyncio.wait_for(asyncio.shield(attempt), self.check_timeout_s * 2)
        except Exception as exc:  # the database away: try again at the next poll
            # a try that answers after we gave up on it must not keep the lock unled
            attempt.add_done_callback(self._abandon)
            log.warning(
                "leader election failed", extra={"node": self.node, "error": type(exc).__name__}
            )
            return None

    def _abandon(self, attempt: asyncio.Future[Connection | None]) -> None:
        """A late try's connection, if it got the lock: let go of it (in a thread of its own:
        this runs on the event loop)."""
        if attempt.cancelled() or attempt.exception() is not None:
            return
        conn = attempt.result()
        if conn is not None:
            threading.Thread(target=self._let_go, args=(conn,), daemon=True).start()

    def _try_lock(self) -> Connection | None:
        assert self._lock_engine is not None
        conn = self._lock_engine.connect()
        try:
            for setting in _SESSION:
                try:
                    conn.exec_driver_sql(setting)
                    conn.commit()
                except DBAPIError:
                    conn.rollback()
            if self._key is None:
                database, schema = conn.execute(
                    text("SELECT current_database(), current_schema()")
                ).one()
                self._key = lock_key(str(database), str(schema or "public"))
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key})
            if got.scalar_one():
                conn.commit()  # no transaction left open: the lock is the session's
                return conn
            conn.rollback()
        except BaseException:
            conn.close()
            raise
        conn.close()
        return None

    def _held(self, conn: Connection) -> bool:
        held = conn.execute(_HELD, {"key": self._key}).scalar_one()
        conn.rollback()
        return bool(held)

    async def _still_held(self, conn: Connection) -> bool:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._held, conn), self.check_timeout_s)
        except Exception as exc:  # a broken or hung connection: the lock is not ours to trust
            log.error(
                "leader lock connection failed",
                extra={"node": self.node, "error": type(exc).__name__},
            )
            return False

    async def _term(
        self,
        conn: Connection,
        stop: asyncio.Event,
        lead: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    ) -> bool:
        """Lead until the lock is lost or ``stop``; then stop the singleton jobs and let go.
        True when the lock was lost."""
        self.leading = True
        self.terms += 1
        log.warning("this node leads: singleton jobs start here", extra={"node": self.node})
        term = asyncio.Event()
        jobs = asyncio.create_task(lead(term), name="leader-jobs")
        lost = False
        try:
            while not stop.is_set() and not jobs.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.check_s)
                if not stop.is_set() and not await self._still_held(conn):
                    lost = True
                    break
        finally:
            self.leading = False
            term.set()
            if lost:
                log.error("leadership lost: singleton jobs stopped", extra={"node": self.node})
            else:  # a clean stop: the jobs end by themselves, or are cancelled after a grace
                with contextlib.suppress(Exception, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(jobs), STOP_GRACE_S)
            jobs.cancel()
            with contextlib.suppress(BaseException):
                await jobs
            with contextlib.suppress(Exception, TimeoutError):  # a hung socket: left behind
                await asyncio.wait_for(asyncio.to_thread(self._let_go, conn), self.check_timeout_s)
        return lost

    def _let_go(self, conn: Connection) -> None:
        """Unlock and close (closing alone frees a session lock; an unlock on a broken
        connection just fails)."""
        with contextlib.suppress(Exception):
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            conn.commit()
        with contextlib.suppress(Exception):
            conn.invalidate()
        with contextlib.suppress(Exception):
            conn.close()
