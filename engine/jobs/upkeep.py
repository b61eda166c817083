"""The queue tables' statistics and dead rows, kept by the leader (PostgreSQL only).

The engine's hot statements (the claims, the settling of a message once its deliveries are done,
the per-patient order) are planned from the tables' statistics, and psycopg prepares a statement
run five times on a connection: PostgreSQL then keeps one generic plan for it until the table is
analyzed again. A queue table grows from nothing faster than autovacuum looks (once a minute by
default): plans made for an empty table stayed in use on tens of thousands of rows, and in the
ingest bench of 6 December 2026 the worker on PostgreSQL looked for a received message by reading
the whole messages table (20 ms each time) and asked every dead node's claims through whole
scans of deliveries. So the leader does autovacuum's ANALYZE step itself, sooner: every
:data:`WATCH_S` seconds it reads how many rows of each queue table changed since it was last
analyzed (``pg_stat_user_tables``) and analyzes the ones past autovacuum's own threshold
(:data:`ANALYZE_BASE` rows and :data:`ANALYZE_SHARE` of the table). ANALYZE reads a sample, takes
no lock that blocks reads or writes, and makes the plans of that table be made again.

A server with ``autovacuum = off`` (this project's development machines have one) also never
vacuums: within minutes of a soak at 200 messages/s PostgreSQL still believed the deliveries
table nearly empty, settled each message by reading every waiting delivery through the index on
state (6 ms a message, 180,000 of them waiting), and the backlog grew without end. A DBA may have
turned autovacuum off on purpose; the engine says so at start (a warning) and runs ``VACUUM
(ANALYZE)`` of its queue tables every :data:`INTERVAL_S` seconds. ``VACUUM`` takes no lock that
blocks the receivers' and workers' writes; after the first, it reads only the pages changed since
(the visibility map).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy import Engine, text

from engine.store.db import unbounded_statements

__all__ = [
    "ANALYZE_BASE",
    "ANALYZE_SHARE",
    "INTERVAL_S",
    "TABLES",
    "WATCH_S",
    "analyze_tables",
    "autovacuum_off",
    "keep_tables",
    "stale_tables",
    "vacuum_tables",
]

log = logging.getLogger(__name__)

#: between two vacuums where autovacuum is off
INTERVAL_S = 300.0
#: between two looks at how much each table changed
WATCH_S = 5.0
#: autovacuum's defaults (``autovacuum_analyze_threshold``, ``autovacuum_analyze_scale_factor``):
#: a table is analyzed once more rows than this base plus this share of its rows changed
ANALYZE_BASE = 50
ANALYZE_SHARE = 0.1
#: the tables whose rows change with every message
TABLES = ("messages", "deliveries", "delivery_attempts")

#: each table's rows changed since its last ANALYZE and its rows then (-1: never analyzed), the
#: names resolved through the connection's search_path (the engine's schema)
_CHANGES = text(
    "SELECT t.name, s.n_mod_since_analyze, c.reltuples"
    " FROM unnest(CAST(:tables AS text[])) AS t(name)"
    " JOIN pg_class AS c ON c.oid = to_regclass(t.name)"
    " JOIN pg_stat_user_tables AS s ON s.relid = c.oid"
)


def autovacuum_off(db_engine: Engine) -> bool:
    """Whether this is PostgreSQL with its autovacuum off."""
    if db_engine.dialect.name != "postgresql":
        return False
    with db_engine.connect() as conn:
        return str(conn.exec_driver_sql("SHOW autovacuum").scalar_one()).lower() == "off"


def stale_tables(db_engine: Engine) -> list[str]:
    """The :data:`TABLES` with more rows changed since their last ANALYZE than autovacuum
    would let pass."""
    with db_engine.connect() as conn:
        rows = conn.execute(_CHANGES, {"tables": list(TABLES)}).all()
    return [
        str(name)
        for name, changed, tuples in rows
        if changed > ANALYZE_BASE + ANALYZE_SHARE * max(float(tuples), 0.0)
    ]


def analyze_tables(db_engine: Engine, tables: list[str]) -> float:
    """``ANALYZE`` of ``tables`` (each of :data:`TABLES`); the seconds it took. A table being
    vacuumed is skipped (``SKIP_LOCKED``) and looked at again next round: waiting for it would
    make PostgreSQL cancel autovacuum's run, which blocks us, and at every round again."""
    started = time.perf_counter()
    with (
        db_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        unbounded_statements(conn),
    ):
        for table in tables:
            if table in TABLES:  # names from here only, never from elsewhere into SQL
                conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {table}")
    return time.perf_counter() - started


def vacuum_tables(db_engine: Engine) -> float:
    """``VACUUM (ANALYZE)`` of each of :data:`TABLES` (outside a transaction, as VACUUM must
    be); the seconds it took."""
    started = time.perf_counter()
    with (
        db_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        unbounded_statements(conn),
    ):
        for table in TABLES:
            conn.exec_driver_sql(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - started


def _upkeep_round(db_engine: Engine, vacuum: bool) -> None:
    """One round: a vacuum of every table, or an ANALYZE of the ones that changed enough."""
    if vacuum:
        took = vacuum_tables(db_engine)
        log.info("queue tables vacuumed", extra={"ms": round(took * 1000, 1)})
        return
    stale = stale_tables(db_engine)
    if stale:
        took = analyze_tables(db_engine, stale)
        log.debug(
            "queue tables analyzed",
            extra={"tables": ",".join(stale), "ms": round(took * 1000, 1)},
        )


async def keep_tables(
    db_engine: Engine,
    stop: asyncio.Event,
    interval_s: float = INTERVAL_S,
    watch_s: float = WATCH_S,
) -> None:
    """The leader's upkeep, until ``stop``: nothing on SQLite (see the module). The autovacuum
    setting is asked until it is read (the database may be away at the term's start); the
    ANALYZE rounds run meanwhile."""
    if db_engine.dialect.name != "postgresql":
        return
    off: bool | None = None
    vacuumed_at: float | None = None
    while not stop.is_set():
        if off is None:
            off = await _autovacuum_setting(db_engine, interval_s)
        vacuum = bool(off) and (vacuumed_at is None or time.monotonic() - vacuumed_at >= interval_s)
        try:
            await asyncio.to_thread(_upkeep_round, db_engine, vacuum)
        except Exception as exc:  # tried again next round
            log.warning("queue tables not kept", extra={"error": type(exc).__name__})
        if vacuum:
            vacuumed_at = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), watch_s)


async def _autovacuum_setting(db_engine: Engine, interval_s: float) -> bool | None:
    """Whether autovacuum is off (warned once when it is), or None when it could not be read."""
    try:
        off = await asyncio.to_thread(autovacuum_off, db_engine)
    except Exception as exc:  # the database may be away: asked again next round
        log.warning("autovacuum setting not read", extra={"error": type(exc).__name__})
        return None
    if off:
        log.warning(
            "PostgreSQL autovacuum is off: this node (the leader) runs VACUUM (ANALYZE) on the "
            "queue tables every few minutes",
            extra={"interval_s": interval_s, "tables": ",".join(TABLES)},
        )
    return off
