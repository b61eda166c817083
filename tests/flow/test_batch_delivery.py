"""The dispatcher with a destination that takes its claimed deliveries together
(``deliver_batch``, the file drop's), on SQLite and PostgreSQL: each delivery still sent
once, settled on its own result, per-patient order kept; a batch that fails as a whole is
retried; claims of a batch not started are given back on stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.adapters.destination import BatchDestination, DeliveryResult, Payload
from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.flow.deliver import Dispatcher
from engine.routes.loader import RouteSet
from engine.store import Incoming, NewDelivery, Processed, SqlMessageStore

ROUTES = """
destinations:
  drop:
    type: file
    directory: {tmp}/drop
    retry: {{max_attempts: 3, base_delay_s: 60, max_delay_s: 60}}
  one:
    type: file
    directory: {tmp}/one
    retry: {{max_attempts: 3, base_delay_s: 60, max_delay_s: 60}}
routes:
  - name: r
    match: {{message: [ADT]}}
    mapping: none
    destinations: [drop, one]
"""


@pytest.fixture
def routes(tmp_path: Path) -> RouteSet:
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "test.yaml").write_text(ROUTES.format(tmp=tmp_path))
    return load_routes(defaults=folder)


class Batching(MemoryDestination):
    """A memory destination that also takes batches, recording each batch's size; a result
    per payload from ``outcome`` (by message id), a success when it says nothing."""

    def __init__(self, name: str, *, delay_s: float = 0.0) -> None:
        super().__init__(name, delay_s=delay_s)
        self.batches: list[list[int]] = []
        self.outcome: dict[int, DeliveryResult] = {}
        self.raises: Exception | None = None
        self.short = False  # answer one result too few

    async def deliver_batch(self, payloads: list[Payload]) -> list[DeliveryResult]:
        self.batches.append([p.message_id for p in payloads])  # started
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.attempts += payloads
        if self.raises is not None:
            raise self.raises
        results = []
        for p in payloads:
            result = self.outcome.get(p.message_id, DeliveryResult.success("memory: ok"))
            if result.ok:
                self.delivered.append(p)
            results.append(result)
        return results[:-1] if self.short else results


def queue(store: SqlMessageStore, patients: list[str], destination: str = "drop") -> list[int]:
    """One message and one delivery to ``destination`` per entry of ``patients`` (a patient
    named twice has two, in that order); their message ids."""
    ids = []
    for i, patient in enumerate(patients):
        [mid] = [s.id for s in store.save_batch([Incoming(raw=b"MSH|", channel="test")])]
        delivery = NewDelivery(destination, "r", "hl7v2", "text/plain", f"m{i}".encode(), patient)
        store.finish_batch([Processed(mid, "routed", None, patient, [delivery])])
        ids.append(mid)
    return ids


def run(store: SqlMessageStore, routes: RouteSet, dests: dict, until: int, **kw: object) -> None:
    """Run a dispatcher until ``until`` outcomes are recorded (30 s at most)."""

    async def main() -> None:
        stop = asyncio.Event()
        dispatcher = Dispatcher(store, routes, dests, idle_s=0.02, **kw)  # type: ignore[arg-type]
        task = asyncio.create_task(dispatcher.run(stop))
        deadline = asyncio.get_running_loop().time() + 30
        while sum(len(d.attempts) for d in dests.values()) < until:
            assert asyncio.get_running_loop().time() < deadline, "deliveries not made in 30 s"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the outcomes recorded
        stop.set()
        await task

    asyncio.run(main())


def states(store: SqlMessageStore, ids: list[int]) -> list[str]:
    return [store.get(mid).deliveries[0].state for mid in ids]  # type: ignore[union-attr]


def test_the_file_drop_takes_batches_and_memory_destinations_do_not() -> None:
    from engine.adapters.files import FileDestination, FileDropDestination

    drop = FileDropDestination("d", FileDestination(directory=Path("/tmp/unused-drop")))
    assert isinstance(drop, BatchDestination)
    assert not isinstance(MemoryDestination("m"), BatchDestination)


def test_claimed_deliveries_go_as_batches_each_once_in_patient_order(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    # forty patients, and one of them with three messages that must go in order
    ids = queue(store, [f"P{i}" for i in range(40)] + ["P0", "P0"])
    drop = Batching("drop")
    run(store, routes, {"drop": drop}, until=42)
    sent = [p.message_id for p in drop.attempts]  # in batches, and one alone by deliver()
    assert sorted(sent) == sorted(ids)  # each once
    assert max(len(b) for b in drop.batches) > 1  # sent together, not one by one
    p0 = [ids[0], ids[40], ids[41]]
    assert [mid for mid in sent if mid in p0] == p0  # P0's order kept
    # a patient's next message is never in the batch of the one before (order per patient)
    assert all(len(set(b) & set(p0)) <= 1 for b in drop.batches)
    assert states(store, ids) == ["delivered"] * 42


def test_each_delivery_of_a_batch_is_settled_on_its_own_result(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    ids = queue(store, ["A", "B", "C", "D"])
    drop = Batching("drop")
    drop.outcome = {
        ids[1]: DeliveryResult.retry("memory: busy"),
        ids[2]: DeliveryResult.fail("memory: refused"),
    }
    run(store, routes, {"drop": drop}, until=4)
    assert drop.batches == [ids]  # claimed together, sent together
    assert states(store, ids) == ["delivered", "pending", "dead", "delivered"]
    busy = store.get(ids[1]).deliveries[0]  # type: ignore[union-attr]
    assert (busy.attempts, busy.last_error) == (1, "memory: busy")


@pytest.mark.parametrize("how", ["raises", "short"])
def test_a_batch_that_fails_as_a_whole_is_retried_and_says_why(
    store: SqlMessageStore, routes: RouteSet, how: str
) -> None:
    ids = queue(store, ["A", "B", "C"])
    drop = Batching("drop")
    if how == "raises":
        drop.raises = RuntimeError("a bug")
    else:
        drop.short = True
    run(store, routes, {"drop": drop}, until=3)
    want = "adapter error (RuntimeError)" if how == "raises" else "adapter error (ValueError)"
    for mid in ids:
        [d] = store.get(mid).deliveries  # type: ignore[union-attr]
        assert (d.state, d.attempts, d.last_error) == ("pending", 1, want)
    assert drop.delivered == [] or how == "short"  # nothing counted as delivered: retried


def test_batch_and_one_by_one_destinations_share_a_dispatcher(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    to_drop = queue(store, ["A", "B", "C"])
    to_one = queue(store, ["D", "E", "F"], destination="one")
    drop, one = Batching("drop"), MemoryDestination("one")
    run(store, routes, {"drop": drop, "one": one}, until=6)
    assert sorted(p.message_id for p in drop.attempts) == to_drop
    assert sorted(p.message_id for p in one.delivered) == to_one
    assert states(store, to_drop + to_one) == ["delivered"] * 6


def test_a_stopping_dispatcher_gives_back_the_batches_it_has_not_started(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    queue(store, [f"P{i}" for i in range(6)])
    drop = Batching("drop", delay_s=0.3)

    async def main() -> None:
        stop = asyncio.Event()
        # claims of 2, one batch sent at a time, 4 claimed at most: a second batch waits
        dispatcher = Dispatcher(
            store, routes, {"drop": drop}, per_destination=1, claim_ahead=4, batch=2, idle_s=0.01
        )
        task = asyncio.create_task(dispatcher.run(stop))
        deadline = asyncio.get_running_loop().time() + 30
        while not drop.batches or sum(dispatcher._claimed.values()) < 4:
            assert asyncio.get_running_loop().time() < deadline, "no batch started in 30 s"
            await asyncio.sleep(0.01)
        stop.set()  # one batch under way, one claimed and waiting for the destination
        await task

    asyncio.run(main())
    assert len(drop.batches) == 1 and len(drop.delivered) == 2  # the one under way finished
    # the waiting batch's claims were given back: claimable again at once, not after the lease
    assert len(store.claim_due_deliveries(10)) == 4
