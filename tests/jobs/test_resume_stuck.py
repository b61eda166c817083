"""A run its node could not give back, or whose claim's reply was lost, is resumed while that
node lives on. Before, the run stayed the live node's with nothing running it: no node resumed
it (``interrupted_runs`` skips a live node's runs, its own next term's too) and its fire time
could not be claimed again, so the rest of the night's run waited for the process to stop
(review of 7 December). On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from engine.jobs import claims
from engine.jobs import scheduler as jobs
from engine.store import SqlMessageStore
from engine.store.nodes import NOBODY
from engine.store.tables import job_runs
from tests.jobs.conftest import MONDAY, service
from tests.jobs.leader_support import CountingPayer, HeldPayer

#: the nightly run's fire time: Friday 27 November 2026, 18:00 in New York
RUN_AT = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
JOB = "eligibility-nightly"


class _Away:
    """The store, with the database away for one of its calls while ``away`` is set; with
    ``committed`` the call is made and only its reply is lost."""

    def __init__(self, store: SqlMessageStore, call: str, *, committed: bool = False) -> None:
        self._store, self._call, self._committed = store, call, committed
        self.away = True

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name != self._call:
            return real

        def call(*args: Any) -> Any:
            if not self.away:
                return real(*args)
            if self._committed:
                real(*args)
            raise OperationalError(name, {}, Exception("server closed the connection"))

        return call


def _row(store: SqlMessageStore) -> Any:
    with store.db_engine.connect() as conn:
        return conn.execute(select(job_runs)).one()


def test_a_run_not_given_back_is_resumed_once_the_database_answers(
    indexed: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's case: the leader steps down (its run cancelled) while the database is
    away, so the give-back fails; the database comes back and the node's heartbeat goes on.
    The give-back is made then, and the next term (this node's) resumes the run: the one 270
    in flight when it stopped is not sent again."""
    monkeypatch.setattr(claims, "RETRY_S", 0.05)
    node = indexed.register_node("worker")
    runs = _Away(indexed, "give_back_job_run")

    async def main() -> tuple[int, CountingPayer]:
        payer = HeldPayer()
        svc = service(indexed, adapter_for=lambda _: payer)
        work = lambda: jobs.check_run(svc, runs, node, JOB, RUN_AT)  # noqa: E731
        task = asyncio.create_task(jobs.run_once(runs, node, JOB, RUN_AT, work))
        await payer.held.wait()  # one 270 out and unanswered
        while len(indexed.eligibility_for_day(MONDAY)) < 2:  # the two others answered
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert indexed.interrupted_runs("eligibility") == []  # not given back: still the node's
        runs.away = False  # the database answers again, the node lives on
        assert indexed.heartbeat(node)
        for _ in range(100):
            if indexed.interrupted_runs("eligibility"):
                break
            await asyncio.sleep(0.05)
        [run] = indexed.interrupted_runs("eligibility")
        assert run.node == NOBODY  # given back, though this node does not lead meanwhile
        return await jobs.resume_interrupted(svc, runs, node), payer

    resumed, payer = asyncio.run(main())
    assert resumed == 1
    assert sorted(payer.asked.values()) == [1, 1, 1]  # each member asked once in all
    row = _row(indexed)
    assert row.node == node and row.finished_at is not None
    assert row.outcome == "ok: 3 checked (already_checked 2, needs_action 1)"


def test_a_run_whose_claim_s_reply_was_lost_is_resumed(indexed: SqlMessageStore) -> None:
    """The run's row is inserted, but the reply is lost: the node skips the run as not started,
    holding it all the same. Given back at the leader's next look for runs to resume, and
    resumed there (the same node's, at once or at its next term)."""
    node = indexed.register_node("worker")
    runs = _Away(indexed, "start_job_run", committed=True)

    async def main() -> tuple[bool, int, CountingPayer]:
        payer = CountingPayer()
        svc = service(indexed, adapter_for=lambda _: payer)
        work = lambda: jobs.check_run(svc, runs, node, JOB, RUN_AT)  # noqa: E731
        ran = await jobs.run_once(runs, node, JOB, RUN_AT, work)
        runs.away = False
        assert indexed.heartbeat(node)
        return ran, await jobs.resume_interrupted(svc, runs, node), payer

    ran, resumed, payer = asyncio.run(main())
    assert not ran and resumed == 1
    assert sorted(payer.asked.values()) == [1, 1, 1]
    row = _row(indexed)
    assert row.node == node and row.outcome.startswith("ok: 3 checked")
