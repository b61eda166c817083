"""The claims' fallback time-outs in the database's clock (engine/store/clock.py): two nodes on one
PostgreSQL whose hosts' clocks disagree by minutes.

Until 7 December a processing claim's time (``claimed_at``) and a delivery's lease end
(``claimed_until``) were written in the claiming host's clock and compared in another host's.
A node whose host ran 6 minutes behind wrote claims that the other node's 5-minute fallback
took back at once (and its worker processed them again); one running 11 minutes behind wrote
10-minute leases the other node took for run out, and sent the delivery a second time. A host
running ahead queued deliveries the others took for not due for minutes. Now each node writes
and compares them in the database's clock (its host's plus the offset it measured), so node B
sees node A's claims as the young claims they are."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from engine.store import Incoming, NewDelivery, Processed, SqlMessageStore, create_db_engine
from engine.store.clock import DbClock
from engine.store.db import utcnow
from engine.store.tables import messages
from tests.conftest import fresh_schema


def _skewed(by: timedelta):  # type: ignore[no-untyped-def]
    return lambda: utcnow() + by


@pytest.fixture
def two_engines() -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one new schema: node A's and node B's, each with its own clock."""
    with fresh_schema("clock") as url:
        a, b = create_db_engine(url), create_db_engine(url)
        SqlMessageStore(a).migrate()
        try:
            yield a, b
        finally:
            a.dispose()
            b.dispose()


def _node(db: Engine, skew: timedelta) -> SqlMessageStore:
    store = SqlMessageStore(db)
    store.clock.host = _skewed(skew)
    store.clock.measure()
    return store


def _database_now(db: Engine) -> datetime:
    with db.connect() as conn:
        value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return value


@pytest.mark.postgres
def test_a_host_minutes_off_reads_the_databases_time(two_engines: tuple[Engine, Engine]) -> None:
    a, _ = two_engines
    store = _node(a, timedelta(minutes=-7))
    assert abs(store.clock.offset - timedelta(minutes=7)) < timedelta(seconds=2)
    assert abs(store.now() - _database_now(a)) < timedelta(seconds=2)


@pytest.mark.postgres
def test_a_claim_by_a_host_behind_is_not_taken_back_as_stale(
    two_engines: tuple[Engine, Engine],
) -> None:
    a, b = two_engines
    node_a, node_b = _node(a, timedelta(minutes=-6)), _node(b, timedelta(0))
    [stored] = node_a.save_batch([Incoming(raw=b"MSH|", channel="test", patient_key="P1")])
    assert [m for m, _, _ in node_a.claim_received("node-a")] == [stored.id]
    # node B's 5-minute fallback: node A's claim is seconds old, whatever A's host says
    assert node_b.reclaim_stale(timedelta(minutes=5)) == 0
    with b.connect() as conn:
        row = conn.execute(select(messages.c.state, messages.c.claimed_by)).one()
    assert tuple(row) == ("processing", "node-a")


@pytest.mark.postgres
def test_a_lease_by_a_host_behind_is_not_taken_for_run_out(
    two_engines: tuple[Engine, Engine],
) -> None:
    a, b = two_engines
    node_a, node_b = _node(a, timedelta(minutes=-11)), _node(b, timedelta(0))
    [stored] = node_a.save_batch([Incoming(raw=b"MSH|", channel="test", patient_key="P1")])
    delivery = NewDelivery("dest", "r", "hl7v2", "text/plain", b"x", "P1")
    node_a.finish_batch([Processed(stored.id, "routed", None, "P1", [delivery])])
    [due] = node_a.claim_due_deliveries(10, lease=600)  # a claim without an owner: its lease
    # ends 10 minutes from now in the database's clock
    assert due.claimed_until is not None
    assert abs(due.claimed_until - (_database_now(a) + timedelta(minutes=10))) < timedelta(
        seconds=5
    )
    assert node_b.claim_due_deliveries(10) == []  # node B does not send it a second time


@pytest.mark.postgres
def test_a_delivery_queued_by_a_host_ahead_is_due_at_once_for_the_others(
    two_engines: tuple[Engine, Engine],
) -> None:
    a, b = two_engines
    node_a, node_b = _node(a, timedelta(minutes=9)), _node(b, timedelta(0))
    [stored] = node_a.save_batch([Incoming(raw=b"MSH|", channel="test", patient_key="P1")])
    node_a.claim_received("node-a")
    delivery = NewDelivery("dest", "r", "hl7v2", "text/plain", b"x", "P1")
    node_a.finish_batch([Processed(stored.id, "routed", None, "P1", [delivery])])
    assert [d.message_id for d in node_b.claim_due_deliveries(10)] == [stored.id]


def test_sqlite_is_one_hosts_file_and_its_clock_the_hosts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    store = SqlMessageStore(db)
    assert store.clock is DbClock.for_engine(db)  # one clock per database in a process
    store.clock.host = _skewed(timedelta(minutes=-3))
    assert store.clock.measure() == timedelta(0)  # nothing to measure: the host's clock
    assert abs(store.now() - (utcnow() - timedelta(minutes=3))) < timedelta(seconds=1)
    db.dispose()


@pytest.mark.postgres
def test_the_event_loop_never_waits_for_a_measurement(two_engines: tuple[Engine, Engine]) -> None:
    """On an event loop the last offset is used (none yet: the host's clock), with no round
    trip; the next call off the loop measures."""
    import asyncio

    a, _ = two_engines
    clock = DbClock(a, host=_skewed(timedelta(minutes=-4)))
    a.dispose()  # a measurement would open a connection: count them
    before = a.pool.checkedout() + a.pool.checkedin()

    async def on_loop() -> datetime:
        return clock.now()

    assert abs(asyncio.run(on_loop()) - (utcnow() - timedelta(minutes=4))) < timedelta(seconds=1)
    assert a.pool.checkedout() + a.pool.checkedin() == before  # no connection was opened
    assert abs(clock.now() - _database_now(a)) < timedelta(seconds=2)  # off the loop: measured


@pytest.mark.postgres
def test_a_thread_does_not_queue_behind_another_threads_measurement(
    two_engines: tuple[Engine, Engine],
) -> None:
    """A measurement is due while another thread is taking one (the database slow): the caller
    gets the last offset at once, instead of waiting and then measuring again itself."""
    import threading

    a, _ = two_engines
    clock = DbClock(a, host=_skewed(timedelta(minutes=-4)))
    clock.measure()
    clock._due = 0.0  # due again  # noqa: SLF001
    got: list[datetime] = []
    with clock._lock:  # another thread's measurement, in progress  # noqa: SLF001
        reader = threading.Thread(target=lambda: got.append(clock.now()))
        reader.start()
        reader.join(10)
        assert got, "now() waited for the other thread's measurement"
    assert abs(got[0] - _database_now(a)) < timedelta(seconds=2)  # the last offset


@pytest.mark.postgres
def test_alerts_on_a_host_ahead_still_see_dead_letters_and_queue_ages(
    two_engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    """The deliveries' times are the database's clock: so are the alert windows (review of 7
    December: a leader 9 minutes ahead never saw a dead letter in a 5-minute window)."""
    from engine.alerts.evaluate import evaluate_rules
    from engine.alerts.rules import AlertConfig, DeadLetters, QueueAge
    from engine.settings import Settings
    from engine.store import Outcome

    a, b = two_engines
    worker, leader = _node(a, timedelta(0)), _node(b, timedelta(minutes=9))
    for patient in ("P1", "P2"):
        [stored] = worker.save_batch([Incoming(raw=b"MSH|", channel="test", patient_key=patient)])
        delivery = NewDelivery(
            "lab" if patient == "P1" else "fhir", "r", "hl7v2", "t", b"x", patient
        )
        worker.finish_batch([Processed(stored.id, "routed", None, patient, [delivery])])
    [due] = [d for d in worker.claim_due_deliveries(10) if d.destination == "lab"]
    worker.record_outcomes([Outcome(due.id, False, "refused: AR", None)])
    rules = (
        DeadLetters(name="dead", kind="dead-letters", window_minutes=5, threshold=1),
        QueueAge(name="age", kind="queue-age", older_than_minutes=5),
    )
    found = evaluate_rules(
        AlertConfig(rules=rules), b, Settings(var_dir=tmp_path), now=leader.clock.host()
    ).findings
    by_rule = {f.rule: f for f in found}
    assert by_rule["dead"].raised  # seen, in a window 9 minutes ahead of the deliveries' times
    assert not by_rule["age"].raised  # the fhir delivery is seconds old, not 9 minutes
