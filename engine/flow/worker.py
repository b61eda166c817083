"""The queue workers' process: processing (route → map) and delivery, apart from the receiver.

``engine serve`` runs the MLLP/HTTP receiver in its own process and starts this one beside it, so
mapping and delivery never compete with ACKs for the interpreter (each process has its own GIL on
this 2-core machine). Both share the database: with PostgreSQL, more worker processes — on this
host or others — may be added with ``engine worker``; work is claimed with FOR UPDATE SKIP LOCKED.

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
from datetime import timedelta
from pathlib import Path
from typing import Any

from engine.metrics import EngineMetrics
from engine.settings import Settings

__all__ = ["run_workers", "serve_workers"]

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def serve_workers(
    settings: Settings,
    stop: asyncio.Event,
    pressure: Any = None,
    metrics: EngineMetrics | None = None,
) -> None:
    """Run the processor, the dispatcher and the retention job until ``stop`` is set.

    ``pressure``: the receiver's shared ingest-pressure value (``engine serve``), or None.
    ``metrics``: where routing and delivery outcomes are counted, or None.
    """
    from engine.adapters.registry import build_destination, load_routes
    from engine.flow.deliver import Dispatcher
    from engine.flow.process import Processor
    from engine.mappings import load_mappings
    from engine.pressure import IngestPressure
    from engine.store import SqlMessageStore, create_db_engine

    mappings = load_mappings(settings.mappings_dir)
    routes = load_routes(settings.routes_dir)
    db_engine = create_db_engine(settings.resolved_database_url(), durable=False)
    store = SqlMessageStore(db_engine)
    await asyncio.to_thread(store.migrate)
    destinations = {
        name: build_destination(name, config) for name, config in routes.destinations.items()
    }
    burst = IngestPressure(pressure) if pressure is not None else None
    processor = Processor(
        store,
        routes,
        mappings,
        idle_s=0.05,
        batch=50,
        default_charset=settings.default_charset,
        pressure=burst,
        metrics=metrics,
    )
    dispatcher = Dispatcher(
        store, routes, destinations, observer=metrics, idle_s=0.05, pressure=burst
    )
    processor.on_routed = dispatcher.wake
    eligibility, scheduler = _eligibility(settings, store)
    tasks = [
        asyncio.create_task(processor.run(stop), name="processor"),
        asyncio.create_task(dispatcher.run(stop), name="dispatcher"),
        asyncio.create_task(_retention(store, settings, stop), name="retention"),
        asyncio.create_task(store.checkpoints(stop), name="checkpoints"),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if eligibility is not None:
            await eligibility.close()
        for dest in destinations.values():
            with contextlib.suppress(Exception):
                await dest.close()
        db_engine.dispose()


def _eligibility(settings: Settings, store: Any) -> tuple[Any, Any]:
    """The eligibility service and its schedule (None, None when they cannot start: the queue
    workers must run whatever is wrong with the payers' configuration; the receiver checked it
    at start-up and said so)."""
    from engine.adapters.payer import load_payers
    from engine.jobs.eligibility import EligibilityService
    from engine.jobs.scheduler import start_scheduler

    try:
        service = EligibilityService(store, load_payers(settings.payers_dir), settings)
        scheduler = start_scheduler(service, settings, settings.resolved_database_url())
    except Exception as exc:
        log.error("eligibility schedule not started", extra={"error": type(exc).__name__})
        return None, None
    return service, scheduler


async def _retention(store: Any, settings: Settings, stop: asyncio.Event) -> None:
    """Purge delivered messages older than the retention period, and repair any delivery queue
    left without a head (see ``repair_queues``), hourly and at start."""
    while not stop.is_set():
        try:
            purged = await asyncio.to_thread(
                store.purge_delivered, timedelta(days=settings.retention_days)
            )
            if purged:
                log.info("retention purge", extra={"purged": purged})
            # a guard: no path should leave a patient's queue without a head
            repaired = await asyncio.to_thread(store.repair_queues)
            if repaired:
                log.warning("delivery queues without a head repaired", extra={"n": repaired})
        except Exception as exc:  # the database may be away; try again next hour
            log.warning("retention failed", extra={"error": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3600)


def run_workers(
    settings: Settings,
    parent: int | None = None,
    pressure: Any = None,
    metrics_dir: Path | None = None,
) -> None:
    """Process entry point: run the workers until SIGTERM/SIGINT or the parent goes away.

    ``metrics_dir``: the receiver's metrics directory (``engine serve``); ``engine worker`` runs
    without one, as no /metrics of its own shows them.
    """
    _die_with_parent()
    # ACKs first: under load the receiver gets the CPU and the queue absorbs the burst; the
    # workers catch up as soon as the senders pause
    with contextlib.suppress(OSError):
        os.nice(10)
    from engine.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    metrics = None
    if metrics_dir is not None:
        metrics = EngineMetrics(multiprocess_dir=metrics_dir)
        metrics.worker_running()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def watch_parent() -> None:
            while parent is not None and not stop.is_set():
                if os.getppid() != parent:
                    stop.set()
                await asyncio.sleep(1)

        watcher = asyncio.create_task(watch_parent())
        await serve_workers(settings, stop, pressure, metrics)
        watcher.cancel()

    asyncio.run(main())
