"""The engine's scheduled jobs (APScheduler 3.11), with their schedule kept in the engine's own
database (a persistent job store: a restart keeps the schedule and runs what it missed, within
an hour's grace).

Jobs run in the worker process. With several worker processes on one database every scheduler
wakes at the same fire time and finds the job due, so each run is claimed first: the process
whose insert of (job id, scheduled fire time) into ``job_runs`` succeeds runs it and records when
it finished and how; the others log that they skip it (the primary key decides, on SQLite and
PostgreSQL alike; see engine/store/nodes.py). A run started by a process that died is not run
again by another: the next fire time is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from engine.errors import ConfigError
from engine.settings import Settings

__all__ = ["JobRuns", "nightly_eligibility", "run_once", "start_scheduler"]

log = logging.getLogger(__name__)


class JobRuns(Protocol):
    """Where runs are claimed (the store's ``job_runs``, engine/store/nodes.py)."""

    def start_job_run(self, job_id: str, run_at: datetime, node: str) -> bool: ...

    def finish_job_run(self, job_id: str, run_at: datetime, outcome: str) -> None: ...


#: the running service the jobs call, where their runs are claimed and by which node (set by
#: start_scheduler; jobs are stored by reference, so these cannot travel with them)
_SERVICE: Any = None
_RUNS: JobRuns | None = None
_NODE = ""
#: the fire time of the run being executed (set by :class:`_FireTimeExecutor`)
_FIRE_TIME: ContextVar[datetime | None] = ContextVar("job_fire_time", default=None)


class _FireTimeExecutor(AsyncIOExecutor):  # type: ignore[misc]
    """APScheduler's asyncio executor, handing each run its scheduled fire time (APScheduler 3
    does not pass it to the job function): the task the run is made in copies this context."""

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        token = _FIRE_TIME.set(run_times[-1])
        try:
            super()._do_submit_job(job, run_times)
        finally:
            _FIRE_TIME.reset(token)


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
    try:
        mine = await asyncio.to_thread(runs.start_job_run, job_id, run_at, node)
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
    outcome = "failed"
    try:
        outcome = await work()
    except Exception as exc:
        outcome = f"failed: {type(exc).__name__}"
        raise
    finally:
        try:
            await asyncio.to_thread(runs.finish_job_run, job_id, run_at, outcome)
        except Exception as exc:
            log.warning(
                "job run end not recorded", extra={"job": job_id, "error": type(exc).__name__}
            )
    return True


async def _check_upcoming() -> str:
    """One eligibility run: the checks, logged and summed up as the run's outcome."""
    outcomes = await _SERVICE.check_upcoming()
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
    await run_once(_RUNS, _NODE, job_id, _FIRE_TIME.get(), _check_upcoming)


def start_scheduler(
    service: Any,
    settings: Settings,
    db_url: str,
    *,
    runs: JobRuns | None = None,
    node: str = "",
) -> AsyncIOScheduler:
    """Start the scheduler on the running event loop with the eligibility job on its cron.

    ``runs`` and ``node``: where each run is claimed, and as whom, so that of several worker
    processes sharing the schedule one runs it (without ``runs`` every process does)."""
    global _SERVICE, _RUNS, _NODE
    _SERVICE, _RUNS, _NODE = service, runs, node
    try:
        trigger = CronTrigger.from_crontab(settings.eligibility_cron, timezone=settings.timezone)
    except ValueError as exc:
        raise ConfigError(f"ENGINE_ELIGIBILITY_CRON {settings.eligibility_cron!r}: {exc}") from exc
    scheduler = AsyncIOScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=db_url, tablename="scheduled_jobs")},
        executors={"default": _FireTimeExecutor()},
        timezone=settings.timezone,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
    )
    scheduler.add_job(nightly_eligibility, trigger, id="eligibility-nightly", replace_existing=True)
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
