"""Singleton jobs: with several worker processes sharing one schedule, each scheduled run of
the eligibility job is done once. Every scheduler finds the job due at the same fire time; the
process whose (job id, fire time) row goes into ``job_runs`` first runs it, the others skip it.
On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from engine.jobs import scheduler as jobs
from engine.jobs.eligibility import EligibilityService
from engine.settings import Settings
from engine.store import SqlMessageStore, create_db_engine
from engine.store.tables import job_runs
from tests.jobs.conftest import MONDAY, service


def _monday_only(svc: EligibilityService) -> EligibilityService:
    """The service checking Monday's appointments whatever its clock says."""
    real = svc.check_upcoming

    async def monday(**_: Any) -> list[Any]:
        return list(await real(start=MONDAY, days=1))

    svc.check_upcoming = monday  # type: ignore[method-assign]
    return svc


def _runs(store: SqlMessageStore) -> list[Any]:
    with store.db_engine.connect() as conn:
        return conn.execute(select(job_runs)).all()


def test_two_nodes_firing_the_same_run_check_each_appointment_once(
    indexed: SqlMessageStore,
) -> None:
    # a second process: its own engine on the same database
    other = SqlMessageStore(create_db_engine(indexed.db_engine.url))
    one, two = _monday_only(service(indexed)), _monday_only(service(other))
    at = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)

    async def check(svc: EligibilityService) -> str:
        return f"ok: {len(await svc.check_upcoming())} checked"

    async def both() -> list[bool]:
        return list(
            await asyncio.gather(
                jobs.run_once(indexed, "node-a", "eligibility-nightly", at, lambda: check(one)),
                jobs.run_once(other, "node-b", "eligibility-nightly", at, lambda: check(two)),
            )
        )

    ran = asyncio.run(both())
    asyncio.run(one.close())
    asyncio.run(two.close())
    other.db_engine.dispose()
    assert sorted(ran) == [False, True]
    assert len(indexed.eligibility_for_day(MONDAY)) == 3  # one check per appointment
    [row] = _runs(indexed)
    assert row.job_id == "eligibility-nightly" and row.outcome == "ok: 3 checked"
    assert row.node == ("node-a" if ran[0] else "node-b") and row.finished_at is not None


def test_two_schedulers_on_one_database_run_a_fire_time_once(indexed: SqlMessageStore) -> None:
    """Two real schedulers on the shared job store (as two worker processes have): each finds
    the nightly job due at the same fire time and submits it to its executor, as APScheduler
    does; one run checks, the other skips. (In one process they share the job's module state,
    so both claim as the last node started.)"""
    url = indexed.db_engine.url.render_as_string(hide_password=False)
    settings = Settings(eligibility_cron="0 18 * * *", timezone="America/New_York")
    svc = _monday_only(service(indexed))

    async def main() -> datetime:
        schedulers = [
            jobs.start_scheduler(svc, settings, url, runs=indexed, node=f"node-{n}") for n in "ab"
        ]
        try:
            job = schedulers[0].get_job("eligibility-nightly")
            fire: datetime = job.next_run_time
            for sched in schedulers:  # both wake at the fire time and find the job due
                sched._lookup_executor("default").submit_job(job, [fire])
            deadline = asyncio.get_running_loop().time() + 10
            while len(indexed.eligibility_for_day(MONDAY)) < 3:
                assert asyncio.get_running_loop().time() < deadline, "the run did not happen"
                await asyncio.sleep(0.05)
            # the other submission has had its turn: it skipped (a second run would have
            # checked by now: the stub payer answers at once)
            await asyncio.sleep(1.0)
            return fire
        finally:
            for sched in schedulers:
                sched.shutdown(wait=False)

    fire = asyncio.run(main())
    asyncio.run(svc.close())
    assert len(indexed.eligibility_for_day(MONDAY)) == 3  # one check per appointment
    [row] = _runs(indexed)
    assert row.job_id == "eligibility-nightly" and row.node == "node-b"
    assert row.run_at.replace(tzinfo=UTC) == fire  # keyed by the scheduled time, not the clock
    assert row.outcome.startswith("ok: 3 checked") and row.finished_at is not None
