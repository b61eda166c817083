"""The queue workers' process: processing (route → map) and delivery, apart from the receiver.

``engine serve`` runs the MLLP/HTTP receiver in its own process and starts these beside it
(``worker_processes``, engine/settings.py), so mapping and delivery never compete with ACKs for
the interpreter (each process has its own GIL on this 2-core machine). They share the database:
a message or delivery is claimed in a write transaction (SQLite: one writer at a time, under
``BEGIN IMMEDIATE``; PostgreSQL: FOR UPDATE SKIP LOCKED), so each is taken by one process, and
each patient's messages and deliveries go in order whichever process takes them. With
PostgreSQL, more worker processes — on this host or others — may be added with ``engine worker``.
One worker process maps and delivers about 900 messages/s of the example's routes here before
its own interpreter binds (README, Measured figures).

Each worker process is a node (engine/store/nodes.py): it registers as ``host:pid:random``,
claims with that id, beats a heartbeat every 2 s and, at each beat, takes over the claims of any
node whose heartbeat is older than the takeover limit (10 s unless ``ENGINE_NODE_DEAD_AFTER_S``
says otherwise; killed, or its host gone): after a kill -9 the restarted
(or a surviving) worker resumes the dead one's patients within about 12 s instead of waiting for
the claims' own time-outs. On a clean stop it gives its claims back at once.

Of the nodes on one database, one leads (engine/jobs/leader.py: a PostgreSQL advisory lock; on
SQLite the first of ``engine serve``'s worker processes): only the leader runs the singleton
jobs — the eligibility schedule and the resumption of runs a dead node left unfinished, the
pulls, retention (in short batches, engine/jobs/retention.py) and queue repair, the alerts.
Every node processes and delivers. An
eligibility schedule that cannot start (the store away at that moment, the payers' files invalid)
is tried again while the node leads, 5 s doubling to 60 s; the queue workers never wait for it.

Started by ``engine serve``, the worker records its metrics (routed, delivered, dead letters)
into the receiver's metrics directory itself (prometheus_client's multiprocess mode, see
engine/metrics.py), and dies with the process that started it (Linux PR_SET_PDEATHSIG, and a
parent check every second).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from engine.jobs.upkeep import keep_tables
from engine.memory import keep_little_freed_memory
from engine.metrics import EngineMetrics
from engine.runtime import freeze_loaded
from engine.runtime import run as run_loop
from engine.settings import Settings
from engine.store.nodes import Liveness

__all__ = ["keep_node", "run_workers", "serve_workers"]

log = logging.getLogger(__name__)

#: how long the processor, woken from idle or after a short batch that took every message
#: waiting, waits before it claims, so that messages arriving one by one share transactions
#: (engine/flow/process.py). Not the dispatcher: one patient's deliveries are claimed one at a
#: time, each after the one before is settled, and a wait before each claim would slow them
#: all. A message is processed up to 20 ms later when messages come one at a time; a backlog
#: (messages left behind by a claim) is claimed without waiting.
LINGER_S = 0.02
#: how long a delivery's outcome may wait for others to be recorded with it (Dispatcher's
#: ``flush_s``): a destination answering one delivery at a time makes one small outcome
#: transaction per answer without it
FLUSH_S = 0.02


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def serve_workers(
    settings: Settings,
    stop: asyncio.Event,
    pressure: Any = None,
    metrics: EngineMetrics | None = None,
    index: int = 0,
    processes: int = 1,
) -> None:
    """Run the processor, the dispatcher and the retention job until ``stop`` is set.

    ``pressure``: the receiver's shared ingest-pressure value (``engine serve``), or None.
    ``metrics``: where routing and delivery outcomes are counted, or None.
    ``index``: which of ``engine serve``'s worker processes this is (``worker_processes``). On
    SQLite only the first campaigns for leadership (there it leads at once: one file, one
    host) and checkpoints the WAL; the others process and deliver. On PostgreSQL every process
    campaigns, as separate nodes do. ``processes``: how many worker processes of one ``engine
    serve`` deliver beside this one: each takes its share of every destination's concurrency.
    """
    from engine.adapters.registry import load_routes
    from engine.audit.key import audit_key_for
    from engine.jobs.leader import Leadership
    from engine.mappings import load_mappings
    from engine.pressure import IngestPressure
    from engine.store import SqlMessageStore
    from engine.store.nodes import worker_role

    mappings = load_mappings(settings.mappings_dir)
    routes = load_routes(settings.routes_dir)
    db_engine = worker_db_engine(settings)
    store = SqlMessageStore(db_engine)
    await asyncio.to_thread(store.migrate)
    await asyncio.to_thread(store.use_audit_key, audit_key_for(settings))
    role = worker_role(index, processes)
    liveness = Liveness()  # from before its registration, the node's first heartbeat
    node = await asyncio.to_thread(store.register_node, role)
    log.info("worker node registered", extra={"node": node})
    destinations = await _destinations(routes, db_engine)
    burst = IngestPressure(pressure) if pressure is not None else None
    processor, dispatcher = _queue_workers(
        settings, store, (routes, mappings, destinations), node, burst, metrics, (index, processes)
    )
    dispatcher.liveness = liveness  # beaten by keep_node
    leadership = Leadership(
        db_engine,
        node,
        on_change=partial(metrics.record_leader, node) if metrics is not None else None,
    )
    lead = partial(_lead, settings, store, node, routes, processor.wake, metrics)
    freeze_loaded()  # what start-up loaded (mappings, routes, models) is not walked again
    tasks = [
        asyncio.create_task(processor.run(stop), name="processor"),
        asyncio.create_task(dispatcher.run(stop), name="dispatcher"),
        asyncio.create_task(
            keep_node(store, node, stop, (processor.wake, dispatcher.wake), role, liveness),
            name="node",
        ),
        # on every node: the leader evaluates the rules; any node says the database is away
        asyncio.create_task(
            _alerts(settings, db_engine, node, stop, lambda: leadership.leading, index == 0),
            name="alerts",
        ),
    ]
    if index == 0 or db_engine.dialect.name == "postgresql":
        tasks.append(asyncio.create_task(leadership.run(stop, lead), name="leadership"))
    if index == 0:
        tasks.append(asyncio.create_task(store.checkpoints(stop), name="checkpoints"))
    try:
        await asyncio.gather(*tasks)
    finally:
        for dest in destinations.values():
            with contextlib.suppress(Exception):
                await dest.close()
        await _forget(store, node)
        db_engine.dispose()


def worker_db_engine(settings: Settings) -> Any:
    """The workers' database engine: commits without waiting for SQLite's fsync (what they
    write can be redone) and, on PostgreSQL, each statement limited to
    :data:`~engine.store.db.WORKER_STATEMENT_TIMEOUT_S` (engine/store/db.py)."""
    from engine.store import create_db_engine
    from engine.store.db import WORKER_STATEMENT_TIMEOUT_S

    return create_db_engine(
        settings.resolved_database_url(),
        durable=False,
        statement_timeout_s=WORKER_STATEMENT_TIMEOUT_S,
    )


async def _destinations(routes: Any, db_engine: Any) -> dict[str, Any]:
    """The route files' destinations, built for this process. Each knows the store's tag
    (PostgreSQL: the database's identity), shared by every node of it, so a file redelivered
    by another node after a crash is found, not written twice (files.py)."""
    from engine.adapters.registry import build_destination
    from engine.store.identity import database_tag

    tag = await asyncio.to_thread(database_tag, db_engine)
    return {
        name: build_destination(name, config, store_tag=tag)
        for name, config in routes.destinations.items()
    }


def _queue_workers(
    settings: Settings,
    store: Any,
    config: tuple[Any, Any, dict[str, Any]],
    node: str,
    burst: Any,
    metrics: EngineMetrics | None,
    share: tuple[int, int] = (0, 1),
) -> tuple[Any, Any]:
    """The node's processor and dispatcher (``config``: its routes, mappings and destinations),
    the processor waking the dispatcher when it has queued deliveries."""
    from engine.flow.deliver import Dispatcher
    from engine.flow.process import Processor

    routes, mappings, destinations = config
    processor = Processor(
        store,
        routes,
        mappings,
        idle_s=0.05,
        batch=50,
        default_charset=settings.default_charset,
        pressure=burst,
        metrics=metrics,
        worker=node,
        linger_s=LINGER_S,
    )
    dispatcher = Dispatcher(
        store,
        routes,
        destinations,
        observer=metrics,
        idle_s=0.05,
        pressure=burst,
        node=node,
        flush_s=FLUSH_S,
        share=share,
    )
    processor.on_routed = dispatcher.wake
    return processor, dispatcher


async def _lead(
    settings: Settings,
    store: Any,
    node: str,
    routes: Any,
    wake: Callable[[], None],
    metrics: EngineMetrics | None,
    term: asyncio.Event,
) -> None:
    """The singleton jobs, while this node leads (engine/jobs/leader.py): the eligibility
    schedule and the resumption of runs a dead node left unfinished, the pulls, retention and
    queue repair, the queue tables' upkeep on PostgreSQL (engine/jobs/upkeep.py; the
    alerts ask whether this node leads). Until ``term`` (a clean stop), or
    cancelled (leadership lost):
    the schedules are stopped either way and a run cut short is given back."""
    pulls = _pulls(routes, settings, store, node, wake, metrics)
    tasks = [
        asyncio.create_task(_eligibility(settings, store, node, term), name="eligibility"),
        asyncio.create_task(_retention(store, settings, term), name="retention"),
        asyncio.create_task(keep_tables(store.db_engine, term), name="upkeep"),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        # each job stops what it started (the schedule) before the lock is let go
        await asyncio.gather(*tasks, return_exceptions=True)
        if pulls is not None:
            await pulls.close()


async def _resume(service: Any, store: Any, node: str, term: asyncio.Event) -> None:
    """The leader's look, every few seconds, for eligibility runs a dead node (or a leader that
    stepped down) left unfinished: resumed here, the appointments already checked left out."""
    from engine.jobs.scheduler import RESUME_EVERY_S, resume_interrupted

    while not term.is_set():
        try:
            await resume_interrupted(service, store, node)
        except Exception as exc:  # the database away: look again
            log.warning("interrupted runs not resumed", extra={"error": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(term.wait(), RESUME_EVERY_S)


async def keep_node(
    store: Any,
    node: str,
    stop: asyncio.Event,
    wake: Sequence[Callable[[], None]] = (),
    role: str = "worker",
    liveness: Liveness | None = None,
) -> None:
    """Beat ``node``'s heartbeat every HEARTBEAT_S until ``stop``, and at each beat take over
    the claims of dead nodes (their ids and what was released are logged; ``wake`` is called so
    the work is claimed again at once)."""
    from engine.store.nodes import HEARTBEAT_S

    while not stop.is_set():
        try:
            began = liveness.clock() if liveness is not None else 0.0
            written = await asyncio.to_thread(store.heartbeat, node, role)
            if liveness is not None:  # what the dispatcher may send without asking
                liveness.beaten(began, written)
            if not written:
                log.warning("node was taken for dead; registered again", extra={"node": node})
            taken = await asyncio.to_thread(store.take_over)
            if taken.nodes:
                log.warning(
                    "claims of dead nodes taken over",
                    extra={
                        "node": node,
                        "dead_nodes": list(taken.nodes),
                        "messages": taken.messages,
                        "deliveries": taken.deliveries,
                    },
                )
                for call in wake:
                    call()
        except Exception as exc:  # the database away for a moment: beat again soon
            log.warning("heartbeat failed", extra={"node": node, "error": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEARTBEAT_S)


async def _forget(store: Any, node: str) -> None:
    """A clean stop: the node's claims given back at once (what is left of them)."""
    try:
        given = await asyncio.to_thread(store.forget_node, node)
        log.info(
            "worker node stopped",
            extra={"node": node, "messages": given.messages, "deliveries": given.deliveries},
        )
    except Exception as exc:  # its claims are taken over when its heartbeat is found old
        log.warning("node not forgotten", extra={"node": node, "error": type(exc).__name__})


#: how often the leader sweeps stored document bytes no document names (PostgreSQL)
ORPHAN_SWEEP_EVERY_S = 86_400.0
#: how long the leader waits before trying again to start the eligibility schedule, doubled after
#: each failure up to ELIGIBILITY_RETRY_MAX_S (seconds)
ELIGIBILITY_RETRY_S = 5.0
ELIGIBILITY_RETRY_MAX_S = 60.0


async def _eligibility(settings: Settings, store: Any, node: str, term: asyncio.Event) -> None:
    """The eligibility schedule and the resumption of interrupted runs, for this term as the
    leader. When they cannot start (the store away at the worker's start, the payers' files
    invalid) the kind of error is logged and the start tried again after ELIGIBILITY_RETRY_S,
    doubling up to ELIGIBILITY_RETRY_MAX_S, until it starts or the term ends (``term``, or
    cancelled): an error that cannot heal is logged once a minute. The queue workers run
    meanwhile whatever is wrong (the receiver checked the payers' files at start-up and said so).
    The schedule is stopped and the service closed when the term ends."""
    from engine.jobs.scheduler import outlast, stop_scheduler

    delay = ELIGIBILITY_RETRY_S
    attempts = 1
    while (started := await _start_eligibility(settings, store, node, delay)) is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(term.wait(), delay)
        if term.is_set():
            return
        delay = min(delay * 2, ELIGIBILITY_RETRY_MAX_S)
        attempts += 1
    if attempts > 1:
        log.warning("eligibility schedule started", extra={"attempts": attempts})
    service, scheduler = started
    try:
        await _resume(service, store, node, term)
    finally:
        try:
            await stop_scheduler(scheduler)
        finally:  # (closed even when the term's end cancels the stop too)
            closing = asyncio.ensure_future(service.close())
            if await outlast(closing, "eligibility service close"):
                raise asyncio.CancelledError


async def _start_eligibility(
    settings: Settings, store: Any, node: str, retry_s: float
) -> tuple[Any, Any] | None:
    """The eligibility service and its schedule started; None when they could not be (logged:
    the error's type and when the next try is, never a value from the files)."""
    from engine.adapters.payer import load_payers
    from engine.jobs.eligibility import EligibilityService
    from engine.jobs.scheduler import outlast, start_scheduler, stop_scheduler

    service: Any = None
    try:
        service = EligibilityService(store, load_payers(settings.payers_dir), settings)
        # its job store read and written off the loop, from the start (engine/jobs/scheduler.py)
        starting = asyncio.ensure_future(
            asyncio.to_thread(
                start_scheduler,
                service,
                settings,
                settings.resolved_database_url(),
                runs=store,
                node=node,
                loop=asyncio.get_running_loop(),
            )
        )
        try:
            scheduler = await asyncio.shield(starting)
        except asyncio.CancelledError:  # the term lost while starting: stopped once started
            # (the start is bounded by the job store's time-outs)
            await outlast(starting, "eligibility schedule start")
            if not starting.cancelled() and starting.exception() is None:
                stopping = asyncio.ensure_future(stop_scheduler(starting.result()))
                await outlast(stopping, "eligibility schedule stop")
            await outlast(asyncio.ensure_future(service.close()), "eligibility service close")
            raise
    except Exception as exc:
        log.error(
            "eligibility schedule not started: trying again",
            extra={"error": type(exc).__name__, "retry_in_s": retry_s},
        )
        if service is not None:
            with contextlib.suppress(Exception):
                await service.close()
        return None
    return service, scheduler


def _pulls(
    routes: Any,
    settings: Settings,
    store: Any,
    node: str,
    wake: Callable[[], None],
    metrics: EngineMetrics | None = None,
) -> Any:
    """The route files' pull sources on their schedules (engine/jobs/pull.py), each fire
    claimed in ``job_runs`` so one worker process pulls; None when there are none. A source
    that cannot be built (its secret's variable unset) is logged and left out: the queue and
    the other sources run. A reload restarts this process, and the schedules with it."""
    from engine.jobs.pull import build_pull_jobs

    if not routes.sources:
        return None
    try:
        jobs = build_pull_jobs(
            routes, settings, store, runs=store, node=node, on_stored=wake, metrics=metrics
        )
        jobs.start()
    except Exception as exc:
        log.error("pull schedules not started", extra={"error": type(exc).__name__})
        return None
    return jobs


async def _retention(store: Any, settings: Settings, stop: asyncio.Event) -> None:
    """Purge delivered messages older than the retention period (in batches of short
    transactions), and repair any delivery queue left without a head (see ``repair_queues``),
    hourly and at start (of each term as the leader)."""
    from engine.jobs.retention import purge_in_batches

    next_orphan_sweep = 0.0  # at start, then daily
    while not stop.is_set():
        try:
            # in short transactions (engine/jobs/retention.py): never a lock held for long
            report = await asyncio.to_thread(
                purge_in_batches,
                store,
                timedelta(days=settings.retention_days),
                stop=stop.is_set,
            )
            if report.purged or report.cancelled or report.left:
                log.info(
                    "retention purge",
                    extra={
                        "purged": report.purged,
                        "batches": report.batches,
                        "longest_lock_ms": round(report.slowest_s * 1000, 1),
                        "longest_lock_rows": report.slowest_rows,
                        "over_budget": report.over_budget,
                        "cancelled": report.cancelled,
                        "left": report.left,
                        "slowest_batch_ms": round(report.slowest_call_s * 1000, 1),
                    },
                )
            # beside SQLite: document files no row names (a commit that died after its file)
            swept = await asyncio.to_thread(store.sweep_blob_files)
            if swept:
                log.info("document files swept", extra={"files": swept})
            # the audit trail has its own period; message retention never deletes its rows
            pruned = await asyncio.to_thread(
                store.prune_audit, timedelta(days=settings.audit_retention_days)
            )
            if pruned:
                log.info("audit retention prune", extra={"pruned": pruned})
            # a guard: no path should leave a patient's queue without a head
            repaired = await asyncio.to_thread(store.repair_queues)
            if repaired:
                log.warning("delivery queues without a head repaired", extra={"n": repaired})
        except Exception as exc:  # the database may be away; try again next hour
            log.warning("retention failed", extra={"error": type(exc).__name__})
        if time.monotonic() >= next_orphan_sweep and not stop.is_set():
            next_orphan_sweep = await _sweep_orphans(store, stop)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3600)


async def _sweep_orphans(store: Any, stop: asyncio.Event) -> float:
    """PostgreSQL: the stored document bytes no document names, which two overlapping purges
    both left (``Documents.sweep_orphan_bytes``; it reads the whole table: daily, after the
    rest of retention, and on its own: a failure here stops nothing else). When to sweep
    next: in a day, or in an hour after a failure."""
    try:
        orphans = await asyncio.to_thread(store.sweep_orphan_bytes, stop=stop.is_set)
    except Exception as exc:
        log.warning("document bytes sweep failed", extra={"error": type(exc).__name__})
        return time.monotonic() + 3600
    if orphans:
        log.warning("document bytes no document named swept", extra={"n": orphans})
    return time.monotonic() + ORPHAN_SWEEP_EVERY_S


async def _alerts(
    settings: Settings,
    db_engine: Any,
    node: str,
    stop: asyncio.Event,
    leading: Callable[[], bool],
    away_notices: bool = True,
) -> None:
    """The alert rules (``alerts.yaml`` beside the routes) on their schedule
    (engine/jobs/alerts.py): evaluated by the leader; the database's own rule by any node
    while the database does not answer (no node can lead then): by the first worker process
    of each ``engine serve`` (``away_notices``), so that one host says it once."""
    from engine.jobs.alerts import run_alerts

    await run_alerts(settings, db_engine, node, stop, leading, away_notices)


def _worker_reloader(
    settings: Settings,
    restart: asyncio.Event,
    rounds: list[Settings],
    loop: asyncio.AbstractEventLoop,
) -> tuple[Any, Any]:
    """``engine worker``'s reloader (engine/flow/config.py): on SIGHUP, or when another node
    published a reload (its generation, followed every few seconds), the files are read and
    checked on their snapshot, and only when all of them are valid does the next round start on
    that snapshot (so what runs is what was checked). The reloader and its database engine."""
    from engine.audit.key import audit_key_for
    from engine.flow.config import LoadedConfig, Reloader, config_digest, load_config
    from engine.store import SqlMessageStore
    from engine.store.nodes import new_node_id

    def apply(_config: LoadedConfig, running: Settings) -> None:
        rounds.append(running)
        log.info("configuration reloaded: workers restarting on it")
        loop.call_soon_threadsafe(restart.set)

    # the digest of the files loaded: read before and after, and unknown ("": the first
    # generation published is then loaded again) when they changed meanwhile
    before = config_digest(settings)
    config = load_config(settings)
    digest = before if config_digest(settings) == before else ""
    reloader = Reloader(settings, config, apply, digest=digest)
    db_engine = worker_db_engine(settings)
    store = SqlMessageStore(db_engine)
    store.migrate()
    store.use_audit_key(audit_key_for(settings))
    reloader.share(store, new_node_id())
    return reloader, db_engine


async def _stop_following(follow: asyncio.Task[None], reloader: Any, shared: Any) -> None:
    """``engine worker``'s clean stop: its reloader stops following, and its configuration row
    goes with its worker's node (the console no longer lists it: engine/store/cluster.py)."""
    follow.cancel()
    with contextlib.suppress(Exception):
        await asyncio.to_thread(reloader.generations.forget_node, reloader.node)
    shared.dispose()


async def _first_of(*events: asyncio.Event, then: asyncio.Event) -> None:
    """Set ``then`` as soon as any of ``events`` is set."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    then.set()


def _process_setup(settings: Settings, parent: int | None) -> int:
    """The worker process's own settings, before anything else runs; how many worker processes
    share the destinations (``engine serve``'s ``worker_processes``; 1 for ``engine worker``)."""
    _die_with_parent()
    keep_little_freed_memory()  # before any thread starts (engine/memory.py)
    # engine serve's worker processes share its destinations' widths and athena's pace
    processes = settings.worker_processes if parent is not None else 1
    from engine.adapters.athena_client import set_process_share

    set_process_share(processes)
    from engine.store.nodes import set_dead_after

    set_dead_after(settings.node_dead_after_s)  # when other nodes count as dead, and this one
    # ACKs first: under load the receiver gets the CPU and the queue absorbs the burst; the
    # workers catch up as soon as the senders pause
    with contextlib.suppress(OSError):
        os.nice(10)
    return processes


def run_workers(
    settings: Settings,
    parent: int | None = None,
    pressure: Any = None,
    metrics_dir: Path | None = None,
    index: int = 0,
) -> None:
    """Process entry point: run the workers until SIGTERM/SIGINT or the parent goes away.

    ``engine worker`` (no ``parent``) reloads its routes and mappings on SIGHUP when they are
    valid, and when another node published a reload whose files it has (engine/flow/config.py);
    the worker of ``engine serve`` ignores SIGHUP (its receiver reloads and restarts it).

    ``metrics_dir``: the receiver's metrics directory (``engine serve``); ``engine worker`` runs
    without one, as no /metrics of its own shows them. ``index``: which of ``engine serve``'s
    worker processes this is (:func:`serve_workers`).
    """
    processes = _process_setup(settings, parent)
    from engine.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    metrics = None
    if metrics_dir is not None:
        metrics = EngineMetrics(multiprocess_dir=metrics_dir)
        metrics.worker_running()

    async def main() -> None:
        stop = asyncio.Event()
        restart = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[Any]] = set()
        rounds = [settings]  # the settings of each round: the last one runs
        reloader: Any = None
        shared: Any = None
        follow: asyncio.Task[None] | None = None
        if parent is None:  # engine serve's worker: the receiver reloads, then restarts it
            from engine.flow.config import follow_reloads

            reloader, shared = await asyncio.to_thread(
                _worker_reloader, settings, restart, rounds, loop
            )
            follow = asyncio.create_task(follow_reloads(reloader, stop), name="follow-reloads")

        def on_hangup() -> None:
            if reloader is None:
                return
            task = asyncio.create_task(asyncio.to_thread(reloader.reload))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)

        async def watch_parent() -> None:
            while parent is not None and not stop.is_set():
                if os.getppid() != parent:
                    stop.set()
                await asyncio.sleep(1)

        watcher = asyncio.create_task(watch_parent())
        while not stop.is_set():
            # one round per configuration: a valid reload ends the round (what is held is
            # finished and given back) and the next one loads the files again
            restart.clear()
            round_stop = asyncio.Event()
            relay = asyncio.create_task(_first_of(stop, restart, then=round_stop))
            await serve_workers(rounds[-1], round_stop, pressure, metrics, index, processes)
            relay.cancel()
        watcher.cancel()
        if follow is not None:
            await _stop_following(follow, reloader, shared)

    run_loop(main())
