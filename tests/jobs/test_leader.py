"""Leader election (engine/jobs/leader.py): of the nodes on one PostgreSQL database one leads,
through a session advisory lock; a leader whose lock connection is gone steps down at once and
another node takes over at its next poll. On SQLite the one node leads from the start."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from engine.jobs.leader import Leadership, lock_key
from engine.metrics import EngineMetrics
from engine.store import create_db_engine
from tests.metrics_support import parse


def _leader_gauge(metrics: EngineMetrics, node: str) -> float:
    return parse(metrics.exposition().decode())[f'engine_leader{{node="{node}"}}']


def test_the_lock_key_is_the_schema_s() -> None:
    """Nodes of one engine (one schema) elect one leader; two engines in two schemas of one
    database elect one each."""
    assert lock_key("test", "public") == lock_key("test", "public")
    assert lock_key("test", "public") != lock_key("test", "t_other")
    assert lock_key("test", "public") != lock_key("prod", "public")
    assert -(2**63) <= lock_key("test", "public") < 2**63


def test_the_leader_gauge_is_1_for_the_term_and_0_before_and_after(tmp_path: Path) -> None:
    db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    metrics = EngineMetrics()
    changes: list[bool] = []

    def on_change(leading: bool) -> None:
        changes.append(leading)
        metrics.record_leader("solo", leading)

    leadership = Leadership(db, "solo", on_change=on_change)
    gauge: list[float] = []

    async def lead(term: asyncio.Event) -> None:
        gauge.append(_leader_gauge(metrics, "solo"))
        await term.wait()

    async def main() -> None:
        gauge.append(_leader_gauge(metrics, "solo"))
        stop = asyncio.Event()
        task = asyncio.create_task(leadership.run(stop, lead))
        while len(gauge) < 2:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
        gauge.append(_leader_gauge(metrics, "solo"))

    asyncio.run(main())
    assert gauge == [0, 1, 0] and changes == [False, True, False]
    db.dispose()


def test_a_failing_observer_never_stops_a_term(tmp_path: Path) -> None:
    db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")

    def broken(_leading: bool) -> None:
        raise OSError("metrics file gone")

    leadership = Leadership(db, "solo", on_change=broken)
    led: list[bool] = []

    async def lead(term: asyncio.Event) -> None:
        led.append(leadership.leading)

    asyncio.run(leadership.run(asyncio.Event(), lead))
    assert led == [True] and not leadership.leading
    db.dispose()


def test_on_sqlite_the_one_node_leads_at_once(tmp_path: Path) -> None:
    db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    leadership = Leadership(db, "solo")
    led = asyncio.Event()

    async def lead(term: asyncio.Event) -> None:
        led.set()
        await term.wait()

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(leadership.run(stop, lead))
        await asyncio.wait_for(led.wait(), 2)
        assert leadership.leading
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert not leadership.leading and leadership.terms == 1
    db.dispose()


@pytest.mark.postgres
def test_one_node_leads_and_another_takes_over_when_its_connection_dies(
    postgres_schema_url: str,
) -> None:
    engines = [create_db_engine(postgres_schema_url) for _ in range(2)]
    metrics = EngineMetrics()  # engine_leader{node}, as each worker records it
    nodes = [
        Leadership(
            e,
            f"node-{n}",
            poll_s=0.3,
            check_s=0.3,
            on_change=partial(metrics.record_leader, f"node-{n}"),
        )
        for n, e in enumerate(engines)
    ]
    terms: list[tuple[str, str]] = []  # (node, "start" | "end")

    def lead_as(name: str):  # type: ignore[no-untyped-def]
        async def lead(term: asyncio.Event) -> None:
            terms.append((name, "start"))
            try:
                await term.wait()
            finally:
                terms.append((name, "end"))

        return lead

    async def leaders(seconds: float) -> list[int]:
        """How many nodes led at once, sampled for ``seconds``."""
        counts = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            counts.append(sum(n.leading for n in nodes))
            await asyncio.sleep(0.05)
        return counts

    async def main() -> tuple[float, str, str]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(n.run(stop, lead_as(n.node))) for n in nodes]
        try:
            counts = await leaders(2.0)
            assert max(counts) == 1 and counts[-1] == 1, counts  # never two, then one
            first = next(n for n in nodes if n.leading)
            other = next(n for n in nodes if n is not first)
            assert _leader_gauge(metrics, first.node) == 1
            assert _leader_gauge(metrics, other.node) == 0
            # the leader's lock connection dies (as a kill -9 of its process closes it)
            with engines[0].begin() as conn:
                killed = conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                        "AND ((classid::bigint << 32) | objid::bigint) = :key"
                    ),
                    {"key": first._key},
                ).all()
            assert killed == [(True,)]
            started = time.monotonic()
            while not other.leading:
                assert time.monotonic() - started < 10, "no node took over"
                await asyncio.sleep(0.05)
            took = time.monotonic() - started
            assert not first.leading  # it stepped down: its check found the connection gone
            assert _leader_gauge(metrics, first.node) == 0
            assert _leader_gauge(metrics, other.node) == 1
            assert (first.node, "end") in terms
            counts = await leaders(1.0)
            assert max(counts) == 1, counts
            return took, first.node, other.node
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)

    took, first, other = asyncio.run(main())
    assert took < 5
    # the first leader's jobs ended before the next leader's started
    assert terms[:3] == [(first, "start"), (first, "end"), (other, "start")]
    for e in engines:
        e.dispose()


@pytest.mark.postgres
def test_a_node_that_stops_lets_another_lead(postgres_schema_url: str) -> None:
    """A clean stop unlocks at once: the other node leads at its next poll."""
    engines: list[Engine] = [create_db_engine(postgres_schema_url) for _ in range(2)]
    one, two = (Leadership(e, f"n{n}", poll_s=0.2, check_s=0.2) for n, e in enumerate(engines))

    async def idle(term: asyncio.Event) -> None:
        await term.wait()

    async def main() -> None:
        stop_one, stop_two = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(one.run(stop_one, idle))
        while not one.leading:
            await asyncio.sleep(0.05)
        second = asyncio.create_task(two.run(stop_two, idle))
        await asyncio.sleep(0.6)
        assert one.leading and not two.leading
        stop_one.set()
        await asyncio.wait_for(first, 10)
        started = time.monotonic()
        while not two.leading:
            assert time.monotonic() - started < 3
            await asyncio.sleep(0.05)
        stop_two.set()
        await asyncio.wait_for(second, 10)

    asyncio.run(main())
    for e in engines:
        e.dispose()


def test_a_try_that_answers_too_late_lets_go_of_the_lock(tmp_path: Path) -> None:
    """A lock taken by a try the node had given up on (the database slow) is let go, not kept
    by a node that does not lead (no node could lead then until its process ended)."""
    db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    leadership = Leadership(db, "slow", check_timeout_s=0.05)
    held = object()
    let_go: list[object] = []

    def slow_try() -> object:
        time.sleep(0.3)
        return held

    leadership._try_lock = slow_try  # type: ignore[method-assign,assignment]
    leadership._let_go = let_go.append  # type: ignore[method-assign,assignment]

    async def main() -> object:
        got = await leadership._campaign()
        await asyncio.sleep(0.6)
        return got

    assert asyncio.run(main()) is None
    assert let_go == [held]
    db.dispose()
