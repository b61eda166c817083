"""The database's clock, as this host reads it: the time the claims' fallback time-outs are
written and compared in.

A claim without a live owner to take it over falls back on a time-out: a processing claim on
``messages.claimed_at`` (5 minutes, engine/store/messages.py ``reclaim_stale``), a delivery's
lease on ``deliveries.claimed_until`` (engine/store/deliveries.py). Each is written by the node
that claims and compared by another node, often on another host. In the hosts' own clocks, a
host whose clock ran 6 minutes behind wrote claims that another host took for 6 minutes old at
once, and processed again; one running ahead of the others wrote leases the others took for
running out early, and sent again.

On PostgreSQL the nodes share one clock, the database's: a process measures how far its host's
clock is from it (one ``SELECT clock_timestamp()``, its error at most half the round trip) and
adds that to its host's time, so every node writes and compares those times in the database's
clock whatever its host says. A measurement is kept for :data:`REMEASURE_S` and taken again
only by a caller off any event loop (a store call in its thread), so an event loop never waits
for it; one that fails keeps the last offset (none: the host's clock) and is tried again after
:data:`RETRY_S`. Heartbeats are in the database's clock already (engine/store/nodes.py, its own
``now()`` in the statement). SQLite is one host's file: its clock is the host's.

A lease's end is still chosen by the claiming node before its call (engine/flow/deliver.py), so
a claim whose reply was lost is named by that end and given back (``release_lease``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

log = logging.getLogger(__name__)

#: seconds a measured offset is trusted before a store call measures again
REMEASURE_S = 30.0
#: seconds before a measurement that failed (the database away) is tried again
RETRY_S = 5.0
_CLOCK_TIMESTAMP = text("SELECT clock_timestamp()")


def host_now() -> datetime:
    """This host's clock, in UTC."""
    return datetime.now(UTC)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class DbClock:
    """The database's time as this process reads it: its host's clock plus the measured offset.

    ``host``: the host's clock (a test gives one that runs behind or ahead)."""

    def __init__(self, db_engine: Engine | None, host: Callable[[], datetime] = host_now) -> None:
        self._engine = weakref.ref(db_engine) if db_engine is not None else None
        self.host = host
        self.offset = timedelta(0)
        #: when (time.monotonic) to measure next; None: never measured, measure at first use
        self._due: float | None = None
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Now in the database's clock, measured again first when due, not on an event loop
        (which never waits for the database here: it gets the last offset), and not while
        another thread measures (it gets the last offset too, unless none was ever measured):
        callers do not queue behind one measurement, each to take its own after it."""
        if self._engine is not None and not _on_event_loop() and self._is_due():
            if self._lock.acquire(blocking=self._due is None):
                try:
                    if self._is_due():  # (another thread may have just measured)
                        self._measure()
                finally:
                    self._lock.release()
        return self.host() + self.offset

    def _is_due(self) -> bool:
        due = self._due
        return due is None or time.monotonic() >= due

    def measure(self) -> timedelta:
        """Measure the offset now (one round trip) and return it; on failure keep the last."""
        with self._lock:
            return self._measure()

    def _measure(self) -> timedelta:
        db_engine = self._engine() if self._engine is not None else None
        if db_engine is None:
            return self.offset
        try:
            with db_engine.connect() as conn:
                before = self.host()
                theirs: datetime = conn.execute(_CLOCK_TIMESTAMP).scalar_one()
                after = self.host()
        except Exception as exc:  # the database away: the claim call after this will tell
            log.debug("database clock not read", extra={"error": type(exc).__name__})
            self._due = time.monotonic() + RETRY_S
            return self.offset
        self.offset = theirs - (before + (after - before) / 2)
        self._due = time.monotonic() + REMEASURE_S
        return self.offset

    _by_engine: weakref.WeakKeyDictionary[Engine, DbClock] = weakref.WeakKeyDictionary()
    _guard = threading.Lock()

    @classmethod
    def for_engine(cls, db_engine: Engine) -> DbClock:
        """The clock of a database, one per engine in a process (every part of the store shares
        it); on SQLite the host's clock, never measured."""
        with cls._guard:
            clock = cls._by_engine.get(db_engine)
            if clock is None:
                measured = db_engine if db_engine.dialect.name == "postgresql" else None
                clock = cls._by_engine[db_engine] = cls(measured)
            return clock
