"""The pull job end to end against a real HTTP FHIR server (the stub), on SQLite and PostgreSQL:
pulled appointments are stored as messages (deduplicated by version), processed and indexed, and
the eligibility job gives a verdict for an appointment no HL7 message ever announced. Each fire
of a schedule shared by two processes pulls once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from engine.adapters.registry import load_routes
from engine.adapters.source import Pulled, SourceError
from engine.flow.process import Processor
from engine.jobs import pull as pulls
from engine.jobs.pull import PullJobs, build_pull_jobs, pull_source
from engine.mappings import Mappings
from engine.metrics import EngineMetrics
from engine.routes.loader import RouteSet
from engine.settings import Settings
from engine.sim.fhir_server import StubFhirServer, running_stub_fhir
from engine.store import SqlMessageStore, create_db_engine
from engine.store.tables import deliveries, job_runs, messages
from tests.jobs.conftest import MONDAY, TIMEZONE, TODAY, service
from tests.jobs.pull_support import appointment, put, seed_alice, seed_many

#: Friday 27 November 2026, 13:00 in New York
NOW = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)


@pytest.fixture
def ehr() -> Iterator[StubFhirServer]:
    with running_stub_fhir() as server:
        yield server


@pytest.fixture
def client(ehr: StubFhirServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ehr.base_url + "/") as c:
        yield c


def _routes(tmp_path: Path, ehr: StubFhirServer, extra: str = "") -> RouteSet:
    site = tmp_path / "routes"
    site.mkdir(exist_ok=True)
    (site / "pull.yaml").write_text(
        f"""
sources:
  clinic:
    type: fhir
    base_url: {ehr.base_url}
    page_size: 2
    every_minutes: 15
    days: 4
{extra}"""
    )
    return load_routes(site, defaults=tmp_path / "none")


def _jobs(store: SqlMessageStore, routes: RouteSet, **kw: Any) -> PullJobs:
    jobs = build_pull_jobs(routes, Settings(timezone=TIMEZONE), store, **kw)
    jobs.clock = lambda: NOW
    return jobs


def _run(jobs: PullJobs, name: str = "clinic") -> pulls.PullCounts:
    async def main() -> pulls.PullCounts:
        try:
            return await jobs.run(name)
        finally:
            await jobs.close()

    return asyncio.run(main())


def _pulled_rows(store: SqlMessageStore) -> list[Any]:
    with store.db_engine.connect() as conn:
        return conn.execute(
            select(messages).where(messages.c.channel == "pull").order_by(messages.c.id)
        ).all()


def test_a_pull_stores_each_appointment_once_and_a_changed_one_again(
    store: SqlMessageStore, ehr: StubFhirServer, client: httpx.Client, tmp_path: Path
) -> None:
    seed_alice(client, MONDAY)
    seed_many(client, TODAY, 3)
    put(client, appointment("too-late", "p1", date(2026, 12, 1)))  # after the 4 days
    routes = _routes(tmp_path, ehr)
    woken: list[int] = []

    first = _run(_jobs(store, routes, on_stored=lambda: woken.append(1)))
    assert (first.pulled, first.new, first.unchanged, first.error) == (4, 4, 0, None)
    assert first.outcome == "ok: pulled 4, new 4, unchanged 0"
    assert woken  # the processor is told at once
    rows = _pulled_rows(store)
    assert len(rows) == 4
    assert {(r.kind, r.peer, r.state, r.message_type) for r in rows} == {
        ("fhir", "clinic", "received", "Bundle")
    }
    assert all(r.dedupe_key.startswith("pull:clinic|Appointment/") for r in rows)

    metrics = EngineMetrics()
    again = _run(_jobs(store, routes, metrics=metrics))
    assert (again.pulled, again.new, again.unchanged) == (4, 0, 4)
    page = metrics.exposition().decode()
    assert 'engine_pulled_appointments_total{outcome="unchanged",source="clinic"} 4.0' in page
    assert 'engine_pulled_appointments_total{outcome="new",source="clinic"} 0.0' in page
    assert len(_pulled_rows(store)) == 4  # nothing stored twice

    put(client, appointment("a1", "p1", MONDAY, hour=11))  # Alice's visit moved
    moved = _run(_jobs(store, routes))
    assert (moved.pulled, moved.new, moved.unchanged) == (4, 1, 3)
    rows = _pulled_rows(store)
    assert len(rows) == 5 and b"T11:00:00" in rows[-1].raw


def test_a_failing_source_is_recorded_and_keeps_what_it_read(
    store: SqlMessageStore, ehr: StubFhirServer, client: httpx.Client, tmp_path: Path
) -> None:
    seed_many(client, TODAY, 3)
    routes = _routes(tmp_path, ehr)
    jobs = _jobs(store, routes, runs=store, node="node-a")
    at = datetime(2026, 11, 27, 18, 15, tzinfo=UTC)

    async def fire() -> None:
        token = pulls._FIRE_TIME.set(at)
        try:
            await jobs._fire("clinic")
        finally:
            pulls._FIRE_TIME.reset(token)

    class Broken:
        name = "clinic"

        async def pull(self, start: date, end: date) -> Any:
            yield Pulled("Appointment/x|1", {"resourceType": "Bundle", "type": "transaction"})
            raise SourceError("clinic: Appointment answered HTTP 503")

        async def close(self) -> None:
            return None

    jobs.sources["clinic"] = Broken()
    asyncio.run(fire())
    with store.db_engine.connect() as conn:
        [run] = conn.execute(select(job_runs)).all()
    assert run.job_id == "pull:clinic" and run.node == "node-a"
    assert run.outcome == (
        "failed: clinic: Appointment answered HTTP 503 (pulled 1, new 1, unchanged 0)"
    )
    assert len(_pulled_rows(store)) == 1  # what came before the failure is kept
    # the next fire tries again, with the real source
    jobs.sources["clinic"] = build_pull_jobs(routes, Settings(), store).sources["clinic"]
    counts = _run(jobs)
    assert counts.error is None and counts.new == 3


def test_a_version_another_process_stored_first_counts_as_unchanged(
    store: SqlMessageStore, ehr: StubFhirServer, client: httpx.Client, tmp_path: Path
) -> None:
    """A pull by hand beside the schedule: the other process inserts the same versions between
    this one's duplicate check and its insert (the unique dedupe key refuses ours); stored
    again, they are duplicates, and the pull goes on."""
    from sqlalchemy.exc import IntegrityError

    seed_many(client, TODAY, 2)
    routes = _routes(tmp_path, ehr)

    class Racing:
        def __init__(self) -> None:
            self.calls = 0
            self.db_engine = store.db_engine

        def save_batch(self, items: list[Any]) -> list[Any]:
            self.calls += 1
            if self.calls == 1:
                store.save_batch(items)  # the other process, first
                raise IntegrityError("INSERT", {}, Exception("ux_messages_dedupe"))
            return store.save_batch(items)

    racing = Racing()
    jobs = _jobs(store, routes)
    jobs.store = racing
    counts = _run(jobs)
    assert (counts.pulled, counts.new, counts.unchanged, counts.error) == (2, 0, 2, None)
    assert racing.calls == 2 and len(_pulled_rows(store)) == 2


def test_an_appointment_that_changes_back_is_stored_again(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    """A source whose version keys digest the content (athena's): booked, cancelled, booked
    again gives the first key again. Stored again all the same (the index holds the
    cancellation from a newer message), so the index and the eligibility job see it booked."""
    url = "https://ehr.example/fhir/Appointment/1"

    def bundle(status: str) -> dict[str, Any]:
        appt = {"resourceType": "Appointment", "id": "1", "status": status}
        appt["start"] = "2026-11-30T09:00:00-05:00"
        return {"resourceType": "Bundle", "type": "transaction",
                "entry": [{"fullUrl": url, "resource": appt}]}  # fmt: skip

    class Digesting:
        name = "digest"
        status = "booked"

        async def pull(self, start: date, end: date) -> Any:
            yield Pulled(f"appointment/1:{self.status}", bundle(self.status))

        async def close(self) -> None:
            return None

    src = Digesting()
    processor = Processor(store, RouteSet(), mappings)

    def pull_and_process(status: str) -> tuple[int, int]:
        src.status = status
        counts = asyncio.run(pull_source(store, "digest", src, TODAY, TODAY))
        while processor.process_batch():
            pass
        return counts.new, counts.unchanged

    assert pull_and_process("booked") == (1, 0)
    assert pull_and_process("booked") == (0, 1)
    assert pull_and_process("cancelled") == (1, 0)
    assert (store.resource(url) or {})["status"] == "cancelled"
    assert pull_and_process("booked") == (1, 0)  # back to booked: stored again
    assert (store.resource(url) or {})["status"] == "booked"
    assert pull_and_process("booked") == (0, 1)  # and then unchanged
    assert len(_pulled_rows(store)) == 3


def test_a_hanging_source_times_out(store: SqlMessageStore) -> None:
    class Hanging:
        name = "slow"

        async def pull(self, start: date, end: date) -> Any:
            await asyncio.sleep(30)
            yield Pulled("x", {})

        async def close(self) -> None:
            return None

    counts = asyncio.run(pull_source(store, "slow", Hanging(), TODAY, TODAY, timeout_s=0.2))
    assert counts.error == "slow: no answer within 0 s" and counts.pulled == 0


def test_a_source_that_breaks_is_named_by_its_error_type_only(
    store: SqlMessageStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Buggy:
        name = "buggy"

        async def pull(self, start: date, end: date) -> Any:
            raise KeyError("TESTPATIENT")  # what a bug's text may quote
            yield Pulled("x", {})

        async def close(self) -> None:
            return None

    counts = asyncio.run(pull_source(store, "buggy", Buggy(), TODAY, TODAY))
    assert counts.error == "buggy: internal error (KeyError)"
    assert "TESTPATIENT" not in counts.outcome
    [logged] = [r for r in caplog.records if r.getMessage() == "pull failed"]
    assert logged.error == "buggy: internal error (KeyError)"  # type: ignore[attr-defined]
    assert "TESTPATIENT" not in caplog.text


def test_two_schedulers_on_one_database_pull_once_per_fire(
    store: SqlMessageStore, ehr: StubFhirServer, client: httpx.Client, tmp_path: Path
) -> None:
    """Two worker processes' schedules (their own stores on one database): both find the
    source due at the same fire time; one pulls, the other skips."""
    seed_many(client, TODAY, 3)
    routes = _routes(tmp_path, ehr)
    other = SqlMessageStore(create_db_engine(store.db_engine.url))
    nodes = [
        _jobs(store, routes, runs=store, node="node-a"),
        _jobs(other, routes, runs=other, node="node-b"),
    ]
    fires = []
    for jobs in nodes:  # every_minutes: the same instants in every process
        trigger = pulls.trigger_for(jobs.specs["clinic"], TIMEZONE)
        assert trigger is not None
        fires.append(trigger.get_next_fire_time(None, datetime.now(UTC)))
    assert fires[0] == fires[1] and fires[0].minute % 15 == 0

    async def main() -> None:
        schedulers = [jobs.start() for jobs in nodes]
        try:
            for sched in schedulers:
                assert sched is not None
                job = sched.get_job("pull:clinic")
                assert job.next_run_time == fires[0]
                sched._lookup_executor("default").submit_job(job, [fires[0]])
            deadline = asyncio.get_running_loop().time() + 10
            while len(_pulled_rows(store)) < 3:
                assert asyncio.get_running_loop().time() < deadline, "the pull did not happen"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # the other submission has had its turn: it skipped
        finally:
            for jobs in nodes:
                await jobs.close()

    asyncio.run(main())
    other.db_engine.dispose()
    requests = [jobs.sources["clinic"].requests for jobs in nodes]  # type: ignore[attr-defined]
    assert sorted(requests) == [0, 2 + 3 * 2]  # one node read two pages and three patients
    with store.db_engine.connect() as conn:
        [run] = conn.execute(select(job_runs)).all()
    assert run.job_id == "pull:clinic" and run.outcome == "ok: pulled 3, new 3, unchanged 0"
    assert run.run_at.replace(tzinfo=UTC) == fires[0]


def test_end_to_end_a_pulled_appointment_gets_an_eligibility_verdict_without_hl7(
    store: SqlMessageStore,
    ehr: StubFhirServer,
    client: httpx.Client,
    tmp_path: Path,
    mappings: Mappings,
) -> None:
    """No HL7 interface: Alice's Monday visit is pulled from the EHR, processed (no route wants
    it: it is only indexed), and the eligibility job asks the stub payer about it."""
    seed_alice(client, MONDAY)
    routes = _routes(tmp_path, ehr)
    counts = _run(_jobs(store, routes))
    assert counts.new == 1
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass
    with store.db_engine.connect() as conn:
        kinds = set(conn.execute(select(messages.c.kind)).scalars())
    assert kinds == {"fhir"}  # no HL7v2 message was ever received
    svc = service(store)
    outcomes = asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    asyncio.run(svc.close())
    [outcome] = outcomes
    assert outcome.status == "eligible" and outcome.payer_id == "60054"
    assert outcome.copay == "25.00" and outcome.deductible_remaining == "650.00"
    assert outcome.patient_url == f"{ehr.base_url}/Patient/p1"
    [row] = store.eligibility_for_day(MONDAY)
    assert row["appointment_url"] == f"{ehr.base_url}/Appointment/a1"

    # cancelled in the EHR: the next pull stores the change and the index follows it
    put(client, appointment("a1", "p1", MONDAY, status="cancelled"))
    assert _run(_jobs(store, routes)).new == 1
    while processor.process_batch():
        pass
    assert svc.targets(MONDAY, 1) == []


def test_a_payer_given_by_identifier_only_is_indexed_as_an_organization(
    store: SqlMessageStore,
    ehr: StubFhirServer,
    client: httpx.Client,
    tmp_path: Path,
    mappings: Mappings,
) -> None:
    """Epic writes Coverage.payor as a logical reference (identifier and display): the index
    makes the payer an Organization the Coverage refers to, and eligibility asks that payer."""
    seed_alice(client, MONDAY)
    coverage = client.get("Coverage/c1").json()
    logical = {"identifier": {"system": "urn:payer", "value": "60054"}, "display": "WESTPEAK"}
    put(client, {**coverage, "payor": [logical]})
    routes = _routes(tmp_path, ehr)
    assert _run(_jobs(store, routes)).new == 1
    [row] = _pulled_rows(store)
    assert b'"reference":"urn:uuid:' not in row.raw  # the message is kept as pulled
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass
    url = f"{ehr.base_url}/Patient/p1"
    [indexed] = store.resources_for_patients("Coverage", [url])[url]
    [payor] = indexed["payor"]
    assert payor["reference"].startswith("urn:uuid:") and payor["identifier"]["value"] == "60054"
    org = store.resource(payor["reference"])
    assert org is not None and org["name"] == "WESTPEAK"
    svc = service(store)
    [outcome] = asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    asyncio.run(svc.close())
    assert (outcome.status, outcome.payer_id) == ("eligible", "60054")


def test_routes_still_take_pulled_bundles_by_resource_type(
    store: SqlMessageStore,
    ehr: StubFhirServer,
    client: httpx.Client,
    tmp_path: Path,
    mappings: Mappings,
) -> None:
    seed_alice(client, MONDAY)
    out = tmp_path / "out"
    routes = _routes(
        tmp_path,
        ehr,
        f"""destinations:
  box: {{type: file, directory: {out}}}
routes:
  - {{name: pulled, match: {{resource_type: [Bundle]}}, mapping: none, destinations: [box]}}
  - {{name: as-siu, match: {{resource_type: [Bundle]}}, mapping: hl7v2, destinations: [box]}}
""",
    )
    _run(_jobs(store, routes))
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass
    [row] = _pulled_rows(store)
    assert row.state == "routed"
    assert store.resource(f"{ehr.base_url}/Coverage/c1") is not None
    with store.db_engine.connect() as conn:
        made = {
            d.route: (d.kind, bytes(d.payload))
            for d in conn.execute(select(deliveries).where(deliveries.c.message_id == row.id))
        }
    assert made["pulled"] == ("fhir-bundle", bytes(row.raw))  # as pulled
    kind, siu = made["as-siu"]
    assert kind == "hl7v2" and b"SIU^S12" in siu and b"PID|1||MRN0001^" in siu
