"""A node that stood still long enough to be taken for dead, and wakes while another node has
resumed its run, neither sends a 270 the new owner sent nor closes its run: an item is started,
and a run ended, only by the node holding the run, checked in the write's own transaction.
Before, the woken node went on with its old idea of what was left, and both nodes asked the
payer about the same member (review of 7 December). On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from sqlalchemy import select, update

from engine.jobs import scheduler as jobs
from engine.jobs.targets import payer_id
from engine.store import SqlMessageStore
from engine.store.eligibility import RunItem
from engine.store.nodes import RunTakenOver
from engine.store.tables import job_runs
from tests.jobs.conftest import MONDAY, service
from tests.jobs.leader_support import HeldPayer

#: the nightly run's fire time: Friday 27 November 2026, 18:00 in New York
RUN_AT = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
JOB = "eligibility-nightly"
#: an item's digest (64 hex digits)
ITEM = "ab" * 32


def _row(store: SqlMessageStore) -> Any:
    with store.db_engine.connect() as conn:
        return conn.execute(select(job_runs)).one()


class _OneAtATime(asyncio.Semaphore):
    """Node A's turn at the payer, one check at a time; ``queued`` is set once ``checks`` have
    come to it (each past its reads of what is done and what is in flight)."""

    def __init__(self, checks: int) -> None:
        super().__init__(1)
        self.checks = checks
        self.queued = asyncio.Event()

    async def acquire(self) -> Literal[True]:
        self.checks -= 1
        if self.checks == 0:
            self.queued.set()
        return await super().acquire()


def test_a_node_that_stood_still_sends_no_270_its_run_s_new_owner_sent(
    indexed: SqlMessageStore,
) -> None:
    """Node A's first 270 is out, slow to be answered; its two other checks wait for their
    turn at the payer. A stands still (its heartbeat ages: it has no row here), node B resumes
    the run and checks those two. A wakes: its first answer comes back, and its next check is
    refused before its 270 goes out. Each member asked once; B's end of the run stands."""

    async def main() -> tuple[HeldPayer, Any]:
        payer = HeldPayer()
        a = service(indexed, adapter_for=lambda _: payer)
        b = service(indexed, adapter_for=lambda _: payer)
        targets = a.targets(MONDAY, 1)
        turn = a._limits[payer_id(targets[0].payer)] = _OneAtATime(len(targets))
        work = lambda: jobs.check_run(a, indexed, "node-a", JOB, RUN_AT)  # noqa: E731
        ran = asyncio.create_task(jobs.run_once(indexed, "node-a", JOB, RUN_AT, work))
        await payer.held.wait()
        await turn.queued.wait()
        assert await jobs.resume_interrupted(b, indexed, "node-b") == 1
        b_end = _row(indexed)
        payer.answer.set()  # A wakes
        assert await ran
        return payer, b_end

    payer, b_end = asyncio.run(main())
    assert sorted(payer.asked.values()) == [1, 1, 1]  # not [1, 1, 2]
    assert b_end.node == "node-b" and b_end.finished_at is not None
    assert b_end.outcome.startswith("ok: 3 checked")
    assert _row(indexed) == b_end  # A's late end did not replace B's


def test_a_late_end_or_item_of_the_node_that_lost_its_run_is_refused(
    store: SqlMessageStore,
) -> None:
    """Node A (no row: dead) loses its run to node B: A's late end does not close B's run, A
    cannot start an item of it; B can do both."""
    assert store.start_job_run(JOB, RUN_AT, "node-a")
    [run] = store.interrupted_runs("eligibility")
    assert store.resume_job_run(run, "node-b")
    assert not store.finish_job_run(JOB, RUN_AT, "ok: 3 checked", "node-a")
    row = _row(store)
    assert row.node == "node-b" and row.finished_at is None and row.outcome == "resumed"
    with pytest.raises(RunTakenOver):
        store.start_run_item(RunItem(JOB, RUN_AT, ITEM, "node-a"))
    assert store.job_run_items_done(JOB, RUN_AT) == {}
    assert store.start_run_item(RunItem(JOB, RUN_AT, ITEM, "node-b"))
    assert not store.start_run_item(RunItem(JOB, RUN_AT, ITEM, "node-b"))  # started once
    assert store.finish_job_run(JOB, RUN_AT, "ok: 1 checked", "node-b")
    with pytest.raises(RunTakenOver):  # a finished run is nobody's to go on with
        store.start_run_item(RunItem(JOB, RUN_AT, "cd" * 32, "node-b"))


def test_an_item_started_as_its_run_is_taken_over_waits_and_is_refused(
    store: SqlMessageStore,
) -> None:
    """PostgreSQL: node B's takeover is made and not yet committed when node A starts an item.
    A's start waits for it and is then refused; a check that read the run's owner before B
    committed would have started the item, its 270 sent after B read what the run had done."""
    if store.db_engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writers take turns: the takeover and the start cannot overlap")
    assert store.start_job_run(JOB, RUN_AT, "node-a")
    outcome: list[object] = []

    def start() -> None:
        try:
            outcome.append(store.start_run_item(RunItem(JOB, RUN_AT, ITEM, "node-a")))
        except RunTakenOver as exc:
            outcome.append(exc)

    with store.db_engine.connect() as b:
        b.execute(update(job_runs).values(node="node-b", outcome="resumed"))
        a = threading.Thread(target=start)
        a.start()
        a.join(0.5)
        b.commit()
    a.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], RunTakenOver)
    assert store.job_run_items_done(JOB, RUN_AT) == {}
