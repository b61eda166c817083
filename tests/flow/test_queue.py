"""The queue end to end, in process: ingest → processor → dispatcher, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.flow.deliver import Dispatcher
from engine.flow.gate import RouteGate
from engine.flow.ingest import Ingest
from engine.flow.process import Processor
from engine.hl7v2.codec import parse_message
from engine.mappings import Mappings, load_mappings
from engine.routes.loader import RouteSet
from engine.routes.router import Router
from engine.store import Incoming, SqlMessageStore
from tests.conftest import a_newer_message

ROUTES = """
destinations:
  fhir:
    type: file
    directory: {tmp}/fhir
    retry: {{max_attempts: 3, base_delay_s: 0, max_delay_s: 0}}
  raw:
    type: file
    directory: {tmp}/raw
    retry: {{max_attempts: 2, base_delay_s: 0, max_delay_s: 0}}
routes:
  - name: all-to-fhir
    match: {{message: [ADT, SIU]}}
    mapping: fhir
    destinations: [fhir]
  - name: adt-raw
    match: {{message: [ADT]}}
    mapping: none
    destinations: [raw]
"""

MSG = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A08|C{n}|P|2.5.1\r"
    "EVN|A08|20260102030405\rPID|1||{mrn}^^^CLINIC^MR||Testpatient^Alice||19800101|F\rPV1|1|O\r"
)


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


@pytest.fixture
def routes(tmp_path: Path) -> RouteSet:
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "test.yaml").write_text(ROUTES.format(tmp=tmp_path))
    return load_routes(defaults=folder)


def msg(n: int, mrn: str = "MRN1") -> bytes:
    return MSG.format(n=n, mrn=mrn).encode()


async def pipeline(
    store: SqlMessageStore,
    routes: RouteSet,
    mappings: Mappings,
    dests: dict[str, MemoryDestination],
    *,
    linger_s: float = 0.0,
) -> tuple[Ingest, Processor, Dispatcher]:
    """A started ingest, a processor and a dispatcher on ``store``, wired as a worker wires
    them (a stored message wakes the processor, a routed one the dispatcher); not yet run."""
    ingest = Ingest(store, routes=RouteGate(Router(routes), mappings))
    await ingest.start()
    processor = Processor(store, routes, mappings, idle_s=0.02, linger_s=linger_s)
    dispatcher = Dispatcher(store, routes, dests, idle_s=0.02)
    processor.on_routed = dispatcher.wake
    ingest.on_stored = processor.wake
    return ingest, processor, dispatcher


def run_all(
    store: SqlMessageStore,
    routes: RouteSet,
    mappings: Mappings,
    dests: dict[str, MemoryDestination],
    raws: list[bytes],
    *,
    settle: float = 1.5,
) -> list[bytes | None]:
    async def main() -> list[bytes | None]:
        stop = asyncio.Event()
        ingest, processor, dispatcher = await pipeline(store, routes, mappings, dests)
        tasks = [
            asyncio.create_task(processor.run(stop)),
            asyncio.create_task(dispatcher.run(stop)),
        ]
        acks = [(await ingest.receive(r, channel="test")).ack for r in raws]
        deadline = asyncio.get_running_loop().time() + settle
        while asyncio.get_running_loop().time() < deadline:
            counts = await asyncio.to_thread(store.counts)
            if (
                not counts.get("received")
                and not counts.get("processing")
                and not counts.get("deliveries_pending")
            ):
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*tasks)
        await ingest.stop()
        return acks

    return asyncio.run(main())


def test_routed_mapped_and_delivered(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    dests = {"fhir": MemoryDestination("fhir"), "raw": MemoryDestination("raw")}
    acks = run_all(store, routes, mappings, dests, [msg(1), msg(2, "MRN2")])
    assert [parse_message(a or b"").get("MSA-1") for a in acks] == ["AA", "AA"]
    [second, first] = store.list()
    for rec in (first, second):
        assert rec.state == "delivered"
        assert {d.destination: d.state for d in store.get(rec.id).deliveries} == {
            "fhir": "delivered",
            "raw": "delivered",
        }
    bundle = orjson.loads(dests["fhir"].received(first.id)[0].body)
    assert bundle["type"] == "transaction"
    assert dests["raw"].received(first.id)[0].body == msg(1)


def test_unsupported_trigger_is_refused_before_the_ack(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    # an SIU only the mapping route takes (an ADT^A02 goes to adt-raw: test_pass_through.py)
    raw = msg(3).replace(b"ADT^A08", b"SIU^S99")
    [ack] = run_all(store, routes, mappings, {}, [raw], settle=0.2)
    nak = parse_message(ack or b"")
    assert nak.get("MSA-1") == "AR" and nak.get("ERR-3.1") == "201"
    [rec] = store.list()
    assert rec.state == "error" and "SIU^S99" in (rec.reason or "")
    assert store.raw(rec.id) == raw


def test_retry_then_delivered_and_dead_letter(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    fhir, raw = MemoryDestination("fhir"), MemoryDestination("raw")
    fhir.fail_next(2, retryable=True, detail="503")  # 3 attempts allowed: delivered on the third
    raw.fail_next(5, retryable=True, detail="503")  # 2 attempts allowed: dead-lettered
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [msg(4)])
    [rec] = store.list()
    states = {d.destination: (d.state, d.attempts) for d in store.get(rec.id).deliveries}
    assert states == {"fhir": ("delivered", 3), "raw": ("dead", 2)}
    assert rec.state == "dead"


def test_permanent_refusal_is_dead_at_once(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    fhir, raw = MemoryDestination("fhir"), MemoryDestination("raw")
    fhir.fail_next(1, retryable=False, detail="400 Bad Request")
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [msg(5)])
    [rec] = store.list()
    [d] = [d for d in store.get(rec.id).deliveries if d.destination == "fhir"]
    assert (d.state, d.attempts, d.last_error) == ("dead", 1, "400 Bad Request")


def test_order_is_kept_per_patient(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    fhir, raw = MemoryDestination("fhir", delay_s=0.01), MemoryDestination("raw")
    fhir.fail_next(1, retryable=True, detail="503")  # the first message is retried...
    raws = [msg(10 + i, mrn="SAME") for i in range(5)]
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, raws, settle=3)
    # ...and the later ones for the same patient waited for it
    assert [p.control_id for p in fhir.attempts] == ["C10"] + [f"C{10 + i}" for i in range(5)]
    assert [p.control_id for p in fhir.delivered] == [f"C{10 + i}" for i in range(5)]


def test_retention_never_purges_undelivered(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    fhir, raw = MemoryDestination("fhir"), MemoryDestination("raw")
    raw.fail_next(5, retryable=False, detail="refused")
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [msg(20)])
    run_all(store, routes, mappings, {"fhir": fhir, "raw": MemoryDestination("raw")}, [msg(21)])
    from datetime import timedelta

    assert {r.state for r in store.list()} == {"dead", "delivered"}
    newer = a_newer_message(store)
    assert store.purge_range(timedelta(seconds=-1)).rows == 1
    assert [r.state for r in store.list() if r.id != newer] == ["dead"]


def test_retention_purges_a_replayed_original_once_its_copy_is_delivered(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    from datetime import timedelta

    from engine.store import Who

    fhir, raw = MemoryDestination("fhir"), MemoryDestination("raw")
    raw.fail_next(5, retryable=False, detail="refused")
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [msg(22)])
    [dead] = store.list()
    assert dead.state == "dead"
    copy = store.replay_message(dead.id, Who("tester", "cli"))
    # the copy is not processed yet: the original is kept
    assert store.purge_range(timedelta(seconds=-1)).rows == 0
    run_all(store, routes, mappings, {"fhir": fhir, "raw": MemoryDestination("raw")}, [])
    states = {r.id: r.state for r in store.list()}
    assert states == {dead.id: "replayed", copy.message_id: "delivered"}
    # the copy goes this run; its original, whose copy was delivered, too
    newer = a_newer_message(store)
    assert store.purge_range(timedelta(seconds=-1)).rows == 2
    assert [r.id for r in store.list()] == [newer]


@pytest.mark.postgres
def test_two_processors_share_the_queue_and_process_each_message_once(
    postgres_schema_url: str, routes: RouteSet, mappings: Mappings
) -> None:
    """Two engine processes on one PostgreSQL: FOR UPDATE SKIP LOCKED gives each message to one."""
    import threading

    from engine.store import create_db_engine

    db = create_db_engine(postgres_schema_url)
    store = SqlMessageStore(db)
    store.migrate()
    try:
        asyncio.run(_ingest_many(store, routes, mappings, 120))
        taken: dict[str, list[int]] = {"a": [], "b": []}

        def work(name: str) -> None:
            proc = Processor(store, routes, mappings, worker=name, batch=7)
            real = store.claim_received

            def claim(worker: str, limit: int = 100) -> list[tuple[int, bytes, str]]:
                got = real(worker, limit)
                taken[name] += [mid for mid, _, _ in got]
                return got

            proc.store = type(
                "S", (), {"claim_received": staticmethod(claim), "finish_batch": store.finish_batch}
            )()  # type: ignore[assignment]
            while proc.process_batch():
                pass

        threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert taken["a"] and taken["b"]  # both worked
        assert not set(taken["a"]) & set(taken["b"])  # never the same message
        assert len(taken["a"]) + len(taken["b"]) == 120
        assert store.counts().get("routed") == 120
    finally:
        from engine.store.tables import metadata

        metadata.drop_all(db)
        with db.begin() as conn:
            from sqlalchemy import text

            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.dispose()


async def _ingest_many(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, n: int
) -> None:
    ingest = Ingest(store, routes=RouteGate(Router(routes), mappings))
    await ingest.start()
    try:
        await asyncio.gather(
            *(ingest.receive(msg(1000 + i, f"P{i}"), channel="t") for i in range(n))
        )
    finally:
        await ingest.stop()


def test_mapped_resources_are_indexed_for_the_jobs(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    from datetime import UTC, datetime

    from tests.conftest import FIXTURES

    adt = (FIXTURES / "hl7" / "adt_a01.hl7").read_bytes()
    s12 = (FIXTURES / "hl7" / "siu_s12.hl7").read_bytes()
    s15 = (FIXTURES / "hl7" / "siu_s15.hl7").read_bytes()
    dests = {"fhir": MemoryDestination("fhir"), "raw": MemoryDestination("raw")}
    run_all(store, routes, mappings, dests, [adt, s12, s15])
    appointments = store.appointments_between(
        datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    )
    statuses = sorted(a["status"] for a in appointments)
    assert statuses  # SIU fixtures make appointments
    assert all(a["resourceType"] == "Appointment" for a in appointments)
    patient_url = next(
        e["fullUrl"]
        for e in mappings.to_fhir(parse_message(adt))["entry"]
        if e["resource"]["resourceType"] == "Patient"
    )
    [coverage] = store.resources_for_patients("Coverage", [patient_url])[patient_url]
    assert coverage["subscriberId"] == "XQZ123456789"
    payer = store.resource(coverage["payor"][0]["reference"])
    assert payer is not None and payer["name"] == "Example Blue Cross"


def test_processor_uses_the_configured_default_charset(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    raw = msg(60).replace(b"Alice", "Ren\u00e9e".encode("latin-1"))
    store.save_batch([Incoming(raw=raw, channel="t")])
    Processor(store, routes, mappings, default_charset="latin-1").process_batch()
    [rec] = store.list()
    assert rec.state == "routed", rec.reason


def test_an_outcome_whose_claim_was_taken_back_is_dropped(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    from datetime import timedelta

    store.save_batch([Incoming(raw=msg(61), channel="t")])
    a = Processor(store, routes, mappings, worker="a")
    b = Processor(store, routes, mappings, worker="b")
    [(mid, raw, kind)] = store.claim_received("a")
    store.reclaim_stale(timedelta(seconds=-1))  # a was thought dead
    assert b.process_batch() == 1  # b claims and finishes it
    late = a.process_one(mid, raw, kind)
    assert late.worker == "a" and len(late.new_deliveries) == 2
    assert store.finish_batch([late]) == []  # a finishes late: nothing of it is kept
    assert len(store.get(mid).deliveries) == 2  # b's two deliveries only, not four


def test_only_outcomes_the_store_kept_are_counted_as_routed(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    """An outcome whose claim another worker took back meanwhile is the other worker's count."""
    counted: list[list[str]] = []

    class Routed:
        def record_routed(self, names: Iterable[str]) -> None:
            counted.append(sorted(set(names)))

    store.save_batch([Incoming(raw=msg(63), channel="t"), Incoming(raw=msg(64), channel="t")])
    proc = Processor(store, routes, mappings, worker="a", batch=1, metrics=Routed())
    real_finish = store.finish_batch
    proc.store = type(
        "Reclaimed",
        (),
        {
            "claim_received": store.claim_received,
            # the claim was taken back before the outcome was recorded: the store keeps nothing
            "finish_batch": staticmethod(lambda done: real_finish([])),
        },
    )()  # type: ignore[assignment]
    assert proc.process_batch() == 1
    assert counted == []
    proc.store = store
    assert proc.process_batch() == 1
    assert counted == [["adt-raw", "all-to-fhir"]]  # an ADT: both routes, each once


def run_until_routed(store: SqlMessageStore, proc: Processor) -> None:
    """Run the processor until a message is routed (4 s at most), then stop it."""

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(proc.run(stop))
        for _ in range(200):
            if store.counts().get("routed"):
                break
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(main())


def test_processor_survives_a_database_hiccup(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    store.save_batch([Incoming(raw=msg(62), channel="t")])
    proc = Processor(store, routes, mappings, idle_s=0.01)
    real = store.finish_and_claim
    calls = {"n": 0}

    def flaky(done: Any, worker: str, limit: int) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("database restarting")
        return real(done, worker, limit)

    store.finish_and_claim = flaky  # type: ignore[method-assign]

    run_until_routed(store, proc)
    assert store.counts().get("routed") == 1 and calls["n"] >= 2


def test_a_batch_whose_finish_failed_is_given_back_and_processed_again(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    # the running processor finishes a batch with its next claim: when that transaction fails
    # (the database away) the batch's claims are given back and its messages processed again,
    # not left ``processing`` until the stale-claim sweep (5 minutes)
    store.save_batch([Incoming(raw=msg(63, "P63"), channel="t")])
    proc = Processor(store, routes, mappings, idle_s=0.01)
    real = store.finish_and_claim
    failed: list[int] = []

    def flaky(done: Any, worker: str, limit: int) -> Any:
        if done and not failed:
            failed.append(len(done))
            raise OSError("database restarting")
        return real(done, worker, limit)

    store.finish_and_claim = flaky  # type: ignore[method-assign]

    run_until_routed(store, proc)
    assert failed == [1]
    assert store.counts().get("routed") == 1 and not store.counts().get("processing")
    [view] = store.list()
    assert len(store.get(view.id).deliveries) == 2  # type: ignore[union-attr]  # queued once


@pytest.mark.parametrize("step", ["_cycle", "process_batch"])
def test_a_claim_whose_reply_was_lost_is_given_back_at_the_next_step(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, step: str
) -> None:
    """The claim commits and its reply is lost (the connection cut just after): the claimed
    message is this live worker's and in no one's hands. The next step gives it back and it is
    processed; before 7 December it stayed ``processing`` for reclaim_stale's 5 minutes, and
    every later message of its patient waited."""
    store.save_batch([Incoming(raw=msg(65, "P65"), channel="t")])
    proc = Processor(store, routes, mappings, idle_s=0.01)
    name = "finish_and_claim" if step == "_cycle" else "claim_received"
    real = getattr(store, name)
    lost: list[int] = []

    def committed_then_lost(*args: Any) -> Any:
        result = real(*args)
        if not lost:
            lost.append(1)
            raise OSError("connection cut after the commit")
        return result

    setattr(store, name, committed_then_lost)
    with pytest.raises(OSError):
        getattr(proc, step)()
    assert lost == [1] and store.counts().get("processing") == 1
    for _ in range(3):
        getattr(proc, step)()
    assert store.counts().get("routed") == 1 and not store.counts().get("processing")


def test_a_stopping_processor_finishes_what_it_processed(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    # the last batch processed before the stop is finished then, not left claimed (it took
    # every message waiting: the processor lingers with it processed, not yet finished)
    store.save_batch([Incoming(raw=msg(64, "P64"), channel="t")])
    proc = Processor(store, routes, mappings, idle_s=5.0, linger_s=0.5)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(proc.run(stop))
        for _ in range(200):
            if proc._processed:
                break
            await asyncio.sleep(0.01)
        assert proc._processed, "nothing processed"
        assert store.counts().get("processing") == 1  # not finished yet
        stop.set()
        await task

    asyncio.run(main())
    assert store.counts().get("routed") == 1 and not store.counts().get("processing")


def test_a_dispatcher_claiming_ahead_sends_each_delivery_once(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    fhir = MemoryDestination("fhir", delay_s=0.02)
    raw = MemoryDestination("raw", delay_s=0.02)
    run_all(
        store,
        routes,
        mappings,
        {"fhir": fhir, "raw": raw},
        [msg(70 + i, f"P{i}") for i in range(30)],
        settle=5,
    )
    # every delivery sent exactly once
    assert sorted(p.message_id for p in fhir.attempts) == sorted(
        {p.message_id for p in fhir.attempts}
    )
    assert len(fhir.delivered) == 30 and len(raw.delivered) == 30


def test_a_patients_next_message_waits_for_the_one_before_across_workers(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    asyncio.run(
        _receive_all(store, routes, mappings, [msg(80, "SAME"), msg(81, "SAME"), msg(82, "OTHER")])
    )
    first = store.claim_received("a", limit=1)  # worker a: SAME's first message
    assert [parse_message(r).get("MSH-10") for _, r, _ in first] == ["C80"]
    # worker b may take OTHER, not SAME's second message while the first is in flight
    second = store.claim_received("b", limit=10)
    assert [parse_message(r).get("MSH-10") for _, r, _ in second] == ["C82"]
    from engine.store import Processed

    store.finish_batch([Processed(first[0][0], "routed", worker="a")])
    third = store.claim_received("b", limit=10)
    assert [parse_message(r).get("MSH-10") for _, r, _ in third] == ["C81"]


async def _receive_all(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, raws: list[bytes]
) -> None:
    ingest = Ingest(store, routes=RouteGate(Router(routes), mappings))
    for raw in raws:
        await ingest.receive(raw, channel="t")


def test_a_stopping_dispatcher_gives_back_the_claims_it_has_not_started(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    from engine.adapters.destination import DeliveryResult, Payload
    from engine.store import NewDelivery, Processed

    for i in range(4):  # four patients, one delivery each, all due
        [mid] = [s.id for s in store.save_batch([Incoming(raw=b"MSH|", channel="test")])]
        delivery = NewDelivery("fhir", "r", "hl7v2", "text/plain", b"x", f"P{i}")
        store.finish_batch([Processed(mid, "routed", None, f"P{i}", [delivery])])

    class Slow(MemoryDestination):
        started = 0

        async def deliver(self, payload: Payload) -> DeliveryResult:
            self.started += 1
            return await super().deliver(payload)

    slow = Slow("fhir", delay_s=0.3)

    async def main() -> None:
        stop = asyncio.Event()
        dispatcher = Dispatcher(
            store, routes, {"fhir": slow}, per_destination=1, claim_ahead=4, idle_s=0.02
        )
        task = asyncio.create_task(dispatcher.run(stop))
        deadline = asyncio.get_running_loop().time() + 30
        while not slow.started:
            assert asyncio.get_running_loop().time() < deadline, "no delivery started in 30 s"
            await asyncio.sleep(0.01)
        stop.set()  # one delivery under way, three claimed and waiting for the destination
        await task

    asyncio.run(main())
    assert len(slow.delivered) == 1  # the one under way finished
    # the other three are claimable again at once, not after their 600 s lease
    assert len(store.claim_due_deliveries(10)) == 3


def test_an_adt_without_pid_is_refused_before_the_ack(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    """Issue 9: never an AA for a message that cannot make its main resource."""
    raw = (
        b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A08|NOPID1|P|2.5.1\r"
        b"EVN|A08|20260102030405\rPV1|1|O\r"
    )
    dests = {"fhir": MemoryDestination("fhir"), "raw": MemoryDestination("raw")}
    (ack,) = run_all(store, routes, mappings, dests, [raw])
    reply = parse_message(ack or b"")
    assert reply.get("MSA-1") in ("AE", "AR")
    assert "no PID segment" in reply.get("ERR-8")
    (stored,) = store.list()
    assert stored.state == "error"
    assert "ADT^A08 has no PID segment" in (stored.reason or "")
    assert dests["fhir"].delivered == [] and dests["raw"].delivered == []


def test_what_no_map_took_is_kept_on_the_stored_message(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    raw = msg(7).replace(b"|F\rPV1", b"|F|Alias^Ann\rZPI|1|custom\rPV1")
    dests = {"fhir": MemoryDestination("fhir"), "raw": MemoryDestination("raw")}
    (ack,) = run_all(store, routes, mappings, dests, [raw])
    assert parse_message(ack or b"").get("MSA-1") == "AA"
    (stored,) = store.list()
    assert stored.state == "delivered"
    assert stored.warnings == (
        "PID: not mapped: PID-9",
        "ZPI: no mapping took this segment (fields 1, 2)",
    )
    view = store.get(stored.id)
    assert view is not None and view.warnings == stored.warnings
