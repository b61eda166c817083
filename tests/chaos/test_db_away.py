"""Found by the fault campaign (scenario postgres): work whose database went away mid-way.

- A processing batch whose database went away before it was finished kept its claims, this live
  worker's, which no heartbeat takes over; every later message of those patients waited for the
  5-minute fallback. The next batch now gives them back first (engine/flow/process.py).
- A delivery made while the database was away lost its outcome: the dispatcher dropped the batch
  of outcomes whose recording failed, and the delivery stayed claimed until its 10-minute lease
  ran out, every later delivery of its patient waiting behind it. Now the outcomes are kept and
  recorded once the database answers again, within seconds (engine/flow/deliver.py,
  ``Dispatcher._flush``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.flow.deliver import Dispatcher
from engine.flow.process import Processor
from engine.mappings import load_mappings
from engine.routes.loader import RouteSet
from engine.store import Incoming, SqlMessageStore

ROUTES = """
destinations:
  raw:
    type: file
    directory: {tmp}/raw
routes:
  - name: adt-raw
    match: {{message: [ADT]}}
    mapping: none
    destinations: [raw]
"""

MSG = (
    "MSH|^~\\&|CHAOS|CLINIC|ENGINE|HUB|20261203090000||ADT^A08|C{n}|P|2.5.1\r"
    "EVN|A08|20261203090000\rPID|1||{mrn}^^^CLINIC^MR||Chaos^Patient||19800101|F\rPV1|1|O\r"
)


def test_a_batch_cut_off_by_the_database_is_given_back_at_the_next_batch(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "test.yaml").write_text(ROUTES.format(tmp=tmp_path))
    store.save_batch(  # two patients; the first has a second message behind its first
        [
            Incoming(raw=MSG.format(n=n, mrn=mrn).encode(), channel="mllp", patient_key=mrn)
            for n, mrn in enumerate(("CH1", "CH2", "CH1"))
        ]
    )
    node = store.register_node("worker")
    processor = Processor(
        store, load_routes(defaults=folder), load_mappings(), worker=node, batch=2
    )

    def database_away(*_args: object) -> list[object]:
        raise OperationalError("UPDATE", {}, Exception("server closed the connection"))

    with monkeypatch.context() as patch:
        patch.setattr(store, "finish_batch", database_away)
        with pytest.raises(OperationalError):
            processor.process_batch()  # claimed two, could not finish them
    assert store.counts().get("processing") == 2
    # the database is back: the same worker's next batches take them again at once, in order
    assert processor.process_batch() == 2
    assert processor.process_batch() == 1
    counts = store.counts()
    assert counts.get("routed", 0) + counts.get("delivered", 0) == 3, counts
    assert not counts.get("processing")


def _two_routed(store: SqlMessageStore, tmp_path: Path) -> tuple[RouteSet, str]:
    """Two messages of one patient, processed (their deliveries queued, the second waiting
    behind the first) by a registered worker node: the routes and the node."""
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "test.yaml").write_text(ROUTES.format(tmp=tmp_path))
    routes = load_routes(defaults=folder)
    store.save_batch(
        [
            Incoming(raw=MSG.format(n=n, mrn="CH1").encode(), channel="mllp", patient_key="CH1")
            for n in range(2)
        ]
    )
    node = store.register_node("worker")
    processor = Processor(store, routes, load_mappings(), worker=node)
    while processor.process_batch():
        pass
    return routes, node


async def _deliver_for_a_while(
    store: SqlMessageStore, routes: RouteSet, raw: MemoryDestination, node: str
) -> dict[str, int]:
    """Run the node's dispatcher until nothing is pending, or 8 s (far less than the 10-minute
    lease a claim left behind would wait): the store's counts then."""
    stop = asyncio.Event()
    dispatcher = Dispatcher(store, routes, {"raw": raw}, idle_s=0.05, node=node)
    task = asyncio.create_task(dispatcher.run(stop))
    deadline = asyncio.get_running_loop().time() + 8
    counts = await asyncio.to_thread(store.counts)
    while counts.get("deliveries_pending") and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        counts = await asyncio.to_thread(store.counts)
    stop.set()
    await task
    return counts


def test_an_outcome_the_database_missed_is_recorded_once_it_is_back(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes, node = _two_routed(store, tmp_path)
    raw = MemoryDestination("raw")
    record = store.record_outcomes
    missed: list[int] = []

    def database_away_once(*args: object, **kwargs: object) -> object:
        if not missed:
            missed.append(1)
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "record_outcomes", database_away_once)

    counts = asyncio.run(_deliver_for_a_while(store, routes, raw, node))
    assert missed  # the database was away when the first outcome was recorded
    assert counts.get("delivered") == 2 and not counts.get("deliveries_pending"), counts


def test_a_delivery_claim_whose_reply_was_lost_is_given_back(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim of deliveries commits and its reply is lost (the connection cut just after):
    its claims are this live node's and in no one's hands. The next claim gives them back
    first; before 7 December they waited for their 10-minute lease, and the patient's later
    deliveries to the destination with them."""
    routes, node = _two_routed(store, tmp_path)
    raw = MemoryDestination("raw")
    claim = store.claim_due_deliveries
    lost: list[int] = []

    def reply_lost_once(*args: object, **kwargs: object) -> object:
        due = claim(*args, **kwargs)  # type: ignore[arg-type]
        if not lost and due:
            lost.append(len(due))
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return due

    monkeypatch.setattr(store, "claim_due_deliveries", reply_lost_once)

    counts = asyncio.run(_deliver_for_a_while(store, routes, raw, node))
    assert lost == [1]  # the first message's delivery (the second waits behind it)
    assert counts.get("delivered") == 2 and not counts.get("deliveries_pending"), counts
    assert len(raw.delivered) == 2 and len(raw.attempts) == 2  # each once
