"""A worker process that stood still (SIGSTOP, a paused VM, a swap storm) longer than the
takeover limit has had its claims released and maybe taken by another node: when it runs again
its dispatcher must not send the deliveries it had claimed before (engine/store/nodes.py's
``Liveness``, engine/flow/deliver.py's ``_still_ours``), even those whose lease has plenty left.
While its heartbeats are recent it sends without asking the database, as before."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.flow.deliver import Dispatcher
from engine.store import Incoming, NewDelivery, Processed, SqlMessageStore
from engine.store.nodes import Liveness, dead_after

ROUTES = """
destinations:
  out: {type: file, directory: {tmp}/out}
routes:
  - {name: r, match: {message: [ADT]}, mapping: none, destinations: [out]}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _claimed(
    store: SqlMessageStore, tmp_path: Path, node: str
) -> tuple[Dispatcher, list, Clock, Liveness]:  # type: ignore[type-arg]
    """Three deliveries claimed by ``node``'s dispatcher, whose liveness keeps ``Clock``."""
    (tmp_path / "routes").mkdir(exist_ok=True)
    (tmp_path / "routes" / "r.yaml").write_text(ROUTES.replace("{tmp}", str(tmp_path)))
    routes = load_routes(defaults=tmp_path / "routes")
    for i in range(3):
        [mid] = [s.id for s in store.save_batch([Incoming(raw=b"MSH|", channel="test")])]
        made = [NewDelivery("out", "r", "hl7v2", "text/plain", b"x", f"P{i}")]
        store.finish_batch([Processed(mid, "routed", None, f"P{i}", made)])
    out = MemoryDestination("out")
    dispatcher = Dispatcher(store, routes, {"out": out}, node=node)
    store.register_node("worker", node)
    due = store.claim_due_deliveries(10, dispatcher.lease_s, [], node)
    assert len(due) == 3
    clock = Clock()
    dispatcher.liveness = Liveness(clock=clock)
    return dispatcher, due, clock, dispatcher.liveness


@pytest.mark.parametrize("learns", ["from the gap", "from its row gone"])
def test_claims_made_before_a_takeover_are_checked_and_not_sent(
    store: SqlMessageStore, tmp_path: Path, learns: str
) -> None:
    node = f"host:1:{len(learns)}"
    dispatcher, due, clock, live = _claimed(store, tmp_path, node)
    epoch = live.epoch
    store.take_over(dead_after=timedelta(seconds=-1))  # another node takes its claims over
    if learns == "from the gap":
        # it stood still: its heartbeat grew old; when it runs again its first heartbeat is
        # written at once (taking over releases the claims, not the row): the gap tells it
        clock.now += dead_after().total_seconds() + 5
        assert not live.sure(epoch)
        began, written = clock.now, store.heartbeat(node)
        assert written
    else:  # its row was gone: registered again just now
        began, written = clock.now, False
    live.beaten(began, written)
    assert live.sure(live.epoch) and not live.sure(epoch)  # recent, but the claims are older
    # what it held is asked about first, and none of it is sent
    for d in due:
        asyncio.run(dispatcher._deliver(d, epoch))
    assert dispatcher.destinations["out"].delivered == []  # type: ignore[attr-defined]


def test_with_recent_heartbeats_its_claims_are_sent_without_asking(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    dispatcher, due, clock, live = _claimed(store, tmp_path, "host:3:live")
    for _ in range(3):  # beats 2 s apart: no gap
        clock.now += 2
        live.beaten(clock.now, written=True)
    assert live.epoch == 0
    clock.now += dead_after().total_seconds() / 2 - 1
    asked: list[int] = []
    store_renew = store.renew_claim

    def renew(*args: object) -> bool:
        asked.append(1)
        return store_renew(*args)  # type: ignore[arg-type]

    store.renew_claim = renew  # type: ignore[method-assign]
    for d in due:
        asyncio.run(dispatcher._deliver(d, live.epoch))
    assert asked == []  # no round trip a delivery while it is sure
    assert len(dispatcher.destinations["out"].delivered) == 3  # type: ignore[attr-defined]
    # its heartbeat late by more than half the takeover limit: each one is asked about
    clock.now += dead_after().total_seconds() / 2 + 1
    assert not live.sure(live.epoch)
