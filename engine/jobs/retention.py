"""Retention in short transactions: the delivered messages past the retention period purged a
range of ids at a time, each range its own transaction, sized so that none holds its locks for
more than :data:`BUDGET_S` (100 ms).

One ``DELETE`` of a day's messages holds the row locks of all of them, and the WAL they write,
until it commits: on PostgreSQL with millions of messages that is seconds to minutes during which
the receivers' and workers' commits queue behind it and autovacuum falls behind; on SQLite it holds
the one writer's lock every ACK waits on. Here the ids from the oldest message to the newest one
received before the cutoff are walked in ranges of at most :data:`MAX_BATCH` ids
(``MessageStore.purge_range``: the purgeable messages of the range, their
deliveries and documents, in one transaction on SQLite; on PostgreSQL in one statement in
autocommit, document messages and the bytes they free included; the candidates
read from the primary key's index, and
what a batch asks of other rows from indexes of their own: the copies of a replayed original, the
refused uploads that still keep a purged document's bytes; migration 0024). Each batch is timed,
the next range sized to take about a quarter of the budget (from :data:`FIRST_BATCH`, between
:data:`MIN_BATCH` and :data:`MAX_BATCH` ids), and a pause between batches lets the other writers
in: the purge works at most :data:`DUTY` of the time (a batch of *t* seconds is followed by a pause
of *t* (1 - DUTY) / DUTY, at least :data:`PAUSE_S` and at most :data:`MAX_PAUSE_S`, so that a node
stopping is not kept waiting). Flat out (a pause of 20 ms only) it purged 9,000 messages a second
on PostgreSQL and slowed 8 senders' ingest by about a third on this 2-core machine; retention is
never urgent, so it yields. The slowest batch is reported (and logged by the worker) so an operator
sees the bound held.

Two times are measured. The batch's size and the pause after it follow the whole call (reading
the candidates, waiting for the lock, committing). The budget judges how long the batch held its
locks, as the store measures it: on PostgreSQL from the first ``DELETE`` to the commit's end (the
candidates' read takes no row lock; from then on the process being off the CPU keeps them held,
and counts), on SQLite from its ``BEGIN IMMEDIATE`` to the commit's end (waiting in line for it
is not holding it). On SQLite every write transaction waits for its fsync, whatever its size: a
batch there is bounded in rows, and its time is the disk's.

Sizing aims at a quarter of the budget, but it cannot foresee the batch the machine stretches
(PostgreSQL's backend waiting for a core while it holds the locks: on 6 December, 1 batch of 891
held them 108.5 ms). On PostgreSQL the budget is therefore also a limit: the purge's statement
runs under a ``statement_timeout`` of :data:`LOCK_LIMIT_SHARE` of the budget (at least
:data:`LOCK_LIMIT_FLOOR_S`), past which the server cancels it and rolls it back, releasing its
locks. A cancelled batch is tried again from the same id at a quarter of its width
(``cancelled`` in the report); one cancelled twice at :data:`MIN_BATCH` is left for the next run
(``left``, logged with its ids).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine, func, select

from engine.store.messages import Purged
from engine.store.tables import messages

__all__ = [
    "BUDGET_S",
    "DUTY",
    "FIRST_BATCH",
    "LOCK_LIMIT_FLOOR_S",
    "LOCK_LIMIT_SHARE",
    "MAX_PAUSE_S",
    "MAX_BATCH",
    "MIN_BATCH",
    "PurgeReport",
    "purge_in_batches",
]

log = logging.getLogger(__name__)

#: the longest a batch should hold its locks
BUDGET_S = 0.1
#: PostgreSQL: the purge's statement is cancelled past this share of the budget (the rest is
#: for the cancellation to reach a backend that is off its core, and the answer the engine)
LOCK_LIMIT_SHARE = 0.5
#: and never below this (a budget of a few milliseconds, as the retention bench's test gives, would
#: otherwise cancel every statement before it has planned)
LOCK_LIMIT_FLOOR_S = 0.02
#: ids in the first range, and the bounds of the later ones
FIRST_BATCH = 500
MIN_BATCH = 20
MAX_BATCH = 5000
#: between two batches, at least: the receivers' and workers' commits go first
PAUSE_S = 0.02
#: the share of the time the purge works (the rest it pauses between batches)
DUTY = 0.08
#: the longest pause between two batches (a batch stretched by a lock wait is not followed by
#: a longer one than this: ``stop`` is asked again after it)
MAX_PAUSE_S = 2.0


class Purging(Protocol):
    """The store's purge of a range of ids (engine/store/messages.py)."""

    db_engine: Engine

    def purge_range(
        self,
        older_than: timedelta,
        id_range: tuple[int, int] | None = None,
        lock_limit_s: float | None = None,
    ) -> Purged: ...


@dataclass
class PurgeReport:
    """What one batched purge did: messages purged, batches, the longest a batch held its locks
    (seconds, and that batch's rows), the batches that held them longer than the budget, and
    the slowest whole call (reading its candidates and waiting for the lock included); the
    batches PostgreSQL cancelled at the limit (each tried again smaller), and the ranges left
    for the next run after being cancelled at the smallest width."""

    purged: int = 0
    batches: int = 0
    slowest_s: float = 0.0
    slowest_rows: int = 0
    over_budget: int = 0
    slowest_call_s: float = 0.0
    cancelled: int = 0
    left: int = 0


def _next_size(size: int, took_s: float, budget_s: float) -> int:
    """The next range's width: aimed at a quarter of the budget from the rate of the last one
    (the rest is headroom: a busy machine stretches a batch's time)."""
    if took_s <= 0:
        return min(MAX_BATCH, size * 2)
    aimed = int(size * (budget_s / 4) / took_s)
    return max(MIN_BATCH, min(MAX_BATCH, aimed, size * 2))


def _bounds(db_engine: Engine, older_than: timedelta) -> tuple[int, int] | None:
    """The ids to walk: from before the oldest message to the newest one received before the
    cutoff (a message received after it cannot have been settled before it); None if none."""
    cutoff = datetime.now(UTC) - older_than
    with db_engine.connect() as conn:
        first = conn.execute(select(func.min(messages.c.id))).scalar_one_or_none()
        last = conn.execute(
            select(messages.c.id)
            .where(messages.c.received_at < cutoff)
            .order_by(messages.c.received_at.desc(), messages.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
    if first is None or last is None:
        return None
    return int(first) - 1, int(last)


def purge_in_batches(
    store: Purging,
    older_than: timedelta,
    *,
    budget_s: float = BUDGET_S,
    first: int = FIRST_BATCH,
    pause_s: float = PAUSE_S,
    duty: float = DUTY,
    stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> PurgeReport:
    """Purge every delivered message older than ``older_than`` a range of ids at a time (see
    the module); ``stop`` is asked between batches (the node stepping down or stopping).
    ``duty`` (0 to 1]: the share of the time spent purging; 1 pauses ``pause_s`` only."""
    if not 0 < duty <= 1:
        raise ValueError(f"duty must be in (0, 1], not {duty}")
    report = PurgeReport()
    bounds = _bounds(store.db_engine, older_than)
    if bounds is None:
        return report
    after, last = bounds
    size = max(MIN_BATCH, min(MAX_BATCH, first))
    limit_s = max(LOCK_LIMIT_FLOOR_S, budget_s * LOCK_LIMIT_SHARE)
    cancelled_at_min = 0
    while after < last and (stop is None or not stop()):
        upto = min(last, after + size)
        started = clock()
        batch = store.purge_range(older_than, id_range=(after, upto), lock_limit_s=limit_s)
        took = clock() - started
        report.purged += batch.rows
        report.batches += 1
        report.slowest_call_s = max(report.slowest_call_s, took)
        if batch.held_s > report.slowest_s:
            report.slowest_s, report.slowest_rows = batch.held_s, batch.rows
        if batch.held_s > budget_s:
            report.over_budget += 1
            log.warning(
                "retention batch held its locks over its budget",
                extra={
                    "rows": batch.rows,
                    "documents": batch.documents,
                    "ms": round(batch.held_s * 1000, 1),
                    "budget_ms": budget_s * 1000,
                },
            )
        if batch.cancelled:
            report.cancelled += 1
            width = upto - after
            cancelled_at_min = cancelled_at_min + 1 if width <= MIN_BATCH else 0
            if cancelled_at_min < 2:  # the same range again, narrower
                size = max(MIN_BATCH, width // 4)
                upto = after
            else:
                report.left += 1
                cancelled_at_min = 0
                log.warning(
                    "retention batch cancelled at its lock limit twice: left for the next run",
                    extra={"after_id": after, "upto_id": upto, "limit_ms": limit_s * 1000},
                )
        else:
            cancelled_at_min = 0
            size = _next_size(size, took, budget_s)
        after = upto
        pause = min(MAX_PAUSE_S, max(pause_s, took * (1 - duty) / duty))
        if pause > 0 and after < last:
            sleep(pause)
    return report
