"""Nodes: the processes that claim work, with their heartbeats, and the runs of singleton jobs.

A worker process registers a node (``host:pid:random``) and beats its heartbeat every
:data:`HEARTBEAT_S`; its claims carry that id (``messages.claimed_by`` for processing,
``deliveries.claimed_by`` beside the lease). When a node's heartbeat is older than
:data:`DEAD_AFTER` (10 s unless ``ENGINE_NODE_DEAD_AFTER_S`` says otherwise: it was killed, or its
host went away), or its row is gone, any other node's
:meth:`Nodes.take_over` releases its claims at once: a kill -9 no longer leaves its patients'
queues blocked for the claims' own time-outs (5 minutes for processing, 10 for a lease), which
stay as the fallback for a claim without an owner. A node that stops cleanly gives its claims
back itself (:meth:`Nodes.forget_node`).

An ``engine serve``'s receiver (its listeners; its worker is a process and a node of its own) is
a node too, of role ``receiver``: it claims nothing, but it beats the same heartbeat, so the
console tells a running one from a stopped or killed one (engine/store/cluster.py). Its id is
the one its configuration row (``config_applied``) carries.

Safety: a claim is released only when its owner is dead by that rule, never a live node's; and
a node thought dead that comes back cannot record a late outcome over the new owner's
(``finish_batch`` and ``record_outcomes`` keep an outcome only while its claim is still the
node's). Heartbeats are written and compared in the database's clock on PostgreSQL (nodes on
several hosts need not agree on the time), and so are the fallback time-outs (their times are
the host's plus its measured offset: engine/store/clock.py); SQLite is one host's file, so its
clock is the host's.

``job_runs``: a scheduled job's run (job id, scheduled fire time) is done by the one process whose
insert of that row succeeds (the primary key decides, on SQLite and PostgreSQL alike); the others
skip it. A run without an end whose node is not alive (or that a leader stepping down gave back
to :data:`NOBODY`) is *interrupted*: the leader takes it over (:meth:`Nodes.resume_job_run`, one
conditional update, so one node wins) and finishes only the items without a row in
``job_run_items`` (each written in the transaction of the item's result).

A run is fenced by its owner: an item is started (:meth:`EligibilityChecks.start_run_item`,
engine/store/eligibility.py), recorded with its result, and the run finished only while the run
is still the caller's, checked in the write's own transaction with the run's row share-locked
(:func:`holds_run`): a node that stood still long enough to be taken for dead (its host paused,
its loop blocked) and wakes while another node resumes its run cannot send a 270 that run has
sent or will send, nor close the other node's run with its own late outcome. It learns it
(:class:`RunTakenOver`) and stops.

The configuration's generation (``config_generation``, one row): a reload applied on any node
bumps it with the digest of its files, and every node follows it (engine/flow/config.py);
``config_applied`` says what each node runs, or why it refused a generation.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, func, insert, select, union, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from engine.store.clean import clean
from engine.store.db import Repository, aware, state_literal, utcnow
from engine.store.lists import in_list
from engine.store.tables import (
    config_applied,
    config_generation,
    deliveries,
    job_run_items,
    job_runs,
    messages,
    nodes,
)

__all__ = [
    "DEAD_AFTER",
    "MAX_DEAD_AFTER",
    "dead_after",
    "longest_limit",
    "set_dead_after",
    "HEARTBEAT_S",
    "NOBODY",
    "InterruptedRun",
    "Liveness",
    "Nodes",
    "RunTakenOver",
    "TakenOver",
    "holds_run",
    "new_node_id",
    "worker_role",
]

log = logging.getLogger(__name__)


def worker_role(index: int = 0, processes: int = 1) -> str:
    """A worker node's role: ``worker`` for a process alone (``engine worker``, or an ``engine
    serve`` with one worker process), ``worker 1``, ``worker 2``... for each of an ``engine
    serve``'s several. On SQLite the first of them (``worker`` or ``worker 1``) is the one that
    leads (engine/flow/worker.py), and the console names it so (engine/store/cluster.py)."""
    return "worker" if processes <= 1 else f"worker {index + 1}"


#: the roles of the worker that leads on SQLite (:func:`worker_role`)
SQLITE_LEADING_ROLES = frozenset({worker_role(), worker_role(0, 2)})

#: how often a node beats its heartbeat
HEARTBEAT_S = 2.0
#: a node whose heartbeat is older than this is dead: its claims are taken over (the default;
#: ``ENGINE_NODE_DEAD_AFTER_S`` sets a process's own, :func:`set_dead_after`)
DEAD_AFTER = timedelta(seconds=10)
_dead_after = DEAD_AFTER
#: the longest takeover limit a node may have (``ENGINE_NODE_DEAD_AFTER_S``'s bound): a node
#: silent longer is dead whatever limit its row says, and its limit no longer counts
MAX_DEAD_AFTER = timedelta(seconds=120)


def dead_after() -> timedelta:
    """How old a node's heartbeat may be before it counts as dead, in this process."""
    return _dead_after


def set_dead_after(seconds: float) -> None:
    """This process's takeover limit (``ENGINE_NODE_DEAD_AFTER_S``; every node of a database
    should have the same): set once at start by the receiver and each worker process."""
    global _dead_after
    if seconds < 3 * HEARTBEAT_S:
        raise ValueError(f"a node is taken for dead after {3 * HEARTBEAT_S:g} s at the least")
    if seconds > MAX_DEAD_AFTER.total_seconds():
        raise ValueError(
            f"a node is taken for dead after {MAX_DEAD_AFTER.total_seconds():g} s at most"
        )
    _dead_after = timedelta(seconds=seconds)


#: the row of a node dead this long is deleted (it held no claim for most of that time)
FORGET_AFTER = timedelta(days=1)
#: the owner of a run given back unfinished (no node has this id: the next leader resumes it)
NOBODY = ""


def _clock() -> float:
    """Seconds on a clock that keeps counting while the host is suspended (CLOCK_BOOTTIME,
    Linux), where ``time.monotonic`` stops: a paused host's stall is seen."""
    return time.clock_gettime(BOOTTIME) if BOOTTIME is not None else time.monotonic()


BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


class Liveness:
    """What a worker node knows of its own standing from its heartbeats (engine/flow/worker.py's
    ``keep_node``), so that its dispatcher sends a claimed delivery without asking the database
    only while no other node can have taken it over: its last heartbeat that was written began
    less than half of :data:`DEAD_AFTER` ago (another node takes over one only when it is older
    than all of it), and no gap since the claim was made could have let another node take it
    (``epoch`` grows at each such gap: two heartbeats further apart than half of DEAD_AFTER, or
    the node's row found gone). A process that stood still (stopped, its host paused or
    swapping) for longer finds out before it sends what it had claimed (engine/flow/deliver.py).
    ``since``: when the node was registered (its first heartbeat)."""

    def __init__(self, since: float | None = None, clock: Callable[[], float] = _clock) -> None:
        self.clock = clock
        self.beat = clock() if since is None else since
        self.epoch = 0

    def beaten(self, began: float, written: bool) -> None:
        """A heartbeat that began at ``began`` (this clock) succeeded; ``written`` False: the
        node's row was gone (taken for dead; its claims released, it registered again)."""
        gap = began - self.beat
        if not written or gap >= _dead_after.total_seconds() / 2:
            self.epoch += 1  # its claims may have been taken over meanwhile
            if written:  # (not written: the heartbeat's caller says so)
                log.warning(
                    "heartbeats stood still: claims are checked before they are sent",
                    extra={"gap_s": round(gap, 1)},
                )
        self.beat = max(self.beat, began)

    def sure(self, epoch: int) -> bool:
        """Whether claims made in ``epoch`` are surely still this node's."""
        return epoch == self.epoch and self.clock() - self.beat < _dead_after.total_seconds() / 2


def new_node_id() -> str:
    """``host:pid:random``: unique even when a pid is reused after a restart."""
    host = socket.gethostname()[:40]
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class InterruptedRun:
    """A scheduled run started and never ended, by a node that is gone."""

    job_id: str
    run_at: datetime
    node: str


class RunTakenOver(Exception):
    """A scheduled run is no longer the node's that works on it: another node resumed it (this
    one was taken for dead) or it was finished. Nothing more of it may be done here."""


def holds_run(conn: Connection, job_id: str, run_at: datetime, node: str) -> bool:
    """Whether ``node`` still holds the run (it owns the row, and the run has no end), the row
    share-locked until ``conn``'s transaction ends (PostgreSQL; SQLite's writers take turns).

    The lock is what makes the answer hold for the write that follows in the same transaction:
    a takeover (:meth:`Nodes.resume_job_run`, an UPDATE) waits for it, and one that was not yet
    committed when this ran is waited for and then seen (the row read again once its lock is
    granted), never missed by a snapshot taken before it committed."""
    query = (
        select(job_runs.c.node)
        .where(
            job_runs.c.job_id == job_id,
            job_runs.c.run_at == run_at.astimezone(UTC),
            job_runs.c.node == node,
            job_runs.c.finished_at.is_(None),
        )
        .with_for_update(read=True)
    )
    return conn.execute(query).first() is not None


@dataclass(frozen=True)
class TakenOver:
    """What a takeover released: the dead nodes and how many claims of each kind."""

    nodes: tuple[str, ...] = ()
    messages: int = 0
    deliveries: int = 0


#: the longest limit of the nodes heard from within :data:`MAX_DEAD_AFTER` (the rows of dead
#: nodes stay a day: a limit lowered everywhere must not be held up by them)
_LONGEST = select(func.max(nodes.c.dead_after_s)).where(nodes.c.heartbeat_at >= bindparam("recent"))


def longest_limit(registered: float | None) -> timedelta:
    """This process's takeover limit, or ``registered`` (the longest of the nodes that may
    still be alive) when that is longer: what other nodes are judged by."""
    return max(_dead_after, timedelta(seconds=registered)) if registered else _dead_after


def _longest(conn: Connection, now: datetime, dead_after: timedelta | None) -> timedelta:
    """The takeover limit to judge other nodes by: ``dead_after`` when given (as it is), else
    :func:`longest_limit`. A node trusts its claims for half its own limit after a heartbeat
    (:class:`Liveness`): a node with a longer limit than the taker's would otherwise send,
    after a pause, what the taker had already given another."""
    if dead_after is not None:
        return dead_after
    registered = conn.execute(_LONGEST, {"recent": now - MAX_DEAD_AFTER}).scalar()
    return longest_limit(float(registered) if registered is not None else None)


_HEARTBEAT = (
    update(nodes).where(nodes.c.id == bindparam("node")).values(heartbeat_at=bindparam("now"))
)
#: the nodes alive at ``cutoff``: a claim of any other owner is taken over. Read inside each
#: release statement, so a node that registers and then claims is never missed by a snapshot
#: taken between the two (PostgreSQL's READ COMMITTED: one snapshot per statement)
_LIVE = select(nodes.c.id).where(nodes.c.heartbeat_at >= bindparam("cutoff"))
_live = _LIVE.scalar_subquery()
#: the owners of claims that are not live nodes, in one statement (one snapshot)
#: (the states written into the statement: see :func:`~engine.store.db.state_literal`. A plan
#: from the empty table's statistics read the whole of deliveries at each heartbeat, seen with
#: auto_explain on 6 December 2026; as a parameter the state would leave a generic plan unable
#: to tell 'pending' from 'delivered')
_DEAD_OWNERS = union(
    select(messages.c.claimed_by).where(
        messages.c.state == state_literal("processing"),
        messages.c.claimed_by.is_not(None),
        messages.c.claimed_by.not_in(_live),
    ),
    select(deliveries.c.claimed_by).where(
        deliveries.c.state == state_literal("pending"),
        deliveries.c.claimed_by.is_not(None),
        deliveries.c.claimed_by.not_in(_live),
    ),
)
#: their claims, if they are still not live when released
_TAKE_MESSAGES = (
    update(messages)
    .where(
        messages.c.state == "processing",
        in_list(messages.c.claimed_by, "owners"),
        messages.c.claimed_by.not_in(_live),
    )
    .values(state="received", claimed_by=None, claimed_at=None, updated_at=bindparam("now"))
)
_TAKE_DELIVERIES = (
    update(deliveries)
    .where(
        deliveries.c.state == "pending",
        in_list(deliveries.c.claimed_by, "owners"),
        deliveries.c.claimed_by.not_in(_live),
    )
    .values(claimed_until=None, claimed_by=None)
)
#: a node stopping: its own claims
_GIVE_BACK_MESSAGES = (
    update(messages)
    .where(messages.c.state == "processing", messages.c.claimed_by == bindparam("node"))
    .values(state="received", claimed_by=None, claimed_at=None, updated_at=bindparam("now"))
)
_GIVE_BACK_DELIVERIES = (
    update(deliveries)
    .where(deliveries.c.state == "pending", deliveries.c.claimed_by == bindparam("node"))
    .values(claimed_until=None, claimed_by=None)
)

#: the rows of nodes dead for a day (FORGET_AFTER), their configuration rows first
_FORGET_CONFIGS = delete(config_applied).where(
    config_applied.c.node.in_(select(nodes.c.id).where(nodes.c.heartbeat_at < bindparam("gone")))
)
_FORGET_NODES = delete(nodes).where(nodes.c.heartbeat_at < bindparam("gone"))


class Nodes(Repository):
    """Registering nodes, their heartbeats, taking over dead nodes' claims, singleton runs."""

    def _db_now(self, conn: Connection) -> datetime:
        """Now in the database's clock (PostgreSQL), or this host's (SQLite)."""
        if conn.dialect.name == "postgresql":
            value: datetime = conn.execute(select(func.now())).scalar_one()
            return value.astimezone(UTC)
        return utcnow()

    def register_node(self, role: str, node_id: str | None = None) -> str:
        """Record a running node (a worker: :func:`worker_role`; or ``receiver``: an ``engine
        serve``'s listeners, which claim nothing) with a fresh heartbeat; its id."""
        node = node_id or new_node_id()
        host, pid = socket.gethostname()[:255], os.getpid()
        with self._tx() as conn:
            now = self._db_now(conn)
            conn.execute(delete(nodes).where(nodes.c.id == node))
            conn.execute(
                insert(nodes).values(
                    id=node,
                    host=host,
                    pid=pid,
                    role=role,
                    started_at=now,
                    heartbeat_at=now,
                    dead_after_s=_dead_after.total_seconds(),
                )
            )
        return node

    def heartbeat(self, node_id: str, role: str = "worker") -> bool:
        """Beat the node's heartbeat; False when its row was gone (it is recorded again, as
        ``role``, but its claims may have been taken over meanwhile)."""
        with self._tx() as conn:
            now = self._db_now(conn)
            if conn.execute(_HEARTBEAT, {"node": node_id, "now": now}).rowcount:
                return True
        self.register_node(role, node_id)
        return False

    def forget_node(self, node_id: str) -> TakenOver:
        """A node stopping cleanly: its claims given back at once, its row and its configuration
        row (a receiver's, or an ``engine worker``'s reloader's) deleted."""
        with self._tx() as conn:
            released = conn.execute(_GIVE_BACK_MESSAGES, {"node": node_id, "now": utcnow()})
            leased = conn.execute(_GIVE_BACK_DELIVERIES, {"node": node_id})
            conn.execute(delete(nodes).where(nodes.c.id == node_id))
            conn.execute(delete(config_applied).where(config_applied.c.node == node_id))
        return TakenOver((node_id,), int(released.rowcount or 0), int(leased.rowcount or 0))

    def take_over(self, dead_after: timedelta | None = None) -> TakenOver:
        """Release the claims of every node whose heartbeat is older than ``dead_after`` (by
        default this process's limit, or the longest a node registered: :func:`_longest`), and of
        owners without a row (gone; or claims made before nodes existed). A live node's claims
        are never touched. Rows of nodes dead for a day are deleted, with their configuration
        rows."""
        with self._tx() as conn:
            now = self._db_now(conn)
            cutoff = now - _longest(conn, now, dead_after)
            dead = sorted(conn.execute(_DEAD_OWNERS, {"cutoff": cutoff}).scalars())
            n_messages = n_deliveries = 0
            if dead:
                params = {"owners": dead, "cutoff": cutoff, "now": now}
                n_messages = int(conn.execute(_TAKE_MESSAGES, params).rowcount or 0)
                n_deliveries = int(conn.execute(_TAKE_DELIVERIES, params).rowcount or 0)
            gone = {"gone": now - FORGET_AFTER}
            conn.execute(_FORGET_CONFIGS, gone)
            conn.execute(_FORGET_NODES, gone)
        return TakenOver(tuple(dead), n_messages, n_deliveries)

    # -- singleton jobs ----------------------------------------------------------------------

    def start_job_run(self, job_id: str, run_at: datetime, node: str) -> bool:
        """Take the run of ``job_id`` scheduled at ``run_at`` for ``node``: True for the one
        process whose row is inserted first, False for every other (it skips the run)."""
        row = {
            "job_id": job_id,
            "run_at": run_at.astimezone(UTC),
            "node": node,
            "started_at": utcnow(),
        }
        dialect = self.db_engine.dialect.name
        stmt = (
            postgresql.insert(job_runs).values(row).on_conflict_do_nothing()
            if dialect == "postgresql"
            else sqlite.insert(job_runs).values(row).on_conflict_do_nothing()
        )
        with self._tx() as conn:  # (a row comes back only when this insert made it)
            return conn.execute(stmt.returning(job_runs.c.node)).first() is not None

    def finish_job_run(self, job_id: str, run_at: datetime, outcome: str, node: str) -> bool:
        """Record when a run ended and how (``ok: ...`` or ``failed: ...``), if ``node`` still
        holds it; False when it does not (another node resumed it, and records its own end)."""
        with self._tx() as conn:
            ended = conn.execute(
                update(job_runs)
                .where(
                    job_runs.c.job_id == job_id,
                    job_runs.c.run_at == run_at.astimezone(UTC),
                    job_runs.c.node == node,
                    job_runs.c.finished_at.is_(None),
                )
                .values(finished_at=utcnow(), outcome=clean(outcome, 200))
            )
            return bool(ended.rowcount)

    def interrupted_runs(
        self, prefix: str, dead_after: timedelta | None = None
    ) -> list[InterruptedRun]:
        """Runs of the jobs whose id starts with ``prefix`` that were started and never ended,
        whose node is not alive (its heartbeat older than ``dead_after``, its row gone, or the
        run given back by a leader that stepped down): oldest first."""
        with self.db_engine.connect() as conn:
            now = self._db_now(conn)
            cutoff = now - _longest(conn, now, dead_after)
            rows = conn.execute(
                select(job_runs.c.job_id, job_runs.c.run_at, job_runs.c.node)
                .where(
                    job_runs.c.job_id.startswith(prefix, autoescape=True),
                    job_runs.c.finished_at.is_(None),
                    job_runs.c.node.not_in(_LIVE),
                )
                .order_by(job_runs.c.run_at),
                {"cutoff": cutoff},
            ).all()
        return [InterruptedRun(r.job_id, aware(r.run_at), r.node) for r in rows]

    def resume_job_run(self, run: InterruptedRun, node: str) -> bool:
        """Take an interrupted run over for ``node``: True for the one node whose update finds
        it still the dead owner's and unfinished (two leaders in a row cannot both resume it)."""
        with self._tx() as conn:
            taken = conn.execute(
                update(job_runs)
                .where(
                    job_runs.c.job_id == run.job_id,
                    job_runs.c.run_at == run.run_at.astimezone(UTC),
                    job_runs.c.node == run.node,
                    job_runs.c.finished_at.is_(None),
                )
                .values(node=node, outcome="resumed")
            )
            return bool(taken.rowcount)

    def give_back_job_run(self, job_id: str, run_at: datetime, node: str) -> None:
        """A run stopped before its end on a node that lives on (a leader stepping down): left
        unfinished and owned by nobody, so the next leader resumes it at once."""
        with self._tx() as conn:
            conn.execute(
                update(job_runs)
                .where(
                    job_runs.c.job_id == job_id,
                    job_runs.c.run_at == run_at.astimezone(UTC),
                    job_runs.c.node == node,
                    job_runs.c.finished_at.is_(None),
                )
                .values(node=NOBODY, outcome="interrupted")
            )

    def job_run_items_done(self, job_id: str, run_at: datetime) -> dict[str, int | None]:
        """The items a run has done (each with its result's id)."""
        with self.db_engine.connect() as conn:
            rows = conn.execute(
                select(job_run_items.c.item, job_run_items.c.result_id).where(
                    job_run_items.c.job_id == job_id,
                    job_run_items.c.run_at == run_at.astimezone(UTC),
                )
            ).all()
        return {r.item: r.result_id for r in rows}

    # -- the configuration's generation (a reload on one node reaches all) --------------------

    def config_generation(self) -> tuple[int, str] | None:
        """The configuration's generation and the digest of its files (None: never reloaded)."""
        with self.db_engine.connect() as conn:
            row = conn.execute(
                select(config_generation.c.generation, config_generation.c.hash).where(
                    config_generation.c.id == 1
                )
            ).first()
        return (int(row.generation), str(row.hash)) if row else None

    def publish_config(self, digest: str, node: str) -> int:
        """A reload applied on ``node``: the generation bumped with its files' digest; the new
        generation (every other node follows it)."""
        with self._tx() as conn:
            now = self._db_now(conn)
            bumped = conn.execute(
                update(config_generation)
                .where(config_generation.c.id == 1)
                .values(
                    generation=config_generation.c.generation + 1, hash=digest, node=node, at=now
                )
                .returning(config_generation.c.generation)
            ).scalar_one_or_none()
            if bumped is not None:
                return int(bumped)
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(config_generation).values(
                        id=1, generation=1, hash=digest, node=node, at=utcnow()
                    )
                )
            return 1
        except IntegrityError:  # another node made the row meanwhile: bump it
            return self.publish_config(digest, node)

    def record_config(
        self, node: str, generation: int, digest: str, status: str, detail: str | None = None
    ) -> None:
        """What ``node`` runs now: ``applied`` (this generation), ``refused`` (its files do not
        match the generation's digest, or do not load)."""
        row = {
            "generation": generation,
            "hash": digest,
            "status": status,
            "detail": clean(detail, 2000),
            "at": utcnow(),
        }
        with self._tx() as conn:
            if not conn.execute(
                update(config_applied).where(config_applied.c.node == node).values(row)
            ).rowcount:
                conn.execute(insert(config_applied).values(node=node, **row))
