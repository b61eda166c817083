"""The receiver's supervisor of its worker processes (engine/service.py, ``Engine._supervise``),
on fake processes and a fast clock: each dead one is started again on its own schedule, without
holding up the others; one that keeps dying as it starts waits longer each time (1, 2, 4 ...),
one that lived a while is started again after 1 s; one the system refused to start is tried
again. The real processes, killed for real, are tests/flow/test_worker_processes.py's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import engine.service as service
from engine.service import Engine

#: the test's unit of time: the back-off's 1 s is one tick
TICK = 0.1


class FakeProcess:
    """A worker process that lives until ``dies_at`` (monotonic), or was never started."""

    def __init__(
        self, index: int, dies_at: float | None, started: bool = True, code: int = 1
    ) -> None:
        self.index, self.dies_at, self.started, self.code = index, dies_at, started, code
        self.pid = 1000 + index if started else None
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        if not self.started:
            return False
        alive = self.dies_at is None or time.monotonic() < self.dies_at
        self.exitcode = None if alive else self.code  # 1: it failed; -9: it was killed
        return alive


class Supervised:
    """An ``Engine`` with only what ``_supervise`` uses; ``plan`` says, per index, how each
    start of it goes: a lifetime in ticks before it fails (None: lives on), ("killed", ticks)
    before a signal kills it, or "refused"."""

    def __init__(self, plan: dict[int, list[Any]]) -> None:
        self.engine = Engine.__new__(Engine)
        self.plan = plan
        self.starts: list[tuple[int, float]] = []
        self.t0 = time.monotonic()
        self.engine._reload_workers = asyncio.Event()
        self.engine._start_worker = self.start  # type: ignore[method-assign,assignment]
        self.engine._stop_workers = lambda procs: None  # type: ignore[method-assign]

    def start(self, index: int) -> FakeProcess:
        now = time.monotonic()
        self.starts.append((index, (now - self.t0) / TICK))
        how = self.plan[index].pop(0) if self.plan[index] else None
        if how == "refused":
            return FakeProcess(index, None, started=False)
        if isinstance(how, tuple):
            return FakeProcess(index, now + how[1] * TICK, code=-9)
        return FakeProcess(index, None if how is None else now + how * TICK)

    def times(self, index: int) -> list[float]:
        return [t for i, t in self.starts if i == index]


@pytest.fixture(autouse=True)
def fast_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "SUPERVISE_S", TICK / 10)
    monkeypatch.setattr(service, "STABLE_S", 10 * TICK)
    monkeypatch.setattr(
        service, "backoff_s", lambda n, base_s, cap_s: min(cap_s, base_s * 2**n) * TICK
    )


def _run(sup: Supervised, ticks: float) -> None:
    async def main() -> None:
        first = [sup.start(i) for i in sorted(sup.plan)]
        task = asyncio.create_task(sup.engine._supervise(first))  # type: ignore[arg-type]
        await asyncio.sleep(ticks * TICK)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_process_that_dies_as_it_starts_waits_longer_each_time_and_the_other_is_not_held() -> (
    None
):
    # worker 0 dies half a tick after each start; worker 1 lives 3 ticks, then lives on
    sup = Supervised({0: [0.5] * 10, 1: [3, None]})
    _run(sup, 19)
    zero = sup.times(0)
    gaps = [b - a for a, b in zip(zero, zero[1:], strict=False)]
    # started again 1, 2, 4, 8 ticks after each death (plus the half tick it lived)
    assert len(zero) == 5, zero
    for gap, wait in zip(gaps, (1, 2, 4, 8), strict=False):
        assert wait + 0.5 <= gap < wait + 0.5 + 0.9, gaps
    # worker 1, dead at tick 3, is started again 1 tick later while worker 0 waits out its 4 and 8
    one = sup.times(1)
    assert len(one) == 2 and 4 <= one[1] < 4.9, one


def test_a_process_that_lived_a_while_starts_again_after_one_tick() -> None:
    # dies as it starts twice (1, then 2 ticks), then lives 12 ticks (past STABLE_S), then dies
    sup = Supervised({0: [0.2, 0.2, 12, None]})
    _run(sup, 22)
    zero = sup.times(0)
    assert len(zero) == 4, zero
    assert 1 + 12 <= zero[3] - zero[2] < 1 + 12 + 0.9  # 1 tick after its death, not 4


def test_a_start_the_system_refused_is_tried_again() -> None:
    sup = Supervised({0: ["refused", "refused", None], 1: [None]})
    _run(sup, 6)
    zero = sup.times(0)
    assert len(zero) == 3, zero  # refused at 0, again at 1, then running from 3
    assert 1 <= zero[1] < 1.9 and 3 <= zero[2] < 3.9
    assert sup.times(1) == [pytest.approx(0, abs=0.5)]  # never touched


def test_a_process_killed_by_a_signal_starts_again_after_one_tick_each_time() -> None:
    # killed (kill -9, the OOM killer) half a tick after each start: no doubling
    sup = Supervised({0: [("killed", 0.5)] * 6 + [None]})
    _run(sup, 8)
    zero = sup.times(0)
    gaps = [b - a for a, b in zip(zero, zero[1:], strict=False)]
    assert len(zero) >= 5 and all(1.5 <= g < 1.5 + 0.9 for g in gaps), gaps


def test_a_refused_start_is_a_process_that_is_not_alive_and_needs_no_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real ``_start_worker`` when the system gives no process (EAGAIN): logged, returned
    not alive and without a pid, and ``_stop_workers`` passes over it."""
    from multiprocessing.process import BaseProcess

    def refuse(self: BaseProcess) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(BaseProcess, "start", refuse)
    engine = Engine.__new__(Engine)
    engine._running = None  # type: ignore[assignment]
    engine._pressure = None  # type: ignore[assignment]
    engine.metrics_dir = None  # type: ignore[assignment]
    proc = engine._start_worker(0)
    assert not proc.is_alive() and proc.pid is None and proc.exitcode is None
    engine._stop_workers([proc])  # nothing to terminate or join
