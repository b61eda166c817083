"""The dispatcher gathers the outcomes of deliveries that finish one at a time (a FHIR server
answering each) for ``flush_s`` and records them in one transaction, on SQLite and
PostgreSQL: every delivery still recorded once, per-patient order kept, and on stop what was
gathered is recorded at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.adapters.memory import MemoryDestination
from engine.flow.deliver import Dispatcher
from engine.routes.loader import RouteSet
from engine.store import SqlMessageStore
from tests.flow.test_batch_delivery import queue, routes, states

__all__ = ["routes"]  # the fixture, shared


def counted(store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the outcome transactions the store is asked for."""
    sizes: list[int] = []
    record = store.record_outcomes

    def spy(outcomes: Any, owner: str | None = None) -> None:
        sizes.append(len(outcomes))
        record(outcomes, owner)

    monkeypatch.setattr(store, "record_outcomes", spy)
    return sizes


def deliver_all(
    store: SqlMessageStore, routes: RouteSet, dest: MemoryDestination, n: int, flush_s: float
) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        dispatcher = Dispatcher(store, routes, {"one": dest}, idle_s=0.02, flush_s=flush_s)
        task = asyncio.create_task(dispatcher.run(stop))
        deadline = time.monotonic() + 30
        while store.counts().get("delivered", 0) < n:
            assert time.monotonic() < deadline, "not delivered in 30 s"
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(main())


def test_outcomes_finishing_one_at_a_time_are_recorded_together(
    store: SqlMessageStore, routes: RouteSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = queue(store, [f"P{i}" for i in range(40)], destination="one")
    sizes = counted(store, monkeypatch)
    dest = MemoryDestination("one", delay_s=0.005)  # eight at a time, each on its own
    deliver_all(store, routes, dest, 40, flush_s=0.1)
    assert states(store, ids) == ["delivered"] * 40
    assert sorted(p.message_id for p in dest.delivered) == ids  # each once
    assert sum(sizes) == 40
    # 40 answers in five waves of eight, about 5 ms apart: without the wait they took 9
    # transactions (SQLite, one run); with it, one for each claim (32 and 8)
    assert len(sizes) <= 3, sizes


def test_a_patients_deliveries_keep_their_order_while_outcomes_wait(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    ids = queue(store, ["P0", "P1", "P0", "P0", "P1"], destination="one")
    dest = MemoryDestination("one")
    deliver_all(store, routes, dest, 5, flush_s=0.05)
    order = [p.message_id for p in dest.delivered]
    assert [m for m in order if m in (ids[0], ids[2], ids[3])] == [ids[0], ids[2], ids[3]]
    assert [m for m in order if m in (ids[1], ids[4])] == [ids[1], ids[4]]
    assert len(order) == 5


def test_on_stop_the_gathered_outcomes_are_recorded_at_once(
    store: SqlMessageStore, routes: RouteSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = queue(store, ["P0", "P1"], destination="one")
    sizes = counted(store, monkeypatch)
    dest = MemoryDestination("one")

    async def main() -> float:
        stop = asyncio.Event()
        dispatcher = Dispatcher(store, routes, {"one": dest}, idle_s=0.02, flush_s=60.0)
        task = asyncio.create_task(dispatcher.run(stop))
        while len(dest.delivered) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert sizes == []  # sent, the outcomes still gathering (a minute)
        stopped = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
        return time.monotonic() - stopped

    took = asyncio.run(main())
    assert took < 5  # not the minute
    assert sum(sizes) == 2
    assert states(store, ids) == ["delivered", "delivered"]
