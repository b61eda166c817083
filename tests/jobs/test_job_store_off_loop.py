"""The eligibility schedule's job store (the engine's database) is read and written off the
leader's event loop (engine/jobs/scheduler.py ``OffLoopScheduler``): a store slow to answer
does not hold the loop, and the runs it finds due are still made on the loop, with their fire
time. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

from engine.jobs import scheduler as jobs
from engine.settings import Settings
from engine.store import SqlMessageStore
from tests.jobs.conftest import service

SLOW_S = 0.4  # each look for due jobs, as a database slow to answer
#: what the probe job saw when it ran: its thread and its fire time
RAN: dict[str, Any] = {}


async def probe() -> None:
    """A job stored by reference (the job store keeps ``module:function``)."""
    RAN["thread"] = threading.current_thread().name
    RAN["fire"] = jobs._FIRE_TIME.get()


def _slow_looks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every look for due jobs takes SLOW_S; the threads they were made on."""
    looked_on: list[str] = []
    real = SQLAlchemyJobStore.get_due_jobs

    def slow_due(store: SQLAlchemyJobStore, now: datetime) -> Any:
        looked_on.append(threading.current_thread().name)
        time.sleep(SLOW_S)
        return real(store, now)

    monkeypatch.setattr(SQLAlchemyJobStore, "get_due_jobs", slow_due)
    RAN.clear()
    return looked_on


async def _worst_stall(loop: asyncio.AbstractEventLoop, until: asyncio.Future[Any]) -> float:
    """The longest the loop stood still (ticks of 10 ms) until ``until`` is done."""
    worst = 0.0
    while not until.done():
        before = loop.time()
        await asyncio.sleep(0.01)
        worst = max(worst, loop.time() - before)
    return worst


def test_a_slow_job_store_does_not_hold_the_event_loop(
    indexed: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = indexed.db_engine.url.render_as_string(hide_password=False)
    settings = Settings(eligibility_cron="0 18 * * *", timezone="America/New_York")
    svc = service(indexed)
    looked_on = _slow_looks(monkeypatch)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        worst = 0.0

        async def ticker() -> None:
            nonlocal worst
            while True:
                before = loop.time()
                await asyncio.sleep(0.01)
                worst = max(worst, loop.time() - before)

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        # started as the worker starts it: on a thread, its runs made on this loop
        sched = await asyncio.to_thread(
            jobs.start_scheduler, svc, settings, url, runs=None, loop=loop
        )
        fire = datetime.now(UTC) + timedelta(seconds=SLOW_S * 2)
        try:
            # a job due soon, added as the worker's code does its store calls (a thread)
            await asyncio.to_thread(sched.add_job, probe, "date", run_date=fire, id="probe")
            deadline = loop.time() + 20
            while "fire" not in RAN:
                assert loop.time() < deadline, "the job found due did not run"
                await asyncio.sleep(0.02)
        finally:
            await jobs.stop_scheduler(sched)  # (stopped at once, on the loop)
            ticking.cancel()
        assert not sched.running
        assert sched._store_thread._shutdown  # its thread let go
        assert RAN["fire"] == fire  # its fire time handed to it, though found on another thread
        assert RAN["thread"] == threading.current_thread().name  # made on the loop's thread
        return worst

    worst = asyncio.run(main())
    asyncio.run(svc.close())
    assert len(looked_on) >= 2, looked_on  # the start's look, and the one that found the probe
    assert all(name.startswith("job-store") for name in looked_on), looked_on
    # the loop went on meanwhile: no stall anywhere near one slow look (0.4 s)
    assert worst < SLOW_S / 2, f"the event loop stood still {worst:.3f} s"


def test_a_stop_starts_no_look_and_waits_for_none_on_the_loop(
    indexed: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake-up that lands as the stop begins (the timer's, at a fire) starts no look after
    the stop has waited for the one under way: such a look held the loop on the job store's
    lock while APScheduler stopped, or found the job due, wrote its next fire time a day on
    and had its run dropped (found by review, 8 December)."""
    url = indexed.db_engine.url.render_as_string(hide_password=False)
    settings = Settings(eligibility_cron="0 18 * * *", timezone="America/New_York")
    svc = service(indexed)

    async def main() -> tuple[float, list[str]]:
        loop = asyncio.get_running_loop()
        sched = await asyncio.to_thread(jobs.start_scheduler, svc, settings, url, loop=loop)
        fire = datetime.now(UTC) + timedelta(days=1)
        await asyncio.to_thread(sched.add_job, probe, "date", run_date=fire, id="probe")
        await asyncio.sleep(0.3)  # the looks of the start and the add, done
        looked_on = _slow_looks(monkeypatch)  # from here each look takes SLOW_S
        stopping = asyncio.ensure_future(jobs.stop_scheduler(sched))
        loop.call_soon(sched.wakeup)  # the timer's wake-up, in the same turn
        worst = await _worst_stall(loop, stopping)
        await stopping
        await asyncio.sleep(SLOW_S + 0.2)  # a look started anyway would have ended by now
        return worst, looked_on

    worst, looked_on = asyncio.run(main())
    asyncio.run(svc.close())
    assert worst < SLOW_S / 2, f"the event loop stood still {worst:.3f} s while stopping"
    assert looked_on == [], f"looks made as or after the scheduler stopped: {looked_on}"
