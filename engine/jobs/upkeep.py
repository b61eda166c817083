"""The queue tables' upkeep where PostgreSQL's autovacuum is off: the leader runs
``VACUUM (ANALYZE)`` on them itself.

The engine's hot statements (the claims, the settling of a message once its deliveries are done,
the per-patient order) are planned from the tables' statistics, which autovacuum keeps fresh. A
server with ``autovacuum = off`` (this project's development machines have one) never refreshes
them: within minutes of a soak at 200 messages/s PostgreSQL still believed the deliveries table
nearly empty, settled each message by reading every waiting delivery through the index on state
(6 ms a message, 180,000 of them waiting), and the backlog grew without end. A DBA may have
turned autovacuum off on purpose; the engine says so at start (a warning) and keeps the
statistics and the dead rows of its own queue tables in hand: every :data:`INTERVAL_S` seconds,
on the leader only. ``VACUUM`` takes no lock that blocks the receivers' and workers' writes;
after the first, it reads only the pages changed since (the visibility map). With autovacuum on
(PostgreSQL's default) it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy import Engine

__all__ = ["INTERVAL_S", "TABLES", "autovacuum_off", "keep_tables", "vacuum_tables"]

log = logging.getLogger(__name__)

#: between two rounds of upkeep
INTERVAL_S = 300.0
#: the tables whose rows change with every message
TABLES = ("messages", "deliveries", "delivery_attempts")


def autovacuum_off(db_engine: Engine) -> bool:
    """Whether this is PostgreSQL with its autovacuum off."""
    if db_engine.dialect.name != "postgresql":
        return False
    with db_engine.connect() as conn:
        return str(conn.exec_driver_sql("SHOW autovacuum").scalar_one()).lower() == "off"


def vacuum_tables(db_engine: Engine) -> float:
    """``VACUUM (ANALYZE)`` of each of :data:`TABLES` (outside a transaction, as VACUUM must
    be); the seconds it took."""
    started = time.perf_counter()
    with db_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in TABLES:
            conn.exec_driver_sql(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - started


async def keep_tables(
    db_engine: Engine, stop: asyncio.Event, interval_s: float = INTERVAL_S
) -> None:
    """The leader's upkeep, until ``stop``: nothing unless autovacuum is off (see the module)."""
    try:
        off = await asyncio.to_thread(autovacuum_off, db_engine)
    except Exception as exc:  # the database may be away: the next term asks again
        log.warning("autovacuum setting not read", extra={"error": type(exc).__name__})
        return
    if not off:
        return
    log.warning(
        "PostgreSQL autovacuum is off: this node (the leader) runs VACUUM (ANALYZE) on the "
        "queue tables every few minutes",
        extra={"interval_s": interval_s, "tables": ",".join(TABLES)},
    )
    while not stop.is_set():
        try:
            took = await asyncio.to_thread(vacuum_tables, db_engine)
            log.info("queue tables vacuumed", extra={"ms": round(took * 1000, 1)})
        except Exception as exc:  # tried again next round
            log.warning("queue tables not vacuumed", extra={"error": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
