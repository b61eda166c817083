"""The engine's scheduled jobs (APScheduler 3.11), with their schedule kept in the engine's own
database (a persistent job store: a restart keeps the schedule and runs what it missed, within
an hour's grace).

Jobs run in the worker process of the leader node (engine/jobs/leader.py: one node of those
sharing a PostgreSQL database; on SQLite the one worker). Each run is still claimed first, should
two schedulers ever fire together (a leader stepping down as another takes over): the process
whose insert of (job id, scheduled fire time) into ``job_runs`` succeeds runs it and records when
it finished and how; the others log that they skip it (the primary key decides, on SQLite and
PostgreSQL alike; see engine/store/nodes.py).

A run interrupted before its end — its node killed, or a leader stepping down, which gives the
run back — is resumed by the leader (:func:`resume_interrupted`, at election and every
:data:`RESUME_EVERY_S` after): the eligibility run checks only the appointments its earlier part
did not record (engine/jobs/eligibility.py :class:`~engine.jobs.eligibility.RunProgress`), so a
payer gets no second 270 for an appointment already checked. A pull is not resumed: pulling
again stores nothing twice, and its next fire does it. A give-back or an end the database did
not take when it was due is tried again until it does (engine/jobs/claims.py): otherwise the
run stayed its live node's, and was never resumed while that node lived. A node that finds its
run taken over by another (it stood still long enough to be taken for dead) stops it there
(:class:`~engine.store.nodes.RunTakenOver`) and records nothing over the new owner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from engine.errors import ConfigError
from engine.jobs import claims
from engine.jobs.leader import KEEPALIVES
from engine.settings import Settings
from engine.store.nodes import RunTakenOver

__all__ = [
    "RESUME_EVERY_S",
    "JobRuns",
    "nightly_eligibility",
    "resume_interrupted",
    "run_once",
    "start_scheduler",
    "stop_scheduler",
]

log = logging.getLogger(__name__)


class JobRuns(Protocol):
    """Where runs are claimed (the store's ``job_runs``, engine/store/nodes.py)."""

    def start_job_run(self, job_id: str, run_at: datetime, node: str) -> bool: ...

    def finish_job_run(self, job_id: str, run_at: datetime, outcome: str, node: str) -> bool: ...

    def give_back_job_run(self, job_id: str, run_at: datetime, node: str) -> None: ...


#: the running service the jobs call, where their runs are claimed and by which node (set by
#: start_scheduler; jobs are stored by reference, so these cannot travel with them)
_SERVICE: Any = None
_RUNS: JobRuns | None = None
_NODE = ""
#: the fire time of the run being executed (set by :class:`_FireTimeExecutor`)
_FIRE_TIME: ContextVar[datetime | None] = ContextVar("job_fire_time", default=None)


class _FireTimeExecutor(AsyncIOExecutor):  # type: ignore[misc]
    """APScheduler's asyncio executor, handing each run its scheduled fire time (APScheduler 3
    does not pass it to the job function): the task the run is made in copies this context.
    A run submitted from another thread (:class:`OffLoopScheduler` finds due jobs on one) is
    made on the loop: asyncio's tasks may only be created there."""

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        if _on_loop(self._eventloop):
            self._submit_here(job, run_times)
        else:
            self._eventloop.call_soon_threadsafe(self._submit_here, job, run_times)

    def _submit_here(self, job: Job, run_times: list[datetime]) -> None:
        if self._scheduler.state == STATE_STOPPED:  # found due just before the scheduler stopped
            return
        token = _FIRE_TIME.set(run_times[-1])
        try:
            super()._do_submit_job(job, run_times)
        finally:
            _FIRE_TIME.reset(token)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class OffLoopScheduler(AsyncIOScheduler):  # type: ignore[misc]
    """APScheduler's asyncio scheduler, with its job store read and written on a thread of its
    own: at each wake-up APScheduler 3 looks for due jobs and writes their next fire times
    synchronously, on the event loop. The eligibility schedule's store is the engine's
    database: a database slow to answer (or dropping packets, for the job store's own
    timeouts) held the leader's loop, its lock check and its queue workers with it. The runs
    themselves are still made on the loop (:class:`_FireTimeExecutor`). One look at a time:
    a wake-up asked for meanwhile is made when it ends. Stop it with :func:`stop_scheduler`,
    which lets a look under way end first and starts none after (a plain ``shutdown`` waits
    for that look on the loop: APScheduler stops its job stores under the lock a look holds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="job-store")
        self._looking: asyncio.Future[Any] | None = None
        self._look_again = False
        #: set by :meth:`settle` and on stopping: no look starts any more
        self._stopping = False

    def wakeup(self) -> None:  # (APScheduler calls it from any thread)
        loop = self._eventloop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._look)

    def _look(self) -> None:
        """On the loop: look for due jobs on the store's thread, unless a look is under way."""
        self._stop_timer()
        loop = self._eventloop
        if self._stopping or loop is None:  # (set before the scheduler stops: see _stop_now)
            return
        if self._looking is not None:
            self._look_again = True
            return
        self._looking = loop.run_in_executor(self._store_thread, self._process_jobs)
        self._looking.add_done_callback(self._looked)

    def _looked(self, done: asyncio.Future[Any]) -> None:
        self._looking = None
        if self._stopping:
            return
        if done.cancelled() or (error := done.exception()) is not None:
            failed = "CancelledError" if done.cancelled() else type(error).__name__
            log.error("scheduler: looking for due jobs failed", extra={"error": failed})
            wait: float | None = self.jobstore_retry_interval
        else:
            wait = done.result()
        if self._look_again:
            self._look_again, wait = False, 0
        self._start_timer(wait)

    async def settle(self) -> None:
        """Start no more looks, and wait for one under way to end (bounded by the job store's
        own time-outs), so that stopping does not wait for it on the loop. The runs that look
        found due are made before this returns (their submissions were queued on the loop
        before its end), so a stop that follows finds them and cancels them."""
        self._stopping = True
        self._stop_timer()
        if self._looking is not None:
            await asyncio.wait([self._looking])

    def shutdown(self, wait: bool = True) -> None:
        """Stopped at once when called on the loop (APScheduler's asyncio scheduler stops a
        turn later: a caller could not tell when it had), else on the loop's next turn."""
        loop: asyncio.AbstractEventLoop | None = self._eventloop
        if not self.running or loop is None:
            raise SchedulerNotRunningError
        if _on_loop(loop):
            self._stop_now(wait)
        else:
            loop.call_soon_threadsafe(self._stop_now, wait)

    def _stop_now(self, wait: bool) -> None:
        if self.state == STATE_STOPPED:
            return
        self._stopping = True
        BaseScheduler.shutdown(self, wait)  # (its runs cancelled: asyncio's, on the loop)
        self._stop_timer()
        self._eventloop = None
        self._store_thread.shutdown(wait=False)


async def run_once(
    runs: JobRuns | None,
    node: str,
    job_id: str,
    run_at: datetime | None,
    work: Callable[[], Awaitable[str]],
) -> bool:
    """Run ``work`` for the run of ``job_id`` scheduled at ``run_at`` unless another process
    took that run; True when it ran here. ``work`` returns the outcome recorded with the run
    (``failed: <error type>`` when it raises). Without ``runs`` or a fire time (called by
    hand) it just runs."""
    if runs is None or run_at is None:
        await work()
        return True
    at = run_at.isoformat()
    take = partial(runs.start_job_run, job_id, run_at, node)
    give_back = partial(runs.give_back_job_run, job_id, run_at, node)
    try:
        mine = await claims.claim(job_id, run_at, take, give_back)
    except Exception as exc:  # the database away: skip, rather than risk a second run
        log.error(
            "job run not started", extra={"job": job_id, "run_at": at, "error": type(exc).__name__}
        )
        return False
    if not mine:
        log.info(
            "job run taken by another node; skipped",
            extra={"job": job_id, "run_at": at, "node": node},
        )
        return False
    await _finish(runs, node, job_id, run_at, work)
    return True


async def _finish(
    runs: JobRuns, node: str, job_id: str, run_at: datetime, work: Callable[[], Awaitable[str]]
) -> None:
    """Run ``work`` for a run this node holds and record its end; a run cancelled (the node
    stepping down, or stopping) is given back unfinished, for the next leader to resume. A
    give-back or an end the database does not take now is made once it answers (claims.py). A
    run another node has taken over meanwhile is stopped: its end is that node's to record."""
    outcome = "failed"
    try:
        outcome = await work()
    except asyncio.CancelledError:
        log.warning("job run interrupted; given back", extra={"job": job_id, "node": node})
        await claims.release(job_id, run_at, partial(runs.give_back_job_run, job_id, run_at, node))
        raise
    except RunTakenOver:
        log.warning(
            "job run taken over by another node: stopped here", extra={"job": job_id, "node": node}
        )
        return
    except Exception as exc:
        outcome = f"failed: {type(exc).__name__}"
        await _record_end(runs, node, job_id, run_at, outcome)
        raise
    await _record_end(runs, node, job_id, run_at, outcome)


async def _record_end(
    runs: JobRuns, node: str, job_id: str, run_at: datetime, outcome: str
) -> None:
    finish = partial(runs.finish_job_run, job_id, run_at, outcome, node)
    if await claims.release(job_id, run_at, finish) is False:
        log.warning(
            "job run end not recorded: another node holds the run",
            extra={"job": job_id, "node": node},
        )


def _run_start(service: Any, run_at: datetime) -> date:
    """The first day a run checks: the business days after its fire time's day (in the
    practice's time zone), however late the run is resumed."""
    local = run_at.astimezone(ZoneInfo(service.settings.timezone))
    return local.date() + timedelta(days=1)


async def check_run(service: Any, runs: Any, node: str, job_id: str, run_at: datetime) -> str:
    """One eligibility run (or the rest of an interrupted one): the checks its earlier part did
    not record, logged and summed up as the run's outcome."""
    from engine.jobs.eligibility import RunProgress

    done = await asyncio.to_thread(runs.job_run_items_done, job_id, run_at)
    progress = RunProgress(job_id, run_at, node, done)
    return await _summed(service.check_upcoming(start=_run_start(service, run_at), run=progress))


async def _summed(checks: Awaitable[list[Any]]) -> str:
    """The checks' outcomes, logged and summed up as the run's outcome."""
    outcomes = await checks
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    log.info("eligibility run", extra={"checked": len(outcomes), **counts})
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return f"ok: {len(outcomes)} checked" + (f" ({parts})" if parts else "")


async def nightly_eligibility(job_id: str = "eligibility-nightly") -> None:
    """Check the appointments of the coming business days (ENGINE_ELIGIBILITY_DAYS), once per
    scheduled run however many worker processes share the schedule."""
    if _SERVICE is None:
        return
    service, runs, node, fire = _SERVICE, _RUNS, _NODE, _FIRE_TIME.get()
    if runs is None or fire is None:
        await _summed(service.check_upcoming())
        return
    await run_once(runs, node, job_id, fire, lambda: check_run(service, runs, node, job_id, fire))


#: how often the leader looks for runs to resume (their node must first be found dead: 10 s,
#: or ``ENGINE_NODE_DEAD_AFTER_S``)
RESUME_EVERY_S = 5.0


async def resume_interrupted(service: Any, runs: Any, node: str) -> int:
    """Finish the eligibility runs that were started and never ended by a node now dead (or
    given back): each taken over by this node (one node wins each) and resumed; how many.
    First, the runs this process could not give back (or end) when it should have are given
    back (or ended) now, if the database answers: found below, and resumed here."""
    await claims.settle()
    resumed = 0
    for run in await asyncio.to_thread(runs.interrupted_runs, "eligibility"):
        take = partial(runs.resume_job_run, run, node)
        give_back = partial(runs.give_back_job_run, run.job_id, run.run_at, node)
        if not await claims.claim(run.job_id, run.run_at, take, give_back):
            continue
        log.warning(
            "interrupted job run resumed",
            extra={"job": run.job_id, "run_at": run.run_at.isoformat(), "dead_node": run.node},
        )
        resumed += 1
        work = partial(check_run, service, runs, node, run.job_id, run.run_at)
        with contextlib.suppress(Exception):  # recorded as the run's outcome
            await _finish(runs, node, run.job_id, run.run_at, work)
    return resumed


async def stop_scheduler(scheduler: AsyncIOScheduler, grace_s: float = 5.0) -> None:
    """Stop ``scheduler`` and cancel the runs it is running, waiting up to ``grace_s`` for them
    to give their runs back (APScheduler's own shutdown cancels them without waiting)."""
    cancelled = False
    if isinstance(scheduler, OffLoopScheduler):  # stopped whatever: a term's end cancels twice
        cancelled = await outlast(asyncio.ensure_future(scheduler.settle()), "scheduler settle")
    executors = getattr(scheduler, "_executors", {}).values()
    running = [f for e in executors for f in getattr(e, "_pending_futures", ()) if not f.done()]
    scheduler.shutdown(wait=False)
    if cancelled:
        raise asyncio.CancelledError
    if running:
        await asyncio.wait(running, timeout=grace_s)


async def outlast(future: asyncio.Future[Any], what: str) -> bool:
    """Wait until ``future`` is done, however often this task is cancelled meanwhile (a
    leader's term ends by cancelling its jobs, more than once); whether it was. The caller
    finishes what must be finished, then raises :class:`asyncio.CancelledError` itself. An
    error of ``future`` is logged (its type, as ``what`` failed), not raised: the caller is
    ending its term, and reads the future's result itself where it needs it."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
        except Exception as exc:
            log.warning(f"{what} failed", extra={"error": type(exc).__name__})
            break
    return cancelled


#: a fire missed by less than this (the engine down, the leader changing) still runs
MISFIRE_GRACE_S = 3600


def _with_driver(db_url: str) -> str:
    """The URL with the driver the engine installs: a plain ``postgresql://`` means psycopg2 to
    SQLAlchemy, which is not installed (the job store then failed, and no schedule ran)."""
    parsed = make_url(db_url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


#: on PostgreSQL, the longest one statement of the job store may run (it reads or writes a row
#: or two), as the leader's own lock check (engine/jobs/leader.py)
JOB_STORE_STATEMENT_TIMEOUT_S = 5
#: on PostgreSQL, the job store's connections: the leader's short keepalives (the connect
#: timeout stays the engine's), and a limit on data sent and not acknowledged
#: (``tcp_user_timeout``, ms: keepalives probe only an idle line), longer than the keepalives'
#: own 11 s so it does not cut them short
_JOB_STORE_TCP = {
    **{k: v for k, v in KEEPALIVES.items() if k != "connect_timeout"},
    "tcp_user_timeout": 15_000,
}


def _job_store(db_url: str) -> SQLAlchemyJobStore:
    """The schedule's store, in the engine's database. APScheduler reads and writes it on the
    event loop (at start, at each fire), so on PostgreSQL its connections are bounded like the
    engine's others (``connect_timeout``, a ``statement_timeout``: engine/store/db.py) and the
    leader's lock connection (keepalives): a database host that drops packets would otherwise
    hold the leader's loop, its lock check with it, for the minutes TCP takes to give up, and
    the leader could not step down. A URL's own settings win."""
    url = _with_driver(db_url)
    if make_url(url).get_backend_name() != "postgresql":
        if make_url(url).database in (None, "", ":memory:"):  # (tests): one database, any thread
            from sqlalchemy import create_engine
            from sqlalchemy.pool import StaticPool

            memory = create_engine(
                url, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
            return SQLAlchemyJobStore(engine=memory, tablename="scheduled_jobs")
        return SQLAlchemyJobStore(url=url, tablename="scheduled_jobs")
    from sqlalchemy import event

    from engine.store import create_db_engine

    db_engine = create_db_engine(url, statement_timeout_s=JOB_STORE_STATEMENT_TIMEOUT_S)
    given = make_url(url).query  # (the engine's own keepalives, longer, are replaced)

    @event.listens_for(db_engine, "do_connect")
    def _bounded(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        for key, value in _JOB_STORE_TCP.items():
            if key not in given:
                params[key] = value

    return SQLAlchemyJobStore(engine=db_engine, tablename="scheduled_jobs")


def _missed_fire(db_engine: Engine, job_id: str, grace_s: float) -> datetime | None:
    """The stored next fire time of ``job_id`` when it has passed, within ``grace_s``: a
    leader died before the fire, and the next leader's scheduler must run it (adding the job
    again computes tomorrow's). None when there is none (or no job store yet). Read through
    the job store's own engine (:func:`_job_store`: bounded on PostgreSQL)."""
    from sqlalchemy import text

    try:
        with db_engine.connect() as conn:
            stored = conn.execute(
                text("SELECT next_run_time FROM scheduled_jobs WHERE id = :id"), {"id": job_id}
            ).scalar_one_or_none()
    except Exception:  # no job store yet (the first start): nothing was missed
        return None
    if stored is None:
        return None
    at = datetime.fromtimestamp(float(stored), UTC)
    late = (datetime.now(UTC) - at).total_seconds()
    return at if 0 < late <= grace_s else None


def start_scheduler(
    service: Any,
    settings: Settings,
    db_url: str,
    *,
    runs: JobRuns | None = None,
    node: str = "",
    loop: asyncio.AbstractEventLoop | None = None,
) -> OffLoopScheduler:
    """Start the scheduler with the eligibility job on its cron, its runs made on ``loop``
    (else the running one): called off the loop (``asyncio.to_thread``, as the worker does),
    its reads and writes of the job store (the engine's database) keep off the loop too.

    ``runs`` and ``node``: where each run is claimed, and as whom, so that of several worker
    processes sharing the schedule one runs it (without ``runs`` every process does)."""
    global _SERVICE, _RUNS, _NODE
    _SERVICE, _RUNS, _NODE = service, runs, node
    try:
        trigger = CronTrigger.from_crontab(settings.eligibility_cron, timezone=settings.timezone)
    except ValueError as exc:
        raise ConfigError(f"ENGINE_ELIGIBILITY_CRON {settings.eligibility_cron!r}: {exc}") from exc
    job_store = _job_store(db_url)
    scheduler = OffLoopScheduler(
        event_loop=loop or asyncio.get_running_loop(),
        jobstores={"default": job_store},
        executors={"default": _FireTimeExecutor()},
        timezone=settings.timezone,
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": MISFIRE_GRACE_S,
        },
    )
    # a fire the last leader missed (it died before it) is kept, not replaced by tomorrow's
    missed = _missed_fire(job_store.engine, "eligibility-nightly", MISFIRE_GRACE_S)
    scheduler.add_job(
        nightly_eligibility,
        trigger,
        id="eligibility-nightly",
        replace_existing=True,
        **({"next_run_time": missed} if missed is not None else {}),
    )
    if settings.eligibility_on_start:
        scheduler.add_job(
            nightly_eligibility,
            "date",
            run_date=datetime.now(UTC) + timedelta(seconds=5),
            kwargs={"job_id": "eligibility-on-start"},
            id="eligibility-on-start",
            replace_existing=True,
        )
    scheduler.start()
    return scheduler
