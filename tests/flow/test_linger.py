"""The processor's linger (engine/flow/worker.py ``LINGER_S``): messages that arrive one at a
time are claimed and processed several to a transaction, not one each; a backlog is not slowed."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.adapters.memory import MemoryDestination
from engine.flow.gate import RouteGate
from engine.flow.ingest import Ingest
from engine.flow.process import Processor
from engine.mappings import Mappings
from engine.routes.loader import RouteSet
from engine.routes.router import Router
from engine.store import SqlMessageStore
from tests.flow.test_queue import mappings as mappings  # noqa: F401  (the fixture)
from tests.flow.test_queue import msg, pipeline
from tests.flow.test_queue import routes as routes  # noqa: F401  (the fixture)

LINGER_S = 0.5


def _recording(store: SqlMessageStore, name: str, sizes: list[int], of_result: bool) -> None:
    real = getattr(store, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        size = len(result) if of_result else len(args[0])
        if size:
            sizes.append(size)
        return result

    setattr(store, name, wrapped)


def _claims(store: SqlMessageStore, sizes: list[int]) -> None:
    """Record the size of each claim the running processor makes (with the finish of the batch
    before it, in one transaction), as :func:`_recording`."""
    real = store.finish_and_claim

    def wrapped(done: Any, worker: str, limit: int) -> Any:
        kept, claimed = real(done, worker, limit)
        if claimed:
            sizes.append(len(claimed))
        return kept, claimed

    store.finish_and_claim = wrapped  # type: ignore[method-assign]


def test_messages_arriving_one_by_one_share_the_workers_transactions(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    claimed: list[int] = []
    outcomes: list[int] = []
    _claims(store, claimed)
    _recording(store, "record_outcomes", outcomes, of_result=False)
    dests = {"fhir": MemoryDestination("fhir"), "raw": MemoryDestination("raw")}

    async def main() -> None:
        stop = asyncio.Event()
        ingest, processor, dispatcher = await pipeline(
            store, routes, mappings, dests, linger_s=LINGER_S
        )
        tasks = [
            asyncio.create_task(processor.run(stop)),
            asyncio.create_task(dispatcher.run(stop)),
        ]
        loop = asyncio.get_running_loop()
        await ingest.receive(msg(1, "P1"), channel="test")
        deadline = loop.time() + 5
        while loop.time() < deadline:  # processed, and the processor idle again
            if claimed and (await asyncio.to_thread(store.counts)).get("received", 0) == 0:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        # the processor took the first alone and is idle again: the next wakes it and it
        # lingers while three more arrive, each on its own (its own commit and wake-up)
        for n in range(2, 6):
            await ingest.receive(msg(n, f"P{n}"), channel="test")
            await asyncio.sleep(0.01)
        deadline = loop.time() + 10
        while loop.time() < deadline:
            counts = await asyncio.to_thread(store.counts)
            if counts.get("delivered") == 5:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*tasks)
        await ingest.stop()

    asyncio.run(main())
    assert len(dests["fhir"].delivered) == 5 and len(dests["raw"].delivered) == 5
    assert claimed == [1, 4]  # the four that came during the linger: one claim
    assert sum(outcomes) == 10  # every delivery's outcome recorded, none waiting for a linger


def test_one_patients_backlog_is_not_slowed_by_the_linger(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    # order per patient: each claim takes only the patient's next message, so a backlog of
    # one patient is claimed one message at a time; a wait after each would take 5 * 0.5 s
    async def main() -> float:
        stop = asyncio.Event()
        ingest = Ingest(store, routes=RouteGate(Router(routes), mappings))
        await ingest.start()
        for n in range(1, 6):
            await ingest.receive(msg(n, "SAME"), channel="test")
        await ingest.stop()
        processor = Processor(store, routes, mappings, idle_s=0.02, linger_s=LINGER_S)
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.create_task(processor.run(stop))
        while loop.time() < started + 10:
            if (await asyncio.to_thread(store.counts)).get("routed") == 5:
                break
            await asyncio.sleep(0.01)
        took = loop.time() - started
        stop.set()
        await task
        return took

    claimed: list[int] = []
    _claims(store, claimed)
    took = asyncio.run(main())
    assert claimed == [1, 1, 1, 1, 1]
    assert took < 2 * LINGER_S  # not one linger per message


def test_a_short_batch_that_took_every_message_waiting_lingers_before_the_next(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    # messages arriving every 10 ms while each batch's transactions take 50 ms (SQLite's write
    # lock busy): the processor is never idle, so only a wait after a batch that took all
    # there was lets the next gather more than the five or so that came during one batch
    real_finish = store.finish_and_claim

    def slow_finish(outcomes: Any, worker: str, limit: int) -> Any:
        import time

        time.sleep(0.05)
        return real_finish(outcomes, worker, limit)

    store.finish_and_claim = slow_finish  # type: ignore[method-assign]

    async def main() -> None:
        stop = asyncio.Event()
        ingest = Ingest(store, routes=RouteGate(Router(routes), mappings))
        await ingest.start()
        processor = Processor(store, routes, mappings, idle_s=0.02, linger_s=0.3)
        ingest.on_stored = processor.wake
        task = asyncio.create_task(processor.run(stop))
        for n in range(1, 41):
            await ingest.receive(msg(n, f"P{n}"), channel="test")
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while (await asyncio.to_thread(store.counts)).get("routed") != 40:
            assert loop.time() < deadline, "not all routed in 20 s"
            await asyncio.sleep(0.01)
        stop.set()
        await task
        await ingest.stop()

    claimed: list[int] = []
    _claims(store, claimed)  # wraps the slow one: each claim still takes its 50 ms
    asyncio.run(main())
    assert sum(claimed) == 40
    # one linger from idle, then a wait after each batch that took everything: a few large
    # claims, where claiming again at once took about five each (eight claims or more)
    assert len(claimed) <= 5, claimed
