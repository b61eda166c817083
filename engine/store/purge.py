"""Retention's purge on PostgreSQL: a batch of messages read without locks, then purged by one
statement in autocommit (document messages in a short transaction of their own), so that no
round trip to the engine falls inside the time the batch holds its row locks
(engine/jobs/retention.py bounds that time; ``MessageStore.purge_range`` reads the batch and does
the same in one transaction on SQLite)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Engine, any_, bindparam, delete, func, select, true
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from engine.store.db import sqlstate
from engine.store.documents import purge_documents_of
from engine.store.tables import deliveries, messages

__all__ = ["Purged", "purge_postgresql"]


@dataclass(frozen=True)
class Purged:
    """One purge transaction: the messages it removed, and how long it held write locks (from
    the first row it changed, or on SQLite from its ``BEGIN IMMEDIATE``, to its commit's end:
    reading the candidates and waiting for the lock are not holding it; on SQLite the writers'
    file lock is taken a connection checkout earlier, and that is not counted). ``documents``:
    how many of the messages were documents; on PostgreSQL they are a transaction of their own
    beside the others' one statement, and ``held_s`` is the longer hold of the two."""

    rows: int
    held_s: float = 0.0
    documents: int = 0


#: the longest retention's transaction for document messages waits for a row lock
_DOCUMENT_LOCK_WAIT = "100ms"


def _purge_statement(purgeable: tuple[Any, ...]) -> Any:
    """PostgreSQL: retention's purge of a batch of messages without documents (``:ids``), as one
    statement for autocommit (:func:`purge_postgresql`): each message whose row,
    once locked, still meets ``purgeable``, with its deliveries (their attempts by the foreign
    key's cascade); the count of messages purged. The ``set_config`` makes this statement's
    commit not wait for the WAL's flush (``SET LOCAL`` needs a transaction of several
    statements, whose round trips the locks would be held through)."""
    ids = bindparam("ids", type_=postgresql.ARRAY(BigInteger))
    gone = (
        delete(messages)
        .where(messages.c.id == any_(ids), *purgeable)
        .returning(messages.c.id)
        .cte("gone")
    )
    settled = (
        delete(deliveries).where(deliveries.c.message_id.in_(select(gone.c.id))).cte("settled")
    )
    quick = select(func.set_config("synchronous_commit", "off", true()).label("off")).cte("quick")
    return select(func.count()).select_from(gone).join(quick, true()).add_cte(settled)


def purge_postgresql(db_engine: Engine, query: Any, purgeable: tuple[Any, ...]) -> Purged:
    """``MessageStore.purge_range`` on PostgreSQL (engine/store/messages.py): ``query`` reads
    the batch's candidates, in a transaction of its own (a read takes no row lock); each is
    purged only if it still is purgeable when its row is locked (``purgeable``, the read's own
    conditions, as of the purge's statement: a message resent or replayed since the read, or a
    replayed original whose copy was sent again, stays for a later run; a change committed
    while that statement runs, a few milliseconds, is not seen for another row than the one
    changed).

    Messages without documents are purged by one statement in autocommit
    (:func:`_purge_statement`): its row locks are taken and released inside the server,
    within one round trip, so this process being off the CPU under load (the purge runs
    beside the receivers and workers) cannot stretch them. Before this a batch's deletes
    and its commit were three round trips with the locks held between them (10 million
    messages under 8 senders flat out: 1 batch of 369 held them 114 ms, over the 100 ms
    budget). Document messages (1 in 100 in the retention bench, so most batches hold one)
    take their documents and bytes along (``purge_documents_of``) in a transaction of their
    own before it, their rows locked and checked first; the time reported held is the
    longer of the two. That transaction waits at most :data:`_DOCUMENT_LOCK_WAIT` for a
    lock: matching a waiting document to its patient locks the document before its message,
    the other order from this one, and rather than wait for PostgreSQL's deadlock check
    the purge leaves those messages for a later run.

    Neither plan is JIT-compiled (a batch is small but its cost estimate is not: a second of
    compiling for a few milliseconds of work, and a plan is made before its statement runs:
    ``jit`` is set off for the session around the one statement and reset after; a
    connection that failed in between is dropped, not pooled), and neither commit waits for
    the WAL's flush, which the locks would be held through: a purge a crash loses comes back
    and is purged again (the bytes of documents are in the database here, not files removed
    after the commit)."""
    with db_engine.connect() as conn:
        with conn.begin():
            conn.exec_driver_sql("SET LOCAL jit = off")
            rows = conn.execute(query).all()
        if not rows:
            return Purged(0)
        plain = [r.id for r in rows if r.kind != "document"]
        placed = [r.id for r in rows if r.kind == "document"]
        gone, held, documents = 0, 0.0, 0
        if placed:
            try:
                with conn.begin():
                    conn.exec_driver_sql("SET LOCAL jit = off")
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_DOCUMENT_LOCK_WAIT}'")
                    locked = time.perf_counter()
                    placed = list(
                        conn.execute(
                            select(messages.c.id)
                            .where(messages.c.id.in_(placed), *purgeable)
                            .with_for_update()
                        ).scalars()
                    )
                    conn.execute(delete(deliveries).where(deliveries.c.message_id.in_(placed)))
                    purge_documents_of(conn, placed)
                    conn.execute(delete(messages).where(messages.c.id.in_(placed)))
                gone = documents = len(placed)
            except DBAPIError as exc:
                if sqlstate(exc) != "55P03":  # lock_not_available: its lock_timeout
                    raise
            held = time.perf_counter() - locked
        if plain:  # the pool sets the connection's isolation back when it is returned
            conn.execution_options(isolation_level="AUTOCOMMIT")
            statement = _purge_statement(purgeable)
            conn.exec_driver_sql("SET jit = off")
            try:
                locked = time.perf_counter()
                gone += int(conn.execute(statement, {"ids": plain}).scalar_one())
                held = max(held, time.perf_counter() - locked)
            except BaseException:
                conn.invalidate()  # its session's jit would stay off in the pool
                raise
            try:
                conn.exec_driver_sql("RESET jit")
            except DBAPIError:  # the purge has committed: only the connection is lost
                conn.invalidate()
        return Purged(gone, held, documents)
