"""A leader that died before the nightly fire: the next leader's scheduler runs the missed fire
(within the hour's grace) instead of replacing it by tomorrow's. And a plain ``postgresql://``
URL reaches the job store through the driver the engine installs. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from engine.jobs import scheduler as jobs
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.tables import job_runs
from tests.jobs.conftest import MONDAY, service
from tests.jobs.test_singleton_schedule import _monday_only


def _finished(store: SqlMessageStore) -> bool:
    with store.db_engine.connect() as conn:
        done = job_runs.c.finished_at.is_not(None)
        return conn.execute(select(job_runs).where(done)).first() is not None


def test_a_fire_the_last_leader_missed_is_run_by_the_next(indexed: SqlMessageStore) -> None:
    url = indexed.db_engine.url.render_as_string(hide_password=False)
    url = url.replace("postgresql+psycopg://", "postgresql://")  # as an admin writes it
    settings = Settings(eligibility_cron="0 18 * * *", timezone="America/New_York")
    svc = _monday_only(service(indexed))
    missed = (datetime.now(UTC) - timedelta(minutes=2)).replace(microsecond=0)

    async def leader_before() -> None:
        jobs.start_scheduler(svc, settings, url, runs=indexed, node="dead-leader").shutdown()

    asyncio.run(leader_before())
    # the leader died two minutes before the fire it was waiting for
    with indexed.db_engine.begin() as conn:
        conn.execute(
            text("UPDATE scheduled_jobs SET next_run_time = :at WHERE id = :id"),
            {"at": missed.timestamp(), "id": "eligibility-nightly"},
        )

    async def main() -> None:
        second = jobs.start_scheduler(svc, settings, url, runs=indexed, node="next-leader")
        try:
            deadline = asyncio.get_running_loop().time() + 20
            # until the run has recorded its end (its checks are stored a moment before: a
            # scheduler stopped in between gives the run back, unfinished)
            while len(indexed.eligibility_for_day(MONDAY)) < 3 or not _finished(indexed):
                assert asyncio.get_running_loop().time() < deadline, "the missed fire did not run"
                await asyncio.sleep(0.1)
            job = second.get_job("eligibility-nightly")
            assert job.next_run_time > datetime.now(UTC)  # then back on the cron
        finally:
            second.shutdown(wait=False)

    asyncio.run(main())
    asyncio.run(svc.close())
    with indexed.db_engine.connect() as conn:
        [row] = conn.execute(select(job_runs)).all()
    assert row.node == "next-leader" and row.run_at.replace(tzinfo=UTC) == missed


@pytest.mark.postgres
def test_the_schedule_s_connections_give_up_on_a_silent_database(postgres_schema_url: str) -> None:
    """APScheduler reads and writes its job store on the leader's event loop (the missed fire
    is read through the same engine): on PostgreSQL its connections carry the engine's connect
    timeout, the leader's keepalives, a limit on unacknowledged data and a statement timeout,
    so a database host that drops packets holds the loop seconds, not the minutes TCP takes.
    The URL's own options (here its search_path) are kept."""
    url = postgres_schema_url.replace("postgresql+psycopg://", "postgresql://")
    store = jobs._job_store(url)
    try:
        with store.engine.connect() as conn:
            params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
            statement_timeout = conn.exec_driver_sql("SHOW statement_timeout").scalar_one()
            search_path = conn.exec_driver_sql("SHOW search_path").scalar_one()
    finally:
        store.shutdown()
    limits = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval")
    assert {k: params.get(k) for k in (*limits, "keepalives_count", "tcp_user_timeout")} == {
        "connect_timeout": "10",
        "keepalives": "1",
        "keepalives_idle": "5",
        "keepalives_interval": "2",
        "keepalives_count": "3",
        "tcp_user_timeout": "15000",
    }
    assert statement_timeout == "5s"
    assert search_path == url.rsplit("%3D", 1)[1]
