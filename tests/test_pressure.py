"""Under a burst the queue workers yield the database to the receiver's commits (ACKs first),
and at an ordinary rate they never wait."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.pressure import IngestPressure
from engine.store.db import WriteLock


def test_a_busy_writer_marks_the_receiver_saturated() -> None:
    shared = SimpleNamespace(value=0.0)
    pressure = IngestPressure(shared, threshold=0.5, window_s=0.1, hold_s=0.2)
    start = time.monotonic()
    # 80 ms of commits in a 100 ms window: saturated for the next 200 ms
    for i in range(8):
        pressure.committed(0.01, now=start + 0.0125 * (i + 1))
    # saturated until hold_s after the busy window closed (at the last commit, start + 0.1 s, or
    # an earlier one had the window opened before ``start``): in the commits' clock, not the wall's
    assert start + 0.2 < shared.value <= start + 0.1 + 0.2


def test_an_ordinary_rate_never_makes_the_workers_wait() -> None:
    shared = SimpleNamespace(value=0.0)
    pressure = IngestPressure(shared, threshold=0.5, window_s=0.1)
    start = time.monotonic()
    # 200 messages/s, one 2 ms commit each: the writer is busy 40% of the time
    for i in range(100):
        pressure.committed(0.002, now=start + 0.005 * (i + 1))
    assert shared.value == 0.0
    assert asyncio.run(pressure.yield_to()) == 0.0


def test_the_workers_wait_at_most_max_wait_then_go_on() -> None:
    shared = SimpleNamespace(value=time.monotonic() + 60)  # saturated for a minute
    pressure = IngestPressure(shared, max_wait_s=0.1)
    waited = asyncio.run(pressure.yield_to(poll_s=0.02))
    # it waited max_wait_s, then went on while the receiver is still saturated: never starved
    assert waited >= 0.09 and pressure.saturated()
    assert asyncio.run(IngestPressure(None).yield_to()) == 0.0  # no receiver beside it


def test_a_saturation_that_never_ends_pauses_the_workers_half_the_time_at_most() -> None:
    shared = SimpleNamespace(value=time.monotonic() + 60)  # saturated for a minute: a soak

    async def main() -> tuple[float, float, float, float]:
        pressure = IngestPressure(shared, max_wait_s=0.1)
        first = await pressure.yield_to(poll_s=0.02)
        right_after = await pressure.yield_to(poll_s=0.02)  # earned: as long unpaused
        await asyncio.sleep(first + 0.02)
        again = await pressure.yield_to(poll_s=0.02)  # the unpaused time is over
        # a second's worth of transactions, each asking first: paused at most half of it
        start, paused = time.monotonic(), 0.0
        while time.monotonic() - start < 1.0:
            paused += await pressure.yield_to(poll_s=0.02)
            await asyncio.sleep(0.005)  # the transaction itself
        return first, right_after, again, paused / (time.monotonic() - start)

    first, right_after, again, share = asyncio.run(main())
    assert first >= 0.09 and right_after == 0.0 and again >= 0.09
    assert 0.3 <= share <= 0.55, share


def test_a_saturation_that_lasts_past_a_burst_stops_pausing_the_workers() -> None:
    """A burst is paused for; a saturation longer than ``burst_s`` is a sustained rate and is
    not (the workers would fall behind it for good); once it has been gone for ``calm_s``, the
    next saturation is a new burst."""
    shared = SimpleNamespace(value=time.monotonic() + 60)

    async def main() -> list[float]:
        pressure = IngestPressure(shared, max_wait_s=0.05, max_share=1.0, burst_s=0.3, calm_s=0.5)
        waits = [await pressure.yield_to(poll_s=0.01)]  # the burst begins: paused
        await asyncio.sleep(0.35)  # still saturated, past burst_s
        waits.append(await pressure.yield_to(poll_s=0.01))  # a sustained rate: not paused
        waits.append(await pressure.yield_to(poll_s=0.01))
        shared.value = 0.0  # the load stops
        assert await pressure.yield_to() == 0.0
        await asyncio.sleep(0.6)  # calm for longer than calm_s
        shared.value = time.monotonic() + 60  # a new burst
        waits.append(await pressure.yield_to(poll_s=0.01))
        return waits

    first, late, later, new_burst = asyncio.run(main())
    assert first >= 0.04 and new_burst >= 0.04
    assert late == 0.0 and later == 0.0


def test_a_short_lull_does_not_make_a_sustained_rate_a_new_burst() -> None:
    shared = SimpleNamespace(value=time.monotonic() + 60)

    async def main() -> float:
        pressure = IngestPressure(shared, max_wait_s=0.05, max_share=1.0, burst_s=0.2, calm_s=0.5)
        await pressure.yield_to(poll_s=0.01)
        await asyncio.sleep(0.25)
        assert await pressure.yield_to(poll_s=0.01) == 0.0  # sustained
        shared.value = 0.0
        await asyncio.sleep(0.1)  # a lull shorter than calm_s
        shared.value = time.monotonic() + 60
        return await pressure.yield_to(poll_s=0.01)

    assert asyncio.run(main()) == 0.0


def test_max_share_is_a_fraction() -> None:
    import pytest

    with pytest.raises(ValueError, match="max_share"):
        IngestPressure(None, max_share=0.0)


def _turns(
    path: Path, first: tuple[str, bool], second: tuple[str, bool], *, shared: bool = False
) -> list[str]:
    """While a third writer holds the lock, ``first`` then ``second`` (name, priority) queue for
    it; the order in which all three got it. ``shared``: the three threads use one WriteLock
    (as the stores of one process do), else one each (as separate processes do)."""
    holder = WriteLock(path)
    order: list[str] = []
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.held():
            held.set()
            release.wait(5)
            order.append("holder")

    def take(name: str, priority: bool) -> None:
        with (holder if shared else WriteLock(path)).held(priority=priority):
            order.append(name)

    threads = [threading.Thread(target=hold)]
    threads[0].start()
    held.wait(5)
    for name, priority in (first, second):
        threads.append(threading.Thread(target=take, args=(name, priority)))
        threads[-1].start()
        time.sleep(0.05)  # queued (or waiting at the intent) before the next one comes
    release.set()
    for t in threads:
        t.join(5)
    return order


@pytest.mark.parametrize("shared", [False, True], ids=["one-each", "shared"])
def test_a_worker_already_queued_and_the_receiver_both_get_their_turn(
    tmp_path: Path, shared: bool
) -> None:
    order = _turns(tmp_path / "db.writelock", ("worker", False), ("receiver", True), shared=shared)
    # the worker queued first, so either may go first, but neither is left waiting (no deadlock
    # between the locks)
    assert order[0] == "holder"
    assert set(order[1:]) == {"worker", "receiver"}


@pytest.mark.parametrize("shared", [False, True], ids=["one-each", "shared"])
def test_a_worker_arriving_while_the_receiver_waits_goes_after_it(
    tmp_path: Path, shared: bool
) -> None:
    # the receiver waits for the write lock holding the intent (or, in one process, for its
    # turn among the threads): the worker goes after it
    order = _turns(tmp_path / "db.writelock", ("receiver", True), ("worker", False), shared=shared)
    assert order == ["holder", "receiver", "worker"]


def test_the_receivers_commits_report_their_wait_for_other_writers(tmp_path: Path) -> None:
    from engine.store import Incoming, SqlMessageStore, create_db_engine

    db = create_db_engine(f"sqlite:///{tmp_path / 'e.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    worker = WriteLock(tmp_path / "e.writelock")
    held = threading.Event()

    def hold() -> None:
        with worker.held():
            held.set()
            time.sleep(0.1)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    store.save_batch([Incoming(raw=b"x", channel="test")])  # waits for the "worker"
    t.join(5)
    # the time waited is known, so the receiver's pressure counts only its own work
    waited = store.last_commit_wait_s
    assert 0.05 <= waited < 5
    store.save_batch([Incoming(raw=b"y", channel="test")])
    assert store.last_commit_wait_s < waited  # no other writer this time: less wait reported
    db.dispose()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_stores_of_one_file_share_one_lock_and_give_its_files_back(tmp_path: Path) -> None:
    from engine.store import SqlMessageStore, create_db_engine
    from engine.store.rollups import Rollups

    db = create_db_engine(f"sqlite:///{tmp_path / 'e.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    rollups = Rollups(db, "UTC")
    other = create_db_engine(f"sqlite:///{tmp_path / 'e.db'}")
    assert store._write_lock is rollups._write_lock is SqlMessageStore(other)._write_lock
    other.dispose()
    db.dispose()
    del store, rollups

    # a store made and dropped leaves no descriptor open (a test suite makes thousands)
    def one(n: int) -> None:
        db = create_db_engine(f"sqlite:///{tmp_path / f's{n}.db'}")
        store = SqlMessageStore(db)
        store.migrate()
        with store._tx():
            pass
        db.dispose()

    one(0)
    gc.collect()
    before = _open_fds()
    for n in range(1, 21):
        one(n)
    gc.collect()
    assert _open_fds() - before < 5  # 40 before: two lock files a store, never closed
