"""Nodes and takeover: a claim whose owner's heartbeat stopped (or whose owner is gone) is
released at once, a live node's never; a node thought dead records no late outcome over the new
owner's; a clean stop gives its claims back; a singleton run is taken by one node. On SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from engine.store import Incoming, NewDelivery, Outcome, Processed, SqlMessageStore
from engine.store.tables import job_runs, nodes


def _received(store: SqlMessageStore, patient: str, n: int = 1) -> list[int]:
    stored = store.save_batch(
        [Incoming(raw=b"MSH|", channel="test", patient_key=patient) for _ in range(n)]
    )
    return [s.id for s in stored]


def _routed(store: SqlMessageStore, patient: str) -> int:
    [mid] = _received(store, patient)
    delivery = NewDelivery("dest", "r", "hl7v2", "text/plain", b"x", patient)
    store.finish_batch([Processed(mid, "routed", None, patient, [delivery])])
    return mid


def _stop_heart(store: SqlMessageStore, node: str, ago_s: float = 60) -> None:
    """The node's last heartbeat ``ago_s`` seconds ago (it was killed then)."""
    with store.db_engine.begin() as conn:
        conn.execute(
            update(nodes)
            .where(nodes.c.id == node)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(seconds=ago_s))
        )


def test_a_dead_nodes_claims_are_taken_over_and_a_live_nodes_are_not(
    store: SqlMessageStore,
) -> None:
    dead = store.register_node("worker")
    live = store.register_node("worker")
    assert dead != live and dead.count(":") == 2  # host:pid:random
    [d1, d2] = _received(store, "DEAD", 2)
    [l1] = _received(store, "LIVE")
    assert [m for m, _, _ in store.claim_received(dead, limit=1)] == [d1]
    assert [m for m, _, _ in store.claim_received(live, limit=10)] == [l1]  # d2 waits behind d1
    r1, r2 = _routed(store, "DR"), _routed(store, "LR")
    assert {d.message_id for d in store.claim_due_deliveries(10, owner=dead)} == {r1, r2}
    # the dead node's patients are blocked: its claims hold them
    assert store.claim_received(live) == [] and store.claim_due_deliveries(10) == []

    assert store.take_over().nodes == ()  # both beat recently: nothing taken
    _stop_heart(store, dead, ago_s=11)
    assert store.heartbeat(live)
    taken = store.take_over()
    assert taken.nodes == (dead,) and (taken.messages, taken.deliveries) == (1, 2)
    # at once, not after 5 or 10 minutes: the dead node's message and deliveries are free
    assert [m for m, _, _ in store.claim_received(live)] == [d1]
    assert {d.message_id for d in store.claim_due_deliveries(10, owner=live)} == {r1, r2}
    assert store.take_over().nodes == ()  # the live node's claims stay its own


def test_claims_of_an_owner_without_a_row_are_taken_over(store: SqlMessageStore) -> None:
    """Claims made before nodes existed (``host:pid``), or by a node whose row is gone."""
    [mid] = _received(store, "P")
    store.claim_received("oldhost:123")
    store.claim_due_deliveries(10, owner="oldhost:123")
    rid = _routed(store, "Q")
    store.claim_due_deliveries(10, owner="oldhost:123")
    taken = store.take_over()
    assert taken.nodes == ("oldhost:123",) and (taken.messages, taken.deliveries) == (1, 1)
    assert [m for m, _, _ in store.claim_received("n")] == [mid]
    assert [d.message_id for d in store.claim_due_deliveries(10)] == [rid]


def test_a_late_outcome_of_a_node_thought_dead_is_not_recorded(store: SqlMessageStore) -> None:
    a = store.register_node("worker")
    b = store.register_node("worker")
    first = _routed(store, "P")
    second = _routed(store, "P")
    [da] = store.claim_due_deliveries(10, owner=a)
    _stop_heart(store, a)
    store.take_over()
    [db] = store.claim_due_deliveries(10, owner=b)
    assert db.id == da.id
    store.record_outcomes([Outcome(da.id, False, "late", None)], owner=a)  # a comes back
    store.release_claims([da.id], owner=a)  # nor can it give back b's claim
    assert store.get(first).deliveries[0].state == "pending"  # type: ignore[union-attr]
    assert store.claim_due_deliveries(10) == []  # still b's
    store.record_outcomes([Outcome(db.id, True)], owner=b)
    assert store.get(first).state == "delivered"  # type: ignore[union-attr]
    assert store.get(second).deliveries[0].state == "pending"  # type: ignore[union-attr]


def test_a_clean_stop_gives_its_claims_back_at_once(store: SqlMessageStore) -> None:
    node = store.register_node("worker")
    [mid] = _received(store, "P")
    store.claim_received(node)
    rid = _routed(store, "Q")
    store.claim_due_deliveries(10, owner=node)
    given = store.forget_node(node)
    assert (given.messages, given.deliveries) == (1, 1)
    assert [m for m, _, _ in store.claim_received("other")] == [mid]
    assert [d.message_id for d in store.claim_due_deliveries(10)] == [rid]
    with store.db_engine.connect() as conn:
        assert conn.execute(select(nodes.c.id)).scalars().all() == []


def test_a_node_whose_row_is_gone_learns_it_at_its_heartbeat(store: SqlMessageStore) -> None:
    node = store.register_node("worker")
    assert store.heartbeat(node)
    store.forget_node(node)
    assert not store.heartbeat(node)  # told, and registered again
    assert store.heartbeat(node)


def test_a_scheduled_run_is_taken_by_one_node(store: SqlMessageStore) -> None:
    at = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    assert store.start_job_run("eligibility-nightly", at, "a")
    assert not store.start_job_run("eligibility-nightly", at, "b")
    assert store.start_job_run("eligibility-nightly", at + timedelta(days=1), "b")
    assert store.finish_job_run("eligibility-nightly", at, "ok: 3 checked", "a")
    with store.db_engine.connect() as conn:
        rows = conn.execute(select(job_runs).order_by(job_runs.c.run_at)).all()
    assert [(r.node, r.outcome) for r in rows] == [("a", "ok: 3 checked"), ("b", None)]
    assert rows[0].finished_at is not None and rows[1].finished_at is None
