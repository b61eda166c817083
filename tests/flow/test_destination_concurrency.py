"""A destination's ``concurrency`` (route file) is how many of its deliveries are under way at
once: a fast FHIR server can take more than the default 8, a rate-limited one fewer. Measured
with a slow destination that counts what it holds at the same time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.errors import ConfigError
from engine.flow.deliver import Dispatcher
from engine.routes.spec import DestinationSpec
from engine.store import Incoming, NewDelivery, Processed, SqlMessageStore

ROUTES = """
destinations:
  wide:
    type: file
    directory: {tmp}/wide
    concurrency: 5
  narrow:
    type: file
    directory: {tmp}/narrow
routes:
  - {{name: r, match: {{message: [ADT]}}, mapping: none, destinations: [wide, narrow]}}
"""


class Counting(MemoryDestination):
    """Holds each delivery a while and notes the most it held at once."""

    def __init__(self, name: str) -> None:
        super().__init__(name, delay_s=0.05)
        self.now = 0
        self.most = 0

    async def deliver(self, payload: Payload) -> DeliveryResult:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await super().deliver(payload)
        finally:
            self.now -= 1


def test_each_destination_has_its_own_width(store: SqlMessageStore, tmp_path: Path) -> None:
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yaml").write_text(ROUTES.format(tmp=tmp_path))
    routes = load_routes(defaults=tmp_path / "routes")
    assert routes.destinations["wide"].concurrency == 5
    assert routes.destinations["wide"].settings == {"directory": f"{tmp_path}/wide"}
    for i in range(12):  # twelve patients: nothing waits for its patient's turn
        [mid] = [s.id for s in store.save_batch([Incoming(raw=b"MSH|", channel="test")])]
        made = [
            NewDelivery(d, "r", "hl7v2", "text/plain", b"x", f"P{i}") for d in ("wide", "narrow")
        ]
        store.finish_batch([Processed(mid, "routed", None, f"P{i}", made)])
    wide, narrow = Counting("wide"), Counting("narrow")

    async def main() -> None:
        stop = asyncio.Event()
        dispatcher = Dispatcher(
            store, routes, {"wide": wide, "narrow": narrow}, per_destination=2, idle_s=0.01
        )
        task = asyncio.create_task(dispatcher.run(stop))
        deadline = asyncio.get_running_loop().time() + 30
        while len(wide.delivered) + len(narrow.delivered) < 24:
            assert asyncio.get_running_loop().time() < deadline, "not delivered in 30 s"
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(main())
    assert wide.most == 5  # its own setting
    assert narrow.most == 2  # the dispatcher's default


@pytest.mark.parametrize("bad", [0, 65, "many"])
def test_a_concurrency_out_of_bounds_is_refused(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        DestinationSpec.model_validate({"type": "file", "concurrency": bad})
    (tmp_path / "routes").mkdir()
    text = ROUTES.format(tmp=tmp_path).replace("concurrency: 5", f"concurrency: {bad}")
    (tmp_path / "routes" / "r.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_routes(defaults=tmp_path / "routes")
    assert "concurrency" in str(info.value)


def test_two_processes_split_each_width_and_keep_it_together(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    """``engine serve``'s worker processes (``share``): each takes its part of a destination's
    width, so that together they hold no more than its ``concurrency``; a destination of width
    1 (a receiver that takes one connection) is delivered to by the first only."""
    routes_text = ROUTES.replace("concurrency: 5", "concurrency: 1").replace(
        "directory: {tmp}/narrow", "directory: {tmp}/narrow\n    concurrency: 5"
    )
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yaml").write_text(routes_text.format(tmp=tmp_path))
    routes = load_routes(defaults=tmp_path / "routes")
    for i in range(12):
        [mid] = [s.id for s in store.save_batch([Incoming(raw=b"MSH|", channel="test")])]
        made = [
            NewDelivery(d, "r", "hl7v2", "text/plain", b"x", f"P{i}") for d in ("wide", "narrow")
        ]
        store.finish_batch([Processed(mid, "routed", None, f"P{i}", made)])
    one, five = Counting("wide"), Counting("narrow")  # shared: what both processes hold at once
    mine: list[list[str]] = [[], []]

    class Noting(MemoryDestination):
        """Passes to the shared counter, noting which process delivered."""

        def __init__(self, inner: Counting, who: int) -> None:
            super().__init__(inner.name)
            self.inner, self.who = inner, who

        async def deliver(self, payload: Payload) -> DeliveryResult:
            mine[self.who].append(self.inner.name)
            return await self.inner.deliver(payload)

    async def main() -> None:
        stop = asyncio.Event()
        dispatchers = [
            Dispatcher(
                store,
                routes,
                {"wide": Noting(one, who), "narrow": Noting(five, who)},
                idle_s=0.01,
                share=(who, 2),
            )
            for who in (0, 1)
        ]
        assert dispatchers[0].not_mine == [] and dispatchers[1].not_mine == ["wide"]
        tasks = [asyncio.create_task(d.run(stop)) for d in dispatchers]
        deadline = asyncio.get_running_loop().time() + 30
        while len(one.delivered) + len(five.delivered) < 24:
            assert asyncio.get_running_loop().time() < deadline, "not delivered in 30 s"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert one.most == 1  # width 1 kept, though two processes deliver
    assert five.most <= 5  # 3 + 2
    assert "wide" not in mine[1]  # the second process leaves the width-1 destination alone
    assert len(one.delivered) == len(five.delivered) == 12


def test_an_mllp_destination_is_the_first_processs_alone() -> None:
    """An MLLP destination holds one connection (engine/adapters/mllp/client.py): of two worker
    processes only the first delivers to it, at its whole width, so a receiver that takes one
    connection gets one from the engine; a destination of many connections is each process's."""
    from types import SimpleNamespace

    from engine.adapters.mllp.client import MLLPDestination, MllpDestination
    from engine.flow.deliver import _widths

    mllp = MLLPDestination("lab", MllpDestination(host="127.0.0.1", port=2576))
    files = MemoryDestination("files")
    routes = SimpleNamespace(destinations={})  # no concurrency set in the route file
    first = _widths(routes, {"lab": mllp, "files": files}, 8, (0, 2))  # type: ignore[arg-type]
    second = _widths(routes, {"lab": mllp, "files": files}, 8, (1, 2))  # type: ignore[arg-type]
    assert first == ({"lab": 8, "files": 8}, [])
    assert second == ({"files": 8}, ["lab"])
    # one process alone takes it as before
    assert _widths(routes, {"lab": mllp}, 8, (0, 1)) == ({"lab": 8}, [])  # type: ignore[arg-type]
