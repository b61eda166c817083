"""Retention's purge on PostgreSQL: a batch of messages read without locks, then purged by one
statement in autocommit (document messages with their documents and the bytes they free), so
that no round trip to the engine falls inside the time the batch holds its row locks
(engine/jobs/retention.py bounds that time; ``MessageStore.purge_range`` reads the batch and does
the same in one transaction on SQLite)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Engine,
    Text,
    any_,
    bindparam,
    delete,
    func,
    literal,
    literal_column,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from engine.store.db import sqlstate
from engine.store.documents import kept_by_refusal, purge_documents_of, refused_hashes
from engine.store.tables import (
    deliveries,
    document_blobs,
    document_chunks,
    documents,
    messages,
)

__all__ = ["Purged", "purge_postgresql", "purge_sqlite"]


@dataclass(frozen=True)
class Purged:
    """One purge transaction: the messages it removed, and how long it held write locks (from
    the first row it changed, or on SQLite from its ``BEGIN IMMEDIATE``, to its commit's end:
    reading the candidates and waiting for the lock are not holding it; on SQLite the writers'
    file lock is taken a connection checkout earlier, and that is not counted). ``documents``:
    how many of the messages were documents. On PostgreSQL ``held_s`` is the one statement's (a
    cancelled one's included: it held its locks until PostgreSQL rolled it back)."""

    rows: int
    held_s: float = 0.0
    documents: int = 0
    #: PostgreSQL: the one statement ran past its limit (``lock_limit_s``) and was cancelled,
    #: rolled back with its locks: the batch's messages are all still there
    cancelled: bool = False
    #: the batch's candidates as read before the purge, and how many were documents (on a
    #: cancelled batch, what the statement was given)
    read: int = 0
    read_documents: int = 0


#: SQLSTATE query_canceled: the statement ran past its ``statement_timeout``
_CANCELLED = "57014"


@dataclass(frozen=True)
class _Papers:
    """What a batch's document messages would free, read before the purge without locks (their
    raws never change, and the rest is checked again by the statement):
    ``refusals``, each refusal's id and the SHA-256 of the bytes it kept; ``blobs``, each
    SHA-256 those messages' documents or refusals name that no refusal outside the batch keeps
    (those stay), with the row version (``xmin``) of its ``document_blobs`` row as read."""

    placed: list[int]
    refusals: list[tuple[int, str]]
    blobs: dict[str, str]


#: the messages holding the newest message, delivery and document ids (SQLite: see below)
_NEWEST = select(
    select(func.max(messages.c.id)).scalar_subquery(),
    select(deliveries.c.message_id).order_by(deliveries.c.id.desc()).limit(1).scalar_subquery(),
    select(documents.c.message_id).order_by(documents.c.id.desc()).limit(1).scalar_subquery(),
)


def purge_sqlite(conn: Any, query: Any) -> tuple[Purged, set[str]]:
    """``MessageStore.purge_range`` on SQLite, on ``conn`` (the caller holds the writers' lock):
    the batch ``query`` reads, purged in one transaction (BEGIN IMMEDIATE), document messages
    with their documents and the bytes they free (``purge_documents_of``); and the SHA-256s of
    the files of bytes to remove once it has committed, which the caller does before letting
    go of the writers' lock (an upload of the same bytes in between would find their file
    still in place, record them again, and lose them to the removal)."""
    with conn.begin():
        # the writers' lock is this transaction's from here (BEGIN IMMEDIATE)
        locked = time.perf_counter()
        # the newest message stays: SQLite numbers a new row the highest id + 1, so with the
        # newest purged (a feed idle past the retention) the next message took its id, and
        # the audit trail's rows for the purged one, kept for years, named another message;
        # so do the messages of the newest delivery and the newest document, for theirs
        kept = set(conn.execute(_NEWEST).one())
        rows = [r for r in conn.execute(query) if r.id not in kept]
        if not rows:
            return Purged(0), set()
        ids = [r.id for r in rows]
        papers = [r.id for r in rows if r.kind == "document"]
        conn.execute(delete(deliveries).where(deliveries.c.message_id.in_(ids)))
        files = purge_documents_of(conn, papers)
        conn.execute(delete(messages).where(messages.c.id.in_(ids)))
    held = time.perf_counter() - locked
    return Purged(len(ids), held, len(papers), read=len(ids), read_documents=len(papers)), files


def _read_papers(conn: Any, placed: list[int]) -> _Papers:
    """:class:`_Papers` of the document messages ``placed``, on ``conn`` (a read)."""
    named = list(
        conn.execute(
            select(documents.c.message_id, documents.c.sha256).where(
                documents.c.message_id.in_(placed)
            )
        )
    )
    hashes = {r.sha256 for r in named}
    with_document = {r.message_id for r in named}
    refusals: list[tuple[int, str]] = []
    bare = [m for m in placed if m not in with_document]
    if bare:
        for mid, raw in conn.execute(
            select(messages.c.id, messages.c.raw).where(messages.c.id.in_(bare))
        ):
            if (sha := kept_by_refusal(raw)) is not None:
                refusals.append((int(mid), sha))
    hashes.update(sha for _, sha in refusals)
    if not hashes:
        return _Papers(placed, refusals, {})
    # the versions first, then the refusals outside the batch that keep any of these bytes: a
    # refusal committed after that read (its upload updated the bytes' row) is seen by the
    # statement's version check, one committed before it by the read of refusals after
    version = literal_column("document_blobs.xmin::text", Text)
    blobs = {
        str(sha): str(ver)
        for sha, ver in conn.execute(
            select(document_blobs.c.sha256, version).where(
                document_blobs.c.sha256.in_(sorted(hashes))
            )
        )
    }
    for sha in refused_hashes(conn, set(blobs), set(placed)) if blobs else ():
        del blobs[sha]
    return _Papers(placed, refusals, blobs)


def _purge_statement(purgeable: tuple[Any, ...], papers: bool = False) -> Any:
    """PostgreSQL: retention's purge of a batch of messages (``:ids``), as one statement for
    autocommit (:func:`purge_postgresql`): each message whose row, once locked, still meets
    ``purgeable``, with its deliveries (their attempts by the foreign key's cascade); the count
    of messages purged, and of document messages among them (``:placed``). The ``set_config``
    makes this statement's commit not wait for the WAL's flush (``SET LOCAL`` needs a
    transaction of several statements, whose round trips the locks would be held through).

    With ``papers`` (a batch with document messages, :class:`_Papers` as parameters) the purged
    ones take their documents along, and the bytes they free: a blob (``:blob_shas``) named by
    a purged document or purged refusal (``:refusal_ids``/``:refusal_shas``) that no document
    left and no refusal of the batch left still names, and only at the row version read before
    (``:blob_versions``). An upload that reuses those bytes updates that row
    (``Documents._put_blob``): committed before this statement, it changed the version, and
    while this statement runs, it makes the statement wait for it and then find the row
    changed; either way the bytes stay. A document this statement's snapshot does not see is
    one whose upload updated the row, so the version is this check's whole guard."""
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
    if not papers:
        return (
            select(func.count(), literal(0)).select_from(gone).join(quick, true()).add_cte(settled)
        )
    placed = bindparam("placed", type_=postgresql.ARRAY(BigInteger))
    return (
        select(func.count(), func.count().filter(gone.c.id == any_(placed)))
        .select_from(gone)
        .join(quick, true())
        .add_cte(settled, *_papers_ctes(gone))
    )


def _papers_ctes(gone: Any) -> tuple[Any, ...]:
    """:func:`_purge_statement`'s parts for document messages, after the messages ``gone``:
    their documents, the bytes freed (at the row version read) and those bytes' chunks."""
    text_array = postgresql.ARRAY(Text)
    kept = (
        func.unnest(
            bindparam("refusal_ids", type_=postgresql.ARRAY(BigInteger)),
            bindparam("refusal_shas", type_=text_array),
        )
        .table_valued("id", "sha")
        .render_derived(name="kept")
    )
    read = (
        func.unnest(
            bindparam("blob_shas", type_=text_array), bindparam("blob_versions", type_=text_array)
        )
        .table_valued("sha", "version")
        .render_derived(name="read")
    )
    papers_gone = (
        delete(documents)
        .where(documents.c.message_id.in_(select(gone.c.id)))
        .returning(documents.c.id, documents.c.sha256)
        .cte("papers")
    )
    freed = select(papers_gone.c.sha256).union(
        select(kept.c.sha).where(kept.c.id.in_(select(gone.c.id)))
    )
    needed = (
        select(documents.c.sha256)
        .where(
            documents.c.sha256.in_(select(read.c.sha)),
            documents.c.id.not_in(select(papers_gone.c.id)),
        )
        .union(select(kept.c.sha).where(kept.c.id.not_in(select(gone.c.id))))
    )
    doomed = (
        delete(document_blobs)
        .where(
            tuple_(document_blobs.c.sha256, literal_column("document_blobs.xmin::text", Text)).in_(
                select(read.c.sha, read.c.version)
            ),
            document_blobs.c.sha256.in_(freed),
            document_blobs.c.sha256.not_in(needed),
        )
        .returning(document_blobs.c.sha256)
        .cte("doomed")
    )
    chunks = (
        delete(document_chunks)
        .where(document_chunks.c.sha256.in_(select(doomed.c.sha256)))
        .cte("chunks")
    )
    return papers_gone, doomed, chunks


def purge_postgresql(
    db_engine: Engine,
    query: Any,
    purgeable: tuple[Any, ...],
    lock_limit_s: float | None = None,
) -> Purged:
    """``MessageStore.purge_range`` on PostgreSQL (engine/store/messages.py): ``query`` reads
    the batch's candidates, in a transaction of its own (a read takes no row lock), and with
    them what its document messages would free (:func:`_read_papers`); each is purged only if
    it still is purgeable when its row is locked (``purgeable``, the read's own conditions, as
    of the purge's statement: a message resent or replayed since the read, or a replayed
    original whose copy was sent again, stays for a later run; a change committed while that
    statement runs, a few milliseconds, is not seen for another row than the one changed).

    The batch is purged by one statement in autocommit (:func:`_purge_statement`), document
    messages with their documents and the bytes they free: its row locks are taken and
    released inside the server, within one round trip, so this process being off the CPU
    under load (the purge runs beside the receivers and workers) cannot stretch them. Before
    this a batch's deletes and its commit were three round trips with the locks held between
    them (10 million messages under 8 senders flat out: 1 batch of 369 held them 114 ms, over
    the 100 ms budget), and until 7 December document messages (1 in 100 in the retention
    bench, so most batches hold one) were a transaction of a dozen round trips of their own
    (two of 849 batches held their locks 104 and 117 ms).

    ``lock_limit_s`` bounds the statement with PostgreSQL's own ``statement_timeout``: run
    past it (its backend kept off a core on a saturated machine, a row lock waited for), it is
    cancelled by the server and rolled back, its locks released, and the batch comes back
    ``cancelled`` with its messages all still there, for the caller to try again smaller
    (engine/jobs/retention.py). Batch sizing aims well under the limit; this is the bound for
    the batch the machine stretches anyway, which sizing cannot foresee (10 million messages
    under 8 senders flat out: 1 batch of 891 held its locks 108.5 ms, p99 38.6 ms, on 6
    December before the limit). Matching a waiting document to its patient, and replaying a
    document's message, lock the document before its message, the other order from this
    statement's; the limit cancels
    the purge long before PostgreSQL's deadlock check would pick one of the two (without a
    limit, that check does, after its ``deadlock_timeout``).

    The statement is not JIT-compiled (a batch is small but its cost estimate is not: a second
    of compiling for a few milliseconds of work, and a plan is made before its statement runs:
    ``jit`` is set off for the session around it and reset after; a connection that failed in
    between is dropped, not pooled), and its commit does not wait for the WAL's flush, which
    the locks would be held through: a purge a crash loses comes back and is purged again (the
    bytes of documents are in the database here, not files removed after the commit)."""
    with db_engine.connect() as conn:
        with conn.begin():
            conn.exec_driver_sql("SET LOCAL jit = off")
            rows = conn.execute(query).all()
            placed = [r.id for r in rows if r.kind == "document"]
            papers = _read_papers(conn, placed) if placed else None
        if not rows:
            return Purged(0)
        params: dict[str, Any] = {"ids": [r.id for r in rows]}
        if papers is not None:
            params.update(
                placed=papers.placed,
                refusal_ids=[mid for mid, _ in papers.refusals],
                refusal_shas=[sha for _, sha in papers.refusals],
                blob_shas=list(papers.blobs),
                blob_versions=list(papers.blobs.values()),
            )
        statement = _purge_statement(purgeable, papers=papers is not None)
        gone, documents_gone, held, cancelled = _purge_limited(
            conn, statement, params, lock_limit_s
        )
        return Purged(gone, held, documents_gone, cancelled, len(rows), len(placed))


def _purge_limited(
    conn: Any, statement: Any, params: dict[str, Any], lock_limit_s: float | None
) -> tuple[int, int, float, bool]:
    """:func:`purge_postgresql`'s one statement in autocommit: how many messages it purged, how
    many of them were documents, how long it held its locks, and whether PostgreSQL cancelled
    it at ``lock_limit_s`` (then it purged none). The session's settings are put back after
    (the pool sets the isolation back when the connection is returned)."""
    conn.execution_options(isolation_level="AUTOCOMMIT")
    conn.exec_driver_sql("SET jit = off")
    gone, papers, cancelled = 0, 0, False
    try:
        if lock_limit_s is not None:
            conn.exec_driver_sql(f"SET statement_timeout = {max(1, round(lock_limit_s * 1000))}")
        locked = time.perf_counter()
        try:
            gone, papers = (int(n) for n in conn.execute(statement, params).one())
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
    return gone, papers, held, cancelled
