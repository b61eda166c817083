"""The worker process runs the route files' pull sources on their schedules: a source pulled
every minute is pulled at the next minute, what it stored is processed and indexed, and the fire
is recorded in ``job_runs`` (the worker of ``engine serve`` and ``engine worker`` alike). Slow:
waits for a real fire (up to a minute)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select

from engine.flow.worker import serve_workers
from engine.settings import Settings
from engine.sim.fhir_server import running_stub_fhir
from engine.store import SqlMessageStore, create_db_engine
from engine.store.tables import job_runs
from tests.jobs.pull_support import seed_alice

TIMEZONE = "America/New_York"


def test_the_worker_pulls_a_source_on_its_schedule_and_indexes_what_it_pulled(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    tomorrow = datetime.now(ZoneInfo(TIMEZONE)).date() + timedelta(days=1)
    with running_stub_fhir() as ehr:
        with httpx.Client(base_url=ehr.base_url + "/") as client:
            seed_alice(client, tomorrow)
        routes = tmp_path / "routes"
        routes.mkdir()
        (routes / "example.yaml").write_text(  # replaces the built-in example
            f"sources:\n  clinic: {{type: fhir, base_url: '{ehr.base_url}', every_minutes: 1}}\n"
        )
        settings = Settings(
            home=tmp_path,
            var_dir=tmp_path / "var",
            database_url=url,
            routes_dir=routes,
            timezone=TIMEZONE,
        )
        store = SqlMessageStore(create_db_engine(url))
        store.migrate()
        appointment = f"{ehr.base_url}/Appointment/a1"

        async def main() -> None:
            stop = asyncio.Event()
            worker = asyncio.create_task(serve_workers(settings, stop))
            try:
                deadline = asyncio.get_running_loop().time() + 75
                while await asyncio.to_thread(store.resource, appointment) is None:
                    assert not worker.done(), worker.exception()
                    assert asyncio.get_running_loop().time() < deadline, "no pull, or not indexed"
                    await asyncio.sleep(0.25)
            finally:
                stop.set()
                await asyncio.wait_for(worker, 10)

        asyncio.run(main())
        with store.db_engine.connect() as conn:
            [run] = conn.execute(select(job_runs).where(job_runs.c.job_id == "pull:clinic")).all()
        store.db_engine.dispose()
    assert run.outcome == "ok: pulled 1, new 1, unchanged 0"
    fired = run.run_at.replace(tzinfo=UTC)
    assert fired.second == 0 and fired.microsecond == 0  # on the minute, as in every process
    assert ehr.state.count("Appointment") == 1
