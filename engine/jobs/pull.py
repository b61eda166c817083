"""Scheduled pulls (the EIP Polling Consumer): booked appointments read from an EHR, fed into the
pipeline as if they had been pushed.

Many practices cannot get an HL7 feed. A route file's ``sources:`` names where to read instead
(engine/adapters/source.py; types in engine/adapters/registry.py ``SOURCE_TYPES``) and when
(``every_minutes``, or a ``cron`` line in ENGINE_TIMEZONE). Each run reads the appointments from
today to ``days - 1`` days ahead, with their patients and coverages, and stores each appointment's
Bundle as a message (kind ``fhir``, channel ``pull``, peer the source's name) with the dedupe key
``pull:<source>|<version key>``: an appointment pulled again unchanged stores nothing (the
store's idempotent-receiver check, engine/store/messages.py), a changed one is stored again.
A version that comes back after a change (booked, cancelled, booked again, from a source whose
keys digest the content) is stored again too, its key naming the newer message it follows: the
index keeps the newest message's resources, and must get the booking back.
The processor then routes it like any FHIR input and indexes its resources
(engine/flow/process.py), so the eligibility job finds the appointment, its patient and coverage
with no HL7 message ever received.

The schedules run on the leader node only (engine/jobs/leader.py); should two schedulers fire
together (a leader stepping down as another takes over), each fire is claimed in ``job_runs``
(engine/jobs/scheduler.py :func:`run_once`, as the eligibility job is), so one process pulls and
the others skip. ``every_minutes`` fires on the
same instants in every process (counted from 2000-01-01 00:00 UTC, not from each process's start).
A run records its counts as its outcome (``ok: pulled 12, new 3, unchanged 9``); a source that
fails (its :class:`~engine.adapters.source.SourceError`, a timeout) is logged without PHI and
recorded as ``failed: ...`` with what was stored before the failure kept; the next fire tries
again. The schedule is an in-memory one built from the route files the worker runs: a reload
restarts the worker (engine/flow/worker.py) and with it the sources' schedules.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import orjson
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from engine.adapters.source import Pulled, Source, SourceError
from engine.errors import ConfigError
from engine.flow.ingest import fhir_patient_key
from engine.jobs.scheduler import _FIRE_TIME, JobRuns, _FireTimeExecutor, run_once, stop_scheduler
from engine.routes.loader import RouteSet
from engine.routes.spec import SourceSpec
from engine.settings import Settings
from engine.store.messages import Incoming, Stored
from engine.store.tables import fhir_resources, messages

__all__ = [
    "PullCounts",
    "PullJobs",
    "build_pull_jobs",
    "dedupe_key",
    "job_id",
    "pull_source",
    "trigger_for",
]

log = logging.getLogger(__name__)

#: the pulled Bundles stored per transaction
_BATCH = 50
#: the longest one pull of one source may take (a source that hangs is given up on)
PULL_TIMEOUT_S = 15 * 60.0
#: fire times of ``every_minutes`` are counted from here, so every process fires together
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class PullMetrics(Protocol):
    """Where pulls are counted (engine/metrics.py EngineMetrics)."""

    def record_pull(self, source: str, *, new: int, unchanged: int, failed: bool) -> None: ...


class PullStore(Protocol):
    """Where pulled Bundles go (the message store; its database holds the resource index)."""

    db_engine: Engine

    def save_batch(self, items: list[Incoming]) -> list[Stored]: ...


def _appointment_url(bundle: Mapping[str, Any]) -> str | None:
    """The fullUrl of the Bundle's Appointment: the appointment's identity in the index."""
    for entry in bundle.get("entry") or []:
        if (entry.get("resource") or {}).get("resourceType") == "Appointment":
            url = entry.get("fullUrl")
            return str(url) if url else None
    return None


def _indexed_by(store: PullStore, urls: list[str]) -> dict[str, tuple[int, str]]:
    """The message each of these resources was last indexed from (the newest processed), with
    that message's dedupe key."""
    if not urls:
        return {}
    query = (
        select(fhir_resources.c.full_url, messages.c.id, messages.c.dedupe_key)
        .join(messages, messages.c.id == fhir_resources.c.message_id)
        .where(fhir_resources.c.full_url.in_(urls))
    )
    with store.db_engine.connect() as conn:
        return {row.full_url: (int(row.id), row.dedupe_key or "") for row in conn.execute(query)}


def _reverted(
    store: PullStore, items: list[Incoming], stored: list[Stored], urls: list[str | None]
) -> list[Incoming]:
    """The pulled versions that are duplicates of a message older than the one the index holds
    for their appointment: it changed and came back (booked, cancelled, booked again, from a
    source whose version keys digest the content). Each is to be stored again, its key naming
    the newer message it follows, so the index takes it back; the same key in every process,
    and an unchanged one the next time (the index then holds this very version)."""
    dups = [n for n, s in enumerate(stored) if s.duplicate and urls[n]]
    latest = _indexed_by(store, sorted({u for n in dups if (u := urls[n])}))
    again: list[Incoming] = []
    for n in dups:
        key = items[n].dedupe_key or ""
        newer, newer_key = latest.get(urls[n] or "", (0, ""))
        if newer > stored[n].id and not newer_key.startswith(f"{key}|after:"):
            again.append(replace(items[n], dedupe_key=f"{key}|after:{newer}"))
    return again


@dataclass(frozen=True)
class PullCounts:
    """What one pull of one source did: appointments read, stored new, already stored."""

    source: str
    pulled: int = 0
    new: int = 0
    unchanged: int = 0
    #: why the pull stopped early (PHI-free), None when it read to the end
    error: str | None = None

    @property
    def outcome(self) -> str:
        """The job run's outcome: ``ok: pulled 3, new 2, unchanged 1`` or ``failed: ...``."""
        counts = f"pulled {self.pulled}, new {self.new}, unchanged {self.unchanged}"
        return f"failed: {self.error} ({counts})" if self.error else f"ok: {counts}"


def dedupe_key(source: str, pulled: Pulled) -> str:
    """A pulled appointment's dedupe key: the source's name and the version key."""
    return f"pull:{source}|{pulled.version_key}"


def job_id(source: str) -> str:
    """A source's job id in ``job_runs`` (64 characters at most)."""
    jid = f"pull:{source}"
    if len(jid) <= 64:
        return jid
    return f"{jid[:51]}~{hashlib.sha256(source.encode()).hexdigest()[:12]}"


def _incoming(source: str, pulled: Pulled) -> Incoming:
    return Incoming(
        raw=orjson.dumps(pulled.bundle),
        channel="pull",
        peer=source,
        kind="fhir",
        message_type="Bundle",
        dedupe_key=dedupe_key(source, pulled),
        patient_key=fhir_patient_key(pulled.bundle),
    )


async def pull_source(
    store: PullStore,
    name: str,
    source: Source,
    start: date,
    end: date,
    *,
    on_stored: Callable[[], None] | None = None,
    timeout_s: float = PULL_TIMEOUT_S,
) -> PullCounts:
    """Pull ``source`` from ``start`` to ``end`` (inclusive) and store what it yields, in
    batches; never raises for the source's failure (it is the counts' ``error``). ``on_stored``
    is called after each batch that stored something new (the processor's wake)."""
    pulled = new = unchanged = 0
    batch: list[Incoming] = []
    urls: list[str | None] = []  # each item's appointment in the index
    error: str | None = None

    async def save(items: list[Incoming]) -> list[Stored]:
        try:
            return await asyncio.to_thread(store.save_batch, items)
        except IntegrityError:
            # another process stored one of these versions between our duplicate check and our
            # insert (a pull by hand beside the schedule): once committed, it is a duplicate
            return await asyncio.to_thread(store.save_batch, items)

    async def flush() -> None:
        nonlocal new, unchanged, batch, urls
        if not batch:
            return
        items, batch, appointments, urls = batch, [], urls, []
        stored = await save(items)
        again = await asyncio.to_thread(_reverted, store, items, stored, appointments)
        fresh = sum(1 for s in stored if not s.duplicate)
        if again:
            fresh += sum(1 for s in await save(again) if not s.duplicate)
        new += fresh
        unchanged += len(stored) - fresh
        if fresh and on_stored is not None:
            on_stored()

    try:
        async with asyncio.timeout(timeout_s):
            async for item in source.pull(start, end):
                pulled += 1
                batch.append(_incoming(name, item))
                urls.append(_appointment_url(item.bundle))
                if len(batch) >= _BATCH:
                    await flush()
    except SourceError as exc:
        error = str(exc)
    except TimeoutError:
        error = f"{name}: no answer within {timeout_s:.0f} s"
    except Exception as exc:  # a source's bug: named by its type only (its text may quote data)
        error = f"{name}: internal error ({type(exc).__name__})"
    finally:
        await flush()  # what was read before a failure is kept
    counts = PullCounts(name, pulled, new, unchanged, error)
    extra = {"source": name, "pulled": pulled, "new": new, "unchanged": unchanged}
    if error:
        log.warning("pull failed", extra={**extra, "error": error})
    else:
        log.info("pull done", extra=extra)
    return counts


def trigger_for(spec: SourceSpec, timezone: str) -> BaseTrigger | None:
    """A source's schedule (None: no ``every_minutes`` nor ``cron``, pulled by hand only)."""
    if spec.cron is not None:
        return CronTrigger.from_crontab(spec.cron, timezone=timezone)
    if spec.every_minutes is not None:
        return IntervalTrigger(minutes=spec.every_minutes, start_date=_EPOCH, timezone=timezone)
    return None


class PullJobs:
    """The pull sources of one worker process: run by hand (:meth:`run`) or on their schedules
    (:meth:`start`), each fire claimed in ``job_runs`` so that one process pulls."""

    def __init__(
        self,
        store: Any,
        specs: Mapping[str, SourceSpec],
        sources: Mapping[str, Source],
        *,
        timezone: str,
        runs: JobRuns | None = None,
        node: str = "",
        on_stored: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: PullMetrics | None = None,
    ) -> None:
        self.store = store
        self.specs = dict(specs)
        self.sources = dict(sources)
        self.timezone = timezone
        self.runs = runs
        self.node = node
        self.on_stored = on_stored
        self.clock = clock
        self.metrics = metrics
        self.scheduler: AsyncIOScheduler | None = None

    def window(self, name: str, days: int | None = None) -> tuple[date, date]:
        """Today (in the engine's time zone) to ``days - 1`` days ahead."""
        today = self.clock().astimezone(ZoneInfo(self.timezone)).date()
        return today, today + timedelta(days=(days or self.specs[name].days) - 1)

    async def run(self, name: str, *, days: int | None = None) -> PullCounts:
        """Pull one source now."""
        start, end = self.window(name, days)
        counts = await pull_source(
            self.store, name, self.sources[name], start, end, on_stored=self.on_stored
        )
        if self.metrics is not None:
            self.metrics.record_pull(
                name, new=counts.new, unchanged=counts.unchanged, failed=counts.error is not None
            )
        return counts

    async def _fire(self, name: str) -> None:
        """One scheduled fire of a source: pulled here unless another process took it."""

        async def work() -> str:
            return (await self.run(name)).outcome

        await run_once(self.runs, self.node, job_id(name), _FIRE_TIME.get(), work)

    def start(self) -> AsyncIOScheduler | None:
        """Schedule every source that has a schedule, on the running loop (None: none has)."""
        scheduler = AsyncIOScheduler(
            executors={"default": _FireTimeExecutor()},
            timezone=self.timezone,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        )
        added = 0
        for name, spec in self.specs.items():
            if name not in self.sources:
                continue
            trigger = trigger_for(spec, self.timezone)
            if trigger is None:
                log.info("pull source has no schedule; pulled by hand only", extra={"source": name})
                continue
            scheduler.add_job(self._fire, trigger, args=[name], id=job_id(name))
            added += 1
        if not added:
            return None
        scheduler.start()
        self.scheduler = scheduler
        return scheduler

    async def close(self) -> None:
        """Stop the schedule and close the sources."""
        if self.scheduler is not None:
            await stop_scheduler(self.scheduler)  # a pull running is cancelled
            self.scheduler = None
        for source in self.sources.values():
            try:
                await source.close()
            except Exception as exc:  # closing one must not keep the others open
                log.warning("source not closed", extra={"error": type(exc).__name__})


def build_pull_jobs(
    routes: RouteSet,
    settings: Settings,
    store: Any,
    *,
    names: list[str] | None = None,
    strict: bool = False,
    runs: JobRuns | None = None,
    node: str = "",
    on_stored: Callable[[], None] | None = None,
    metrics: PullMetrics | None = None,
) -> PullJobs:
    """The route files' pull sources (``names`` of them, else all), built.

    ``strict`` (``engine pull run``): a source that cannot be built raises its ConfigError, as
    does a name no route file defines; otherwise (the worker) it is logged and left out, so one
    source missing its secret does not stop the others nor the queue.
    """
    from engine.adapters.registry import build_source

    wanted = list(routes.sources) if names is None else names
    sources: dict[str, Source] = {}
    for name in wanted:
        spec = routes.sources.get(name)
        if spec is None:
            known = ", ".join(sorted(routes.sources)) or "none"
            raise ConfigError(f"no pull source named {name!r} (defined: {known})")
        try:
            sources[name] = build_source(name, spec)
        except ConfigError as exc:
            if strict:
                raise
            log.error("pull source not started", extra={"source": name, "error": str(exc)})
    return PullJobs(
        store,
        {n: routes.sources[n] for n in wanted},
        sources,
        timezone=settings.timezone,
        runs=runs,
        node=node,
        on_stored=on_stored,
        metrics=metrics,
    )
