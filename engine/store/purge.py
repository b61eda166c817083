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
    beside the others' one statement, and ``held_s`` is the longer hold of the two (a cancelled
    statement's included: it held its locks until PostgreSQL rolled it back)."""

    rows: int
    held_s: float = 0.0
    documents: int = 0
    #: PostgreSQL: the one statement ran past its limit (``lock_limit_s``) and was cancelled,
    #: rolled back with its locks: the batch's messages without documents are all still there
    cancelled: bool = False
    #: PostgreSQL: how long the document messages' transaction held its locks (0: none)
    documents_held_s: float = 0.0


#: the longest retention's transaction for document messages waits for a row lock
_DOCUMENT_LOCK_WAIT = "100ms"
#: SQLSTATE query_canceled: the statement ran past its ``statement_timeout``
_CANCELLED = "57014"


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


def purge_postgresql(
    db_engine: Engine,
    query: Any,
    purgeable: tuple[Any, ...],
    lock_limit_s: float | None = None,
) -> Purged:
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

    ``lock_limit_s`` bounds the one statement with PostgreSQL's own ``statement_timeout``: run
    past it (its backend kept off a core on a saturated machine, a row lock waited for), it is
    cancelled by the server and rolled back, its locks released, and the batch comes back
    ``cancelled`` with its messages without documents all still there, for the caller to try
    again smaller (engine/jobs/retention.py). Batch sizing aims well under the limit; this is
    the bound for the batch the machine stretches anyway, which sizing cannot foresee (10
    million messages under 8 senders flat out: 1 batch of 891 held its locks 108.5 ms,
    p99 38.6 ms, on 6 December before the limit).

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
        documents, papers = _purge_documents(conn, placed, purgeable) if placed else (0, 0.0)
        gone, held, cancelled = documents, papers, False
        if plain:
            more, took, cancelled = _purge_plain(conn, plain, purgeable, lock_limit_s)
            gone, held = gone + more, max(held, took)
        return Purged(gone, held, documents, cancelled, papers)


def _purge_documents(conn: Any, placed: list[int], purgeable: tuple[Any, ...]) -> tuple[int, float]:
    """:func:`purge_postgresql`'s transaction for document messages: how many were purged (none
    when one was locked elsewhere past :data:`_DOCUMENT_LOCK_WAIT`), and how long it held its
    locks."""
    purged = 0
    locked = time.perf_counter()
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
        purged = len(placed)
    except DBAPIError as exc:
        if sqlstate(exc) != "55P03":  # lock_not_available: its lock_timeout
            raise
    return purged, time.perf_counter() - locked


def _purge_plain(
    conn: Any, plain: list[int], purgeable: tuple[Any, ...], lock_limit_s: float | None
) -> tuple[int, float, bool]:
    """:func:`purge_postgresql`'s one statement in autocommit for messages without documents:
    how many it purged, how long it held its locks, and whether PostgreSQL cancelled it at
    ``lock_limit_s`` (then it purged none). The session's settings are put back after (the
    pool sets the isolation back when the connection is returned)."""
    conn.execution_options(isolation_level="AUTOCOMMIT")
    statement = _purge_statement(purgeable)
    conn.exec_driver_sql("SET jit = off")
    gone, cancelled = 0, False
    try:
        if lock_limit_s is not None:
            conn.exec_driver_sql(f"SET statement_timeout = {max(1, round(lock_limit_s * 1000))}")
        locked = time.perf_counter()
        try:
            gone = int(conn.execute(statement, {"ids": plain}).scalar_one())
        except DBAPIError as exc:
            # cancelled at the limit, not sooner (an operator's pg_cancel_backend is an error)
            limit = lock_limit_s
            if sqlstate(exc) != _CANCELLED or limit is None or time.perf_counter() - locked < limit:
                raise
            cancelled = True  # rolled back by the server, in autocommit: nothing to end
        held = time.perf_counter() - locked
    except BaseException:
        conn.invalidate()  # its session's jit (and limit) would stay in the pool
        raise
    try:
        if lock_limit_s is not None:  # first: a stall in RESET jit is not cancelled
            conn.exec_driver_sql("RESET statement_timeout")  # the connection's own
        conn.exec_driver_sql("RESET jit")
    except BaseException as exc:  # the purge has ended: only the connection is lost
        conn.invalidate()
        if not isinstance(exc, DBAPIError):
            raise
    return gone, held, cancelled
