"""A 270 in flight for one appointment of a patient keeps another appointment of the same patient
and payer from being asked too (issue 14): the payer answers about the member, not the visit, so
a second 270 would ask it the same question twice. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.adapters.registry import load_routes
from engine.flow.process import Processor
from engine.jobs import scheduler as jobs
from engine.jobs.eligibility import RunProgress
from engine.mappings import Mappings
from engine.sim.demo import PATIENTS, demo_messages
from engine.store import Incoming, SqlMessageStore
from tests.jobs.conftest import MONDAY, TODAY, service
from tests.jobs.leader_support import CountingPayer

#: the interrupted run (the dead node's) and the new leader's run at start, the same day
DEAD = RunProgress("eligibility-nightly", datetime(2026, 11, 27, 15, 0, tzinfo=UTC), "dead", {})
START = RunProgress("eligibility-start", datetime(2026, 11, 27, 17, 55, tzinfo=UTC), "n2", {})
#: Ana Rivera, the first demo patient: her member id with the demo payer
MRN, MEMBER = PATIENTS[0][0], PATIENTS[0][-1]


@pytest.fixture
def two_visits(indexed: SqlMessageStore, mappings: Mappings, tmp_path: Path) -> SqlMessageStore:
    """The demo's world and a second appointment for Ana Rivera on Monday, at 14:00."""
    siu = [raw for _, raw in demo_messages(TODAY) if b"SIU^S12" in raw and MRN.encode() in raw][0]
    for old, new in ((f"-{MRN}", f"-{MRN}B"), ("093000", "143000"), ("090000", "140000")):
        siu = siu.replace(old.encode(), new.encode())
    indexed.save_batch([Incoming(raw=siu, channel="test")])
    processor = Processor(indexed, load_routes(defaults=tmp_path / "routes"), mappings)
    while processor.process_batch():
        pass
    return indexed


def _hers(store: SqlMessageStore) -> list[Any]:
    """Her two checks (Monday 9:00, 14:00) among the four of the day."""
    targets = service(store).targets(MONDAY, 1)
    hers = [t for t in targets if MRN in str(t.patient.get("identifier"))]
    assert len(targets) == 4 and len(hers) == 2 and hers[0].key != hers[1].key
    return hers


def test_another_appointment_of_a_member_whose_270_is_in_flight_is_not_asked(
    two_visits: SqlMessageStore,
) -> None:
    """The dead node's 270 for her 9:00 visit is out, its answer never recorded; the new
    leader's run comes to her 14:00 visit first: no 270 (the same member, the same payer), the
    front desk told to check her coverage by hand."""
    payer = CountingPayer()
    svc = service(two_visits, adapter_for=lambda _: payer)
    first, second = _hers(two_visits)
    assert two_visits.start_job_run(DEAD.job_id, DEAD.run_at, DEAD.node)
    two_visits.start_run_item(DEAD.item(first.key))
    outcome = asyncio.run(svc.check(second, item=START.item(second.key)))
    assert payer.asked[MEMBER] == 0
    assert outcome.status == "needs_action" and "not asked twice" in (outcome.reason or "")
    assert "this patient with this payer" in (outcome.reason or "")


def test_a_new_run_asks_nothing_about_her_and_the_resume_after_it_neither(
    two_visits: SqlMessageStore,
) -> None:
    """The whole new run (both her visits, the two other patients), then the dead node's run
    resumed: her member is never asked again, the others once each; a forced check still asks."""
    payer = CountingPayer()
    svc = service(two_visits, adapter_for=lambda _: payer)
    first, second = _hers(two_visits)
    assert two_visits.start_job_run(DEAD.job_id, DEAD.run_at, DEAD.node)
    two_visits.start_run_item(DEAD.item(first.key))
    assert two_visits.start_job_run(START.job_id, START.run_at, START.node)
    outcomes = asyncio.run(svc.check_upcoming(start=MONDAY, days=1, run=START))
    assert two_visits.finish_job_run(START.job_id, START.run_at, "ok", START.node)
    assert payer.asked[MEMBER] == 0 and sum(payer.asked.values()) == 2
    mine = [o for o in outcomes if o.patient_url == first.patient["_full_url"]]
    assert len(mine) == 2 and all(o.status == "needs_action" for o in mine)
    assert asyncio.run(jobs.resume_interrupted(svc, two_visits, "n2")) == 1
    assert payer.asked[MEMBER] == 0 and sum(payer.asked.values()) == 2
    asyncio.run(svc.check(second, force=True))
    assert payer.asked[MEMBER] == 1


def test_her_two_visits_in_one_run_are_one_270(two_visits: SqlMessageStore) -> None:
    """Nothing in flight: one run with both her visits asks the payer about her once, the other
    visit given that answer (the "checked today" rule), not a second 270 beside the first."""
    payer = CountingPayer()
    svc = service(two_visits, adapter_for=lambda _: payer)
    assert two_visits.start_job_run(START.job_id, START.run_at, START.node)
    outcomes = asyncio.run(svc.check_upcoming(start=MONDAY, days=1, run=START))
    assert payer.asked[MEMBER] == 1 and sum(payer.asked.values()) == 3
    her = _hers(two_visits)[0].patient["_full_url"]
    mine = [o for o in outcomes if o.patient_url == her]
    assert [o.status for o in mine] == ["eligible", "eligible"]
    assert sorted(o.reused for o in mine) == [False, True]


def test_once_answered_her_other_visit_is_given_the_answer(two_visits: SqlMessageStore) -> None:
    """The item of another run that got its answer is not in flight: her other visit is given
    that answer ("checked today"), not ``needs_action``."""
    payer = CountingPayer()
    svc = service(two_visits, adapter_for=lambda _: payer)
    first, second = _hers(two_visits)
    assert two_visits.start_job_run(DEAD.job_id, DEAD.run_at, DEAD.node)
    asyncio.run(svc.check(first, item=DEAD.item(first.key)))
    outcome = asyncio.run(svc.check(second, item=START.item(second.key)))
    assert payer.asked[MEMBER] == 1
    assert outcome.status == "eligible" and outcome.reused


def test_an_item_an_earlier_version_started_is_still_found(two_visits: SqlMessageStore) -> None:
    """A run interrupted before the upgrade stored its item as 64 digits of the check (no
    member): a new run still finds that 270 in flight, and the resumed run knows the item."""
    payer = CountingPayer()
    svc = service(two_visits, adapter_for=lambda _: payer)
    first, second = _hers(two_visits)
    parts = (first.appointment_url, first.patient["_full_url"], first.coverage["_full_url"])
    legacy = hashlib.sha256("\x1f".join((*parts, "DEMOPAY")).encode()).hexdigest()
    assert legacy[:32] == first.key[:32] and legacy != first.key
    assert two_visits.start_job_run(DEAD.job_id, DEAD.run_at, DEAD.node)
    two_visits.start_run_item(DEAD.item(legacy))
    asyncio.run(svc.check(first, item=START.item(first.key)))
    assert payer.asked[MEMBER] == 0  # the same check: found by its first 32 digits
    assert asyncio.run(jobs.resume_interrupted(svc, two_visits, "n2")) == 1
    assert payer.asked[MEMBER] == 0 and sum(payer.asked.values()) == 2
    done = two_visits.job_run_items_done(DEAD.job_id, DEAD.run_at)
    assert legacy in done and done[legacy] is not None and first.key not in done


def test_the_resumed_run_does_not_ask_about_her_other_visit_either(
    two_visits: SqlMessageStore,
) -> None:
    """The dead node's 270 was for her 14:00 visit; its run, resumed, comes to her 9:00 visit
    first (nothing recorded for her yet): not asked, the same as the visit whose 270 was out."""
    payer = CountingPayer()
    svc = service(two_visits, adapter_for=lambda _: payer)
    first, second = _hers(two_visits)
    assert two_visits.start_job_run(DEAD.job_id, DEAD.run_at, DEAD.node)
    two_visits.start_run_item(DEAD.item(second.key))
    assert asyncio.run(jobs.resume_interrupted(svc, two_visits, "n2")) == 1
    assert payer.asked[MEMBER] == 0 and sum(payer.asked.values()) == 2
    done = two_visits.job_run_items_done(DEAD.job_id, DEAD.run_at)
    assert len(done) == 4 and all(r is not None for r in done.values())
