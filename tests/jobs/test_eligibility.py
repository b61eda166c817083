"""Eligibility end to end, in process: mapped appointments and coverages → 270 → the stub payer
(answering from its synthetic roster) → 271 → a verdict per appointment, stored with history."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

from engine.adapters.payer import PayerSet, load_payers
from engine.adapters.payer.config import PayerConfig
from engine.adapters.payer.memory import MemoryPayer
from engine.adapters.registry import load_routes
from engine.flow.process import Processor
from engine.jobs.eligibility import business_days
from engine.mappings import Mappings
from engine.settings import Settings
from engine.store import Incoming, SqlMessageStore
from tests.jobs.conftest import MONDAY, ROUTES, TODAY, api_client, service


def test_business_days_skip_the_weekend() -> None:
    assert business_days(TODAY, 3) == [TODAY, MONDAY, date(2026, 12, 1)]


def test_the_stub_payer_answers_each_demo_patient(indexed: SqlMessageStore) -> None:
    svc = service(indexed)
    outcomes = asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    asyncio.run(svc.close())
    by_status = {o.status: o for o in outcomes}
    assert sorted(o.status for o in outcomes) == ["eligible", "inactive", "needs_action"]
    eligible = by_status["eligible"]
    assert eligible.copay == "25.00" and eligible.deductible_remaining == "650.00"
    assert "AAA 75" in (by_status["needs_action"].reason or "")
    rows = indexed.eligibility_for_day(MONDAY)
    assert [r["status"] for r in rows] == ["eligible", "inactive", "needs_action"]  # by time
    assert rows[0]["plan"] == "DEMO HEALTH PLAN PPO"
    assert rows[0]["response"] and '"CoverageEligibilityResponse"' in rows[0]["response"]


def test_no_repeat_the_same_day_unless_forced(indexed: SqlMessageStore) -> None:
    payer = MemoryPayer("stub", default=None)
    real = load_payers()
    svc = service(indexed, real)
    first = asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    again = asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    assert all(o.reused for o in again) and {o.check_id for o in again} == {
        o.check_id for o in first
    }
    forced = asyncio.run(svc.check_upcoming(start=MONDAY, days=1, force=True))
    assert not any(o.reused for o in forced)
    assert len(indexed.eligibility_for_day(MONDAY)) == 3  # latest per appointment
    asyncio.run(svc.close())
    assert payer.requests == []


def test_payer_down_is_retried_then_reported_unavailable(indexed: SqlMessageStore) -> None:
    from engine.retry import RetryPolicy

    config = PayerConfig(retry=RetryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0))
    payers = PayerSet(payers={}, default=config, origin={})
    down = MemoryPayer("down")
    down.fail_next(100, retryable=True, detail="timeout")
    svc = service(indexed, payers, adapter_for=lambda payer_id: down)
    outcomes = asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    assert {o.status for o in outcomes} == {"payer_unavailable"}
    assert len(down.requests) == 3 * 3  # three appointments, three attempts each
    rows = indexed.eligibility_for_day(MONDAY)
    assert all(r["attempts"] == 3 for r in rows)
    # unavailable does not count as checked: the next run asks again
    down.fail_next(0)


def test_a_payer_down_check_after_check_is_paused_not_asked_for_every_appointment(
    indexed: SqlMessageStore,
) -> None:
    from engine.retry import RetryPolicy

    config = PayerConfig(retry=RetryPolicy(max_attempts=1, base_delay_s=0, max_delay_s=0))
    payers = PayerSet(payers={}, default=config, origin={})
    down = MemoryPayer("down")
    down.fail_next(100, retryable=True, detail="timeout")
    svc = service(indexed, payers, adapter_for=lambda payer_id: down)
    asyncio.run(svc.check_upcoming(start=MONDAY, days=1))  # three checks, three failures
    again = asyncio.run(svc.check_upcoming(start=MONDAY, days=1, force=True))
    assert len(down.requests) == 5  # the fifth failure in a row opened the breaker
    assert again[-1].reason and again[-1].reason.startswith("not asked")
    paused = asyncio.run(svc.check_upcoming(start=MONDAY, days=1, force=True))
    assert len(down.requests) == 5  # no 270 while the payer is paused
    assert {o.status for o in paused} == {"payer_unavailable"}
    assert all(o.reason and o.reason.startswith("not asked") for o in paused)
    asyncio.run(svc.close())


def test_concurrency_per_payer_is_bounded(indexed: SqlMessageStore) -> None:
    config = PayerConfig(max_concurrency=1)
    payers = PayerSet(payers={}, default=config, origin={})
    slow = MemoryPayer("slow", delay_s=0.02, default=None)
    svc = service(indexed, payers, adapter_for=lambda payer_id: slow)
    asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    assert slow.max_in_flight == 1


def test_api_gives_the_front_desk_list(indexed: SqlMessageStore, tmp_path: Path) -> None:
    svc = service(indexed)
    asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    client, token = api_client(svc, tmp_path, role="viewer")
    with client:
        resp = client.get(
            "/api/eligibility",
            params={"date": MONDAY.isoformat()},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status_code == 200
        body = resp.json()
        assert [r["status"] for r in body] == ["eligible", "inactive", "needs_action"]
        assert body[0]["copay"] == "25.00"
        assert client.get("/api/eligibility", params={"date": "2026-11-30"}).status_code == 401
    asyncio.run(svc.close())


def test_the_schedule_is_kept_in_the_database_and_runs_the_check(
    indexed: SqlMessageStore, tmp_path: Path
) -> None:
    from sqlalchemy import create_engine, text

    from engine.jobs import scheduler as jobs

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    settings = Settings(eligibility_cron="0 18 * * *", timezone="America/New_York")
    svc = service(indexed)
    calls: list[int] = []

    async def main() -> None:
        sched = jobs.start_scheduler(svc, settings, url)
        try:
            job = sched.get_job("eligibility-nightly")
            assert job is not None and str(job.trigger).startswith("cron[")
            assert job.next_run_time.hour == 18
            # the job function the schedule calls runs the checks
            real = svc.check_upcoming

            async def counted(**kw: object) -> list[object]:
                calls.append(1)
                return list(await real(start=MONDAY, days=1))

            svc.check_upcoming = counted  # type: ignore[method-assign]
            await jobs.nightly_eligibility()
        finally:
            sched.shutdown(wait=False)

    asyncio.run(main())
    assert calls == [1]
    assert len(indexed.eligibility_for_day(MONDAY)) == 3
    db = create_engine(url)
    with db.connect() as conn:  # persistent: the job is a row in the engine's database
        ids = [r[0] for r in conn.execute(text("SELECT id FROM scheduled_jobs"))]
    db.dispose()
    assert ids == ["eligibility-nightly"]


def test_each_270_has_its_own_control_number(indexed: SqlMessageStore) -> None:
    config = PayerConfig(max_concurrency=1)
    payers = PayerSet(payers={}, default=config, origin={})
    payer = MemoryPayer("one", delay_s=0.01, default=None)
    svc = service(indexed, payers, adapter_for=lambda payer_id: payer)
    asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    isa13 = [r.split("*")[13] for r in payer.requests]
    assert len(isa13) == 3 and len(set(isa13)) == 3


def test_a_payer_without_configuration_is_needs_action_not_a_crash(
    indexed: SqlMessageStore,
) -> None:
    svc = service(indexed, PayerSet(payers={}, default=None, origin={}))
    outcomes = asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    assert [o.status for o in outcomes] == ["needs_action"] * 3
    assert "no payer configured" in (outcomes[0].reason or "")


def test_a_self_pay_coverage_is_not_sent_to_a_payer(
    indexed: SqlMessageStore, mappings: Mappings, tmp_path: Path
) -> None:
    """A DFT without IN1 makes a self-pay Coverage whose payor is the Patient (issue 9): there is
    no payer to ask, so it adds no check (the patient's insured coverages still are checked)."""
    svc = service(indexed)
    before = svc.targets(MONDAY, 1)
    patient = before[0].patient
    (mrn,) = [i for i in patient["identifier"] if i["type"]["coding"][0]["code"] == "MR"]
    authority = mrn["system"].removeprefix("urn:engine:identifier:")
    dft = (
        "MSH|^~\\&|PMS|CLINIC|ENGINE|HUB|20261127090000||DFT^P03|SELFPAY1|P|2.5.1\r"
        "EVN|P03|20261127090000\r"
        f"PID|1||{mrn['value']}^^^{authority}^MR||Doe^Pat\r"
        "FT1|1|||20261127||CG|99213^Visit^CPT|||1|110.00\r"
    )
    indexed.save_batch([Incoming(raw=dft.encode(), channel="test")])
    (tmp_path / "dft-routes").mkdir()
    (tmp_path / "dft-routes" / "r.yaml").write_text(ROUTES.replace("[ADT, SIU]", "[DFT]"))
    processor = Processor(indexed, load_routes(defaults=tmp_path / "dft-routes"), mappings)
    while processor.process_batch():
        pass
    coverages = indexed.resources_for_patients("Coverage", [url := patient["_full_url"]])[url]
    assert any(c.get("type", {}).get("coding", [{}])[0].get("code") == "pay" for c in coverages)
    after = svc.targets(MONDAY, 1)
    assert len(after) == len(before)
    assert all(t.payer["resourceType"] == "Organization" for t in after)
