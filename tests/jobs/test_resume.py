"""An eligibility run interrupted on a node that died is resumed by the leader and finished
without a second 270 for an appointment the dead node checked: each check is recorded as an
item of its run (``job_run_items``) in the check's own transaction. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import func, select

from engine.adapters.payer import load_payers
from engine.jobs import scheduler as jobs
from engine.jobs.eligibility import EligibilityService, RunProgress
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.tables import eligibility_checks, job_run_items, job_runs
from tests.jobs.conftest import MONDAY, TIMEZONE, service
from tests.jobs.leader_support import CountingPayer

#: the nightly run's fire time: Friday 27 November 2026, 18:00 in New York
RUN_AT = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
JOB = "eligibility-nightly"


def _count(store: SqlMessageStore, table: object) -> int:
    with store.db_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_a_run_its_node_left_unfinished_is_resumed_without_asking_twice(
    indexed: SqlMessageStore,
) -> None:
    payer = CountingPayer()
    # the dead node's part: the run claimed, one appointment checked (as one of its items)
    assert indexed.start_job_run(JOB, RUN_AT, "dead-node")
    dead = service(indexed, adapter_for=lambda _: payer)
    [first, *rest] = dead.targets(MONDAY, 1)
    progress = RunProgress(JOB, RUN_AT, "dead-node", {})
    asyncio.run(dead.check(first, item=progress.item(first.key)))
    assert sum(payer.asked.values()) == 1 and len(rest) == 2
    # the next morning (Saturday, New York): no check counts as "today's" any more, so only the
    # run's items keep the first appointment from being asked again
    leader = EligibilityService(
        indexed,
        load_payers(),
        Settings(timezone=TIMEZONE),
        adapter_for=lambda _: payer,
        clock=lambda: datetime(2026, 11, 28, 14, 0, tzinfo=UTC),
    )
    [run] = indexed.interrupted_runs("eligibility")
    assert (run.job_id, run.node) == (JOB, "dead-node")

    assert asyncio.run(jobs.resume_interrupted(leader, indexed, "leader-node")) == 1
    assert sorted(payer.asked.values()) == [1, 1, 1]  # each appointment asked once in all
    assert _count(indexed, eligibility_checks) == 3
    assert _count(indexed, job_run_items) == 3
    with indexed.db_engine.connect() as conn:
        row = conn.execute(select(job_runs)).one()
    assert row.node == "leader-node" and row.finished_at is not None
    # 3 appointments, one of them already checked by the dead node's part
    assert row.outcome.startswith("ok: 3 checked") and "already_checked 1" in row.outcome
    # finished: nothing left to resume, nothing asked again
    assert indexed.interrupted_runs("eligibility") == []
    assert asyncio.run(jobs.resume_interrupted(leader, indexed, "leader-node")) == 0
    assert sum(payer.asked.values()) == 3


def test_a_270_in_flight_when_its_node_died_is_not_sent_again(indexed: SqlMessageStore) -> None:
    """The dead node had sent one appointment's 270 (its item recorded as started) and died
    before the answer: the resumed run does not ask the payer a second time about it; the
    appointment gets ``needs_action`` with the reason, the others are checked."""
    payer = CountingPayer()
    assert indexed.start_job_run(JOB, RUN_AT, "dead-node")
    dead = service(indexed, adapter_for=lambda _: payer)
    [first, *rest] = dead.targets(MONDAY, 1)
    indexed.start_run_item(RunProgress(JOB, RUN_AT, "dead-node", {}).item(first.key))
    leader = EligibilityService(
        indexed,
        load_payers(),
        Settings(timezone=TIMEZONE),
        adapter_for=lambda _: payer,
        clock=lambda: datetime(2026, 11, 28, 14, 0, tzinfo=UTC),
    )
    assert asyncio.run(jobs.resume_interrupted(leader, indexed, "leader-node")) == 1
    # (its 270 went out from the dead node; no answer was recorded)
    assert sorted(payer.asked.values()) == [1, 1] and len(rest) == 2  # only the two others
    with indexed.db_engine.connect() as conn:
        checks = conn.execute(select(eligibility_checks).order_by(eligibility_checks.c.id)).all()
        items = conn.execute(select(job_run_items)).all()
    interrupted = [c for c in checks if "not asked twice" in (c.reason or "")]
    assert len(checks) == 3 and len(interrupted) == 1
    assert interrupted[0].status == "needs_action"
    assert interrupted[0].patient_url == first.patient["_full_url"]
    assert all(i.result_id is not None and i.done_at is not None for i in items)
    assert len(items) == 3


def test_a_new_run_before_the_resume_does_not_resend_a_270_in_flight(
    indexed: SqlMessageStore,
) -> None:
    """A new leader's run at start comes before the dead node's run is resumed (that waits for
    the node's heartbeat to age): it finds the appointment whose 270 the dead node sent, its
    answer never recorded, and gives it ``needs_action`` instead of asking the payer again (the
    fault campaign's kill-leader scenario found 3 of 105 270s sent twice that way). The resume
    after it asks nobody again either."""
    payer = CountingPayer()
    assert indexed.start_job_run(JOB, RUN_AT, "dead-node")
    svc = service(indexed, adapter_for=lambda _: payer)
    [first, *rest] = svc.targets(MONDAY, 1)
    indexed.start_run_item(RunProgress(JOB, RUN_AT, "dead-node", {}).item(first.key))
    # the new leader's start-up run, the same day, a run of its own (claimed, then ended)
    start_run = RunProgress(
        "eligibility-start", datetime(2026, 11, 27, 17, 55, tzinfo=UTC), "n2", {}
    )
    assert indexed.start_job_run(start_run.job_id, start_run.run_at, "n2")
    outcomes = asyncio.run(svc.check_upcoming(start=MONDAY, days=1, run=start_run))
    assert indexed.finish_job_run(start_run.job_id, start_run.run_at, "ok", "n2")
    assert sorted(payer.asked.values()) == [1, 1] and len(rest) == 2  # the two others only
    [in_flight] = [o for o in outcomes if o.patient_url == first.patient["_full_url"]]
    assert in_flight.status == "needs_action" and "not asked twice" in (in_flight.reason or "")
    # then the dead node's run is resumed: nothing is asked again
    assert asyncio.run(jobs.resume_interrupted(svc, indexed, "n2")) == 1
    assert sum(payer.asked.values()) == 2
    # a forced check (the front desk's re-check) still asks
    asyncio.run(svc.check(first, force=True))
    assert sum(payer.asked.values()) == 3


def test_a_live_node_s_run_is_not_resumed(indexed: SqlMessageStore) -> None:
    node = indexed.register_node("worker")
    assert indexed.start_job_run(JOB, RUN_AT, node)
    assert indexed.interrupted_runs("eligibility") == []


def test_a_run_given_back_is_resumed_at_once_and_by_one_node(indexed: SqlMessageStore) -> None:
    """A leader stepping down gives its run back (alive, its node's heartbeat fresh): the next
    leader resumes it without waiting for that node to be found dead; two nodes looking at once
    resume it once."""
    node = indexed.register_node("worker")
    assert indexed.start_job_run(JOB, RUN_AT, node)
    indexed.give_back_job_run(JOB, RUN_AT, node)
    [run] = indexed.interrupted_runs("eligibility")
    assert indexed.resume_job_run(run, "a") is True
    assert indexed.resume_job_run(run, "b") is False


def test_a_cancelled_run_is_given_back(indexed: SqlMessageStore) -> None:
    """The leader's jobs cancelled (leadership lost): the run is left unfinished and nobody's."""
    node = indexed.register_node("worker")

    async def main() -> None:
        started = asyncio.Event()

        async def work() -> str:
            started.set()
            await asyncio.sleep(30)
            return "ok"

        task = asyncio.create_task(jobs.run_once(indexed, node, JOB, RUN_AT, work))
        await started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    [run] = indexed.interrupted_runs("eligibility")
    assert run.node == "" and run.job_id == JOB
