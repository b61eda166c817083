"""The engine's scheduled jobs (APScheduler 3.11), with their schedule kept in the engine's own
database (a persistent job store: a restart keeps the schedule and runs what it missed, within
an hour's grace).

Jobs run in the worker process. With several worker processes on one PostgreSQL each runs the
schedule; the eligibility job does not check a patient twice with a payer on the same day, so a
second run finds nothing left to do.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from engine.errors import ConfigError
from engine.settings import Settings

__all__ = ["nightly_eligibility", "start_scheduler"]

log = logging.getLogger(__name__)

#: the running service the jobs call (set by start_scheduler; jobs are stored by reference)
_SERVICE: Any = None


async def nightly_eligibility() -> None:
    """Check the appointments of the coming business days (ENGINE_ELIGIBILITY_DAYS)."""
    if _SERVICE is None:
        return
    outcomes = await _SERVICE.check_upcoming()
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    log.info("eligibility run", extra={"checked": len(outcomes), **counts})


def start_scheduler(service: Any, settings: Settings, db_url: str) -> AsyncIOScheduler:
    """Start the scheduler on the running event loop with the eligibility job on its cron."""
    global _SERVICE
    _SERVICE = service
    try:
        trigger = CronTrigger.from_crontab(settings.eligibility_cron, timezone=settings.timezone)
    except ValueError as exc:
        raise ConfigError(f"ENGINE_ELIGIBILITY_CRON {settings.eligibility_cron!r}: {exc}") from exc
    scheduler = AsyncIOScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=db_url, tablename="scheduled_jobs")},
        timezone=settings.timezone,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
    )
    scheduler.add_job(nightly_eligibility, trigger, id="eligibility-nightly", replace_existing=True)
    if settings.eligibility_on_start:
        scheduler.add_job(
            nightly_eligibility,
            "date",
            run_date=datetime.now(UTC) + timedelta(seconds=5),
            id="eligibility-on-start",
            replace_existing=True,
        )
    scheduler.start()
    return scheduler
