"""Retention in short transactions (engine/jobs/retention.py): tens of thousands of old
delivered messages (each with a delivery) purged in batches, each its own transaction, none
over the 100 ms budget and none over MAX_BATCH rows; everything old and delivered gone, the rest
kept. On SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from engine.jobs.retention import (
    BUDGET_S,
    DUTY,
    LOCK_LIMIT_FLOOR_S,
    LOCK_LIMIT_SHARE,
    MAX_BATCH,
    MAX_PAUSE_S,
    MIN_BATCH,
    PAUSE_S,
    purge_in_batches,
)
from engine.store import SqlMessageStore
from engine.store.messages import Purged
from engine.store.tables import deliveries, messages
from tests.jobs.retention_support import delivered

OLD = 40_000
KEPT_RECENT = 300
KEPT_DEAD = 200


def _seed(store: SqlMessageStore) -> None:
    """OLD delivered messages from 60 days ago, each with its delivery; recent delivered ones
    and old dead ones (never purged)."""
    long_ago = datetime.now(UTC) - timedelta(days=60)
    now = datetime.now(UTC)

    def message(n: int, state: str, at: datetime) -> dict[str, object]:
        return {
            "received_at": at,
            "channel": "mllp",
            "peer": "",
            "kind": "hl7v2",
            "size": 10,
            "raw": b"MSH|^~\\&|X",
            "control_id": f"R{n}",
            "dedupe_key": f"seed|R{n}",
            "patient_key": f"CLINIC|MRN{n % 500}",
            "state": state,
            "updated_at": at,
        }

    rows = (
        [message(n, "delivered", long_ago) for n in range(OLD)]
        + [message(OLD + n, "delivered", now) for n in range(KEPT_RECENT)]
        + [message(OLD + KEPT_RECENT + n, "dead", long_ago) for n in range(KEPT_DEAD)]
    )
    with store.db_engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(insert(messages), rows[start : start + 5000])
        ids = list(conn.execute(select(messages.c.id).order_by(messages.c.id)).scalars())
        for start in range(0, len(ids), 5000):
            conn.execute(
                insert(deliveries),
                [delivered(mid, long_ago) for mid in ids[start : start + 5000]],
            )


def _count(store: SqlMessageStore, table: object) -> int:
    with store.db_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


class _Timed:
    """The store, each batch's range of ids, purged count, lock hold and whole call recorded."""

    def __init__(self, store: SqlMessageStore) -> None:
        self.store = store
        self.db_engine = store.db_engine
        self.calls: list[tuple[tuple[int, int] | None, int]] = []
        self.times: list[float] = []
        self.calls_s: list[float] = []

    def purge_range(
        self,
        older_than: timedelta,
        id_range: tuple[int, int] | None = None,
        lock_limit_s: float | None = None,
    ) -> Purged:
        started = time.perf_counter()
        batch = self.store.purge_range(older_than, id_range=id_range, lock_limit_s=lock_limit_s)
        self.calls_s.append(time.perf_counter() - started)
        self.times.append(batch.held_s)
        self.calls.append((id_range, batch.rows))
        return batch


def test_tens_of_thousands_purged_in_short_batches(
    store: SqlMessageStore, caplog: pytest.LogCaptureFixture
) -> None:
    _seed(store)
    timed = _Timed(store)
    with caplog.at_level(logging.WARNING, logger="engine.jobs.retention"):
        report = purge_in_batches(timed, timedelta(days=30), duty=1)  # pauses: below

    assert report.purged == OLD  # everything old and delivered
    assert _count(store, messages) == KEPT_RECENT + KEPT_DEAD  # the rest kept
    assert _count(store, deliveries) == KEPT_RECENT + KEPT_DEAD
    assert report.batches == len(timed.calls) >= OLD // MAX_BATCH
    ranges = [r for r, _ in timed.calls]
    assert all(r is not None and 0 < r[1] - r[0] <= MAX_BATCH for r in ranges)
    assert all(r is not None and purged <= r[1] - r[0] for r, purged in timed.calls)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False) if a and b)
    # a batch that purged rows held its locks for part of its call, never longer
    assert all(
        0 < held <= call
        for held, call, (_, n) in zip(timed.times, timed.calls_s, timed.calls, strict=True)
        if n
    )
    # the measured bound: the batches' locks held within the budget. Timed by the wall
    # clock on a machine shared with other work, a batch can be stretched by the scheduler: 95 %
    # of them must be within it (on a quiet machine all are); each one over it is logged
    times = sorted(timed.times)
    p95 = times[int(len(times) * 0.95) - 1]
    figure = (
        f"{report.batches} batches, p50 {times[len(times) // 2] * 1000:.1f} ms, p95 "
        f"{p95 * 1000:.1f} ms, slowest {report.slowest_s * 1000:.1f} ms "
        f"({report.slowest_rows} rows), over budget {report.over_budget}"
    )
    print(f"\n{figure}")  # noqa: T201 (the measured figure, shown with -s)
    assert p95 <= BUDGET_S, figure
    assert caplog.text.count("over its budget") == report.over_budget <= report.batches // 20
    assert purge_in_batches(timed, timedelta(days=30), duty=1).purged == 0  # nothing left


def test_a_stop_ends_the_purge_between_batches(store: SqlMessageStore) -> None:
    _seed(store)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2  # two batches, then the node steps down

    report = purge_in_batches(store, timedelta(days=30), stop=stop)
    assert report.batches == 2 and 0 < report.purged < OLD


class _Clocked:
    """A store whose every batch takes a set time on a clock the test keeps, and purges its
    range's width; the pauses between batches advance the same clock."""

    def __init__(self, takes: list[float]) -> None:
        self.db_engine = None
        self.now = 0.0
        self.takes = takes
        self.worked = 0.0
        self.pauses: list[float] = []

    def purge_range(
        self,
        older_than: timedelta,
        id_range: tuple[int, int] | None = None,
        lock_limit_s: float | None = None,
    ) -> Purged:
        took = self.takes[len(self.pauses) % len(self.takes)]
        self.now += took
        self.worked += took
        assert id_range is not None
        # the locks held for the last third of the call (the rest: reading, waiting in line)
        return Purged(id_range[1] - id_range[0], held_s=took / 3)

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_the_purge_works_at_most_its_duty_of_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import engine.jobs.retention as retention

    fake = _Clocked([0.030, 0.001, 0.080, 0.010])
    monkeypatch.setattr(retention, "_bounds", lambda db_engine, older_than: (0, 200_000))
    report = purge_in_batches(fake, timedelta(days=30), clock=lambda: fake.now, sleep=fake.sleep)  # type: ignore[arg-type]
    assert report.purged == 200_000 and len(fake.pauses) == report.batches - 1 > 10
    # each pause at least the floor, and long enough that work is DUTY of the time
    assert min(fake.pauses) >= PAUSE_S
    assert fake.worked / fake.now == pytest.approx(DUTY, rel=0.1)
    # a batch of 80 ms is followed by 80 * (1 - DUTY) / DUTY ms
    assert max(fake.pauses) == pytest.approx(0.080 * (1 - DUTY) / DUTY)
    # a batch stretched to 1 s (a lock wait) is followed by 2 s, not 5.7: a stop is asked then
    slow = _Clocked([1.0])
    purge_in_batches(slow, timedelta(days=30), clock=lambda: slow.now, sleep=slow.sleep)  # type: ignore[arg-type]
    assert slow.pauses and max(slow.pauses) == MAX_PAUSE_S
    with pytest.raises(ValueError, match="duty"):
        purge_in_batches(fake, timedelta(days=30), duty=0)  # type: ignore[arg-type]


def test_the_budget_judges_the_locks_held_not_the_whole_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch of 240 ms that held its locks 80 ms is within the 100 ms budget (it waited in
    line or read its candidates the rest); one of 360 ms that held them 120 ms is over it. The
    pace still follows the whole call."""
    import engine.jobs.retention as retention

    monkeypatch.setattr(retention, "_bounds", lambda db_engine, older_than: (0, 10_000))
    fake = _Clocked([0.240, 0.360])
    report = purge_in_batches(fake, timedelta(days=30), clock=lambda: fake.now, sleep=fake.sleep)  # type: ignore[arg-type]
    assert report.batches > 2
    assert report.over_budget == report.batches // 2  # the 360 ms ones
    assert report.slowest_s == pytest.approx(0.120) and report.slowest_call_s == pytest.approx(
        0.360
    )
    # paced by the call: after 240 ms, 240 * (1 - DUTY) / DUTY ms, capped (80 ms would be 920)
    assert min(fake.pauses) == MAX_PAUSE_S


class _Cancelling:
    """A store on which a batch wider than ``widest`` ids runs past its lock limit (PostgreSQL
    cancels it: nothing purged) and so does any batch holding id ``stuck``; the others purge
    their range's width. Each call's range and limit are recorded."""

    def __init__(self, widest: int, stuck: int = -1) -> None:
        self.db_engine = None
        self.widest = widest
        self.stuck = stuck
        self.calls: list[tuple[tuple[int, int], float | None, bool]] = []

    def purge_range(
        self,
        older_than: timedelta,
        id_range: tuple[int, int] | None = None,
        lock_limit_s: float | None = None,
    ) -> Purged:
        assert id_range is not None
        after, upto = id_range
        cancelled = upto - after > self.widest or after < self.stuck <= upto
        self.calls.append((id_range, lock_limit_s, cancelled))
        if cancelled:
            return Purged(0, held_s=lock_limit_s or 0.0, cancelled=True)
        return Purged(upto - after, held_s=0.001)


def test_a_cancelled_batch_is_tried_again_narrower_from_the_same_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import engine.jobs.retention as retention

    monkeypatch.setattr(retention, "_bounds", lambda db_engine, older_than: (0, 50_000))
    fake = _Cancelling(widest=700)
    report = purge_in_batches(fake, timedelta(days=30), duty=1, sleep=lambda s: None)  # type: ignore[arg-type]
    assert report.purged == 50_000 and report.left == 0
    # every batch was given the limit: PostgreSQL's statement_timeout
    assert {limit for _, limit, _ in fake.calls} == {BUDGET_S * LOCK_LIMIT_SHARE}
    # never below its floor, whatever the budget (a tiny one would cancel every statement)
    tiny = _Cancelling(widest=MAX_BATCH)
    purge_in_batches(tiny, timedelta(days=30), budget_s=0.001, duty=1, sleep=lambda s: None)  # type: ignore[arg-type]
    assert {limit for _, limit, _ in tiny.calls} == {LOCK_LIMIT_FLOOR_S}
    cancels = [n for n, (_, _, c) in enumerate(fake.calls) if c]
    assert report.cancelled == len(cancels) > 0
    for n in cancels:  # the next batch starts where the cancelled one did, a quarter as wide
        (after, upto), _, _ = fake.calls[n]
        (again_after, again_upto), _, _ = fake.calls[n + 1]
        assert again_after == after
        assert again_upto - again_after == max(MIN_BATCH, (upto - after) // 4)
    # the walk covered every id once among the batches that were not cancelled
    done = sorted(r for r, _, c in fake.calls if not c)
    assert done[0][0] == 0 and done[-1][1] == 50_000
    assert all(a[1] == b[0] for a, b in zip(done, done[1:], strict=False))


def test_a_range_cancelled_twice_at_the_smallest_width_is_left_for_the_next_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import engine.jobs.retention as retention

    monkeypatch.setattr(retention, "_bounds", lambda db_engine, older_than: (0, 10_000))
    fake = _Cancelling(widest=MAX_BATCH, stuck=4_321)
    with caplog.at_level(logging.WARNING, logger="engine.jobs.retention"):
        report = purge_in_batches(fake, timedelta(days=30), duty=1, sleep=lambda s: None)  # type: ignore[arg-type]
    assert report.left == 1
    left = [r for r, _, c in fake.calls if c and r[1] - r[0] == MIN_BATCH]
    assert len(left) == 2 and left[0] == left[1]  # the same range, twice, then moved past
    after, upto = left[0]
    assert after < 4_321 <= upto
    assert report.purged == 10_000 - MIN_BATCH  # everything else
    assert "left for the next run" in caplog.text
