"""The leader's eligibility schedule when it cannot start at once (issue 14: the store away at the
worker's start left it unstarted until a restart): it is tried again, 5 s doubling to 60 s (made
short here), while the node leads, and starts as soon as it can; a stop or a lost leadership
while it is being retried ends the term at once, and an error that cannot heal is logged at
each try without the files' values. The queue workers are tasks of their own beside it
(engine/flow/worker.py ``serve_workers``): nothing here holds them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from engine.errors import ConfigError
from engine.flow import worker
from engine.jobs import scheduler as jobs
from engine.settings import Settings
from engine.store import SqlMessageStore, create_db_engine

NO_SOURCES = SimpleNamespace(sources={})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlMessageStore]:
    store = SqlMessageStore(create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}"))
    store.migrate()
    yield store
    store.db_engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, store: SqlMessageStore) -> Settings:
    return Settings(
        home=tmp_path,
        var_dir=tmp_path / "var",
        database_url=str(store.db_engine.url),
        eligibility_cron="0 18 * * *",
        timezone="America/New_York",
    )


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "ELIGIBILITY_RETRY_S", 0.02)
    monkeypatch.setattr(worker, "ELIGIBILITY_RETRY_MAX_S", 0.08)


class Starts:
    """``start_scheduler`` failing the first ``failures`` times as a store that is away does,
    then the real one; the schedulers it started."""

    def __init__(self, failures: int, slow_s: float = 0.0) -> None:
        self.failures = failures
        self.slow_s = slow_s  # each start takes this long (a database slow to answer)
        self.calls = 0
        self.started: list[Any] = []
        self.real = jobs.start_scheduler

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise OperationalError("SELECT 1", {}, Exception("unable to open database file"))
        time.sleep(self.slow_s)  # (the worker starts the schedule on a thread)
        scheduler = self.real(*args, **kwargs)
        self.started.append(scheduler)
        return scheduler


def _retry_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        r.retry_in_s
        for r in caplog.records
        if r.getMessage() == "eligibility schedule not started: trying again"
    ]


async def _until(check: Any, limit_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_schedule_starts_after_failed_starts_with_a_bounded_backoff(
    store: SqlMessageStore,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts = Starts(failures=4)
    monkeypatch.setattr(jobs, "start_scheduler", starts)
    caplog.set_level(logging.INFO, logger="engine.flow.worker")

    async def main() -> None:
        term = asyncio.Event()
        lead = asyncio.create_task(
            worker._lead(settings, store, "node-a", NO_SOURCES, lambda: None, None, term)
        )
        await _until(lambda: bool(starts.started))
        [scheduler] = starts.started
        assert scheduler.running and scheduler.get_job("eligibility-nightly") is not None
        term.set()  # a clean stop: the schedule is stopped with the term
        await asyncio.wait_for(lead, 10)
        assert not scheduler.running

    asyncio.run(main())
    assert starts.calls == 5
    assert _retry_delays(caplog) == [0.02, 0.04, 0.08, 0.08]  # doubled, then the ceiling
    assert any(r.getMessage() == "eligibility schedule started" for r in caplog.records)


def test_a_stop_while_retrying_ends_the_term_at_once_and_logs_no_values(
    store: SqlMessageStore,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tries: list[int] = []

    def invalid_payers(_directory: Any) -> Any:  # a configuration error that cannot heal
        tries.append(1)
        raise ConfigError("payers/acme.yaml, line 3, payer_id: '99999-SYNTHETIC' is not valid")

    monkeypatch.setattr("engine.adapters.payer.load_payers", invalid_payers)
    starts = Starts(failures=0)
    monkeypatch.setattr(jobs, "start_scheduler", starts)
    caplog.set_level(logging.INFO)

    async def main() -> float:
        term = asyncio.Event()
        lead = asyncio.create_task(
            worker._lead(settings, store, "node-a", NO_SOURCES, lambda: None, None, term)
        )
        await _until(lambda: len(tries) >= 5)  # past the ceiling: still tried
        assert not lead.done()
        term.set()
        began = asyncio.get_running_loop().time()
        await asyncio.wait_for(lead, 10)
        return asyncio.get_running_loop().time() - began

    took = asyncio.run(main())
    assert took < 1.0
    assert starts.calls == 0 and not starts.started
    delays = _retry_delays(caplog)
    assert len(delays) >= 5 and set(delays[3:]) == {0.08}
    for record in caplog.records:  # the error's kind, never the file's values
        assert "99999-SYNTHETIC" not in record.getMessage()
        assert "99999-SYNTHETIC" not in repr(vars(record))
    assert {r.error for r in caplog.records if hasattr(r, "retry_in_s")} == {"ConfigError"}


def test_leadership_lost_while_retrying_or_after_the_start_stops_cleanly(
    store: SqlMessageStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = Starts(failures=2)
    monkeypatch.setattr(jobs, "start_scheduler", starts)

    async def main() -> None:
        # lost while retrying: cancelled (engine/jobs/leader.py), nothing left running
        lead = asyncio.create_task(
            worker._lead(settings, store, "node-a", NO_SOURCES, lambda: None, None, asyncio.Event())
        )
        await _until(lambda: starts.calls >= 1)
        lead.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lead
        assert not starts.started
        # the next term: started after the last failure, then lost; the schedule is stopped
        # before _lead returns (so it never runs beside the next leader's)
        lead = asyncio.create_task(
            worker._lead(settings, store, "node-a", NO_SOURCES, lambda: None, None, asyncio.Event())
        )
        await _until(lambda: bool(starts.started))
        lead.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lead
        [scheduler] = starts.started
        assert not scheduler.running

    asyncio.run(main())


def test_leadership_lost_while_the_schedule_starts_stops_it_once_started(
    store: SqlMessageStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedule starts on a thread (its job store off the loop): a term lost meanwhile
    waits for that start and stops what it started, rather than leave it running beside the
    next leader's."""
    starts = Starts(failures=0, slow_s=0.5)
    monkeypatch.setattr(jobs, "start_scheduler", starts)

    async def main() -> None:
        lead = asyncio.create_task(
            worker._lead(settings, store, "node-a", NO_SOURCES, lambda: None, None, asyncio.Event())
        )
        await _until(lambda: starts.calls >= 1)
        lead.cancel()  # while the start is under way
        with pytest.raises(asyncio.CancelledError):
            await lead
        [scheduler] = starts.started  # it did start, and was stopped before _lead returned
        assert not scheduler.running

    asyncio.run(main())
