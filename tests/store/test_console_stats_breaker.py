"""The worker's circuit breaker reaches the dashboard: the dispatcher writes a destination's
breaker when it opens and when it closes (SQLite and PostgreSQL), and the console reads it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.flow.deliver import Dispatcher
from engine.store import Incoming, NewDelivery, Processed, SqlMessageStore

ROUTES = """
destinations:
  flaky:
    type: file
    directory: {tmp}/out
    retry: {{max_attempts: 50, base_delay_s: 0, max_delay_s: 0}}
routes:
  - name: all
    match: {{message: [ADT]}}
    mapping: none
    destinations: [flaky]
"""


def _queue(store: SqlMessageStore, n: int) -> None:
    for i in range(n):
        [stored] = store.save_batch(
            [Incoming(raw=b"MSH|", channel="test", control_id=f"C{i}", patient_key=f"A|{i}")]
        )
        delivery = NewDelivery("flaky", "all", "hl7v2", "text/plain", b"x", f"A|{i}")
        store.finish_batch([Processed(stored.id, "routed", None, f"A|{i}", [delivery])])


def test_the_dispatcher_records_its_breaker_opening_and_closing(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "r.yaml").write_text(ROUTES.format(tmp=tmp_path))
    routes = load_routes(defaults=folder)
    destination = MemoryDestination("flaky")
    destination.fail_next(5, detail="HTTP 503 from the peer")  # the breaker's threshold
    node = store.register_node("worker")
    _queue(store, 5)
    seen: list[bool] = []

    async def main() -> None:
        stop = asyncio.Event()
        dispatcher = Dispatcher(store, routes, {"flaky": destination}, idle_s=0.02, node=node)
        task = asyncio.create_task(dispatcher.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while loop.time() < deadline:
            figures = (await asyncio.to_thread(store.destination_figures)).get("flaky")
            breaker = figures.breaker if figures is not None else None
            if breaker is not None and (not seen or seen[-1] != breaker.open):
                seen.append(breaker.open)
            if seen == [True, False]:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(main())
    assert seen == [True, False]  # opened after 5 failures, closed by the next success
    [row] = store.destination_figures().values()
    assert row.breaker is not None and not row.breaker.open
