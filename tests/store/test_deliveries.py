"""Deliveries queue per (destination, patient): only the head is claimable, settling it promotes
the next, claims are leased; and the backlog per destination. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from engine.store import (
    DestinationBacklog,
    Incoming,
    NewDelivery,
    Outcome,
    Processed,
    SqlMessageStore,
)
from engine.store.tables import deliveries


def _routed(store: SqlMessageStore, patient: str, destination: str = "dest") -> int:
    """A message routed to one destination for ``patient``: its id."""
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test")])
    delivery = NewDelivery(destination, "r", "hl7v2", "text/plain", b"x", patient)
    store.finish_batch([Processed(stored.id, "routed", None, patient, [delivery])])
    return stored.id


def _states(store: SqlMessageStore, mids: list[int]) -> list[str]:
    return [store.get(m).deliveries[0].state for m in mids]  # type: ignore[union-attr]


def test_only_the_head_of_each_patients_queue_is_claimable(store: SqlMessageStore) -> None:
    a1, a2, b1, a3 = (_routed(store, p) for p in ("A", "A", "B", "A"))
    assert _states(store, [a1, a2, b1, a3]) == ["pending", "waiting", "pending", "waiting"]
    assert store.counts()["deliveries_pending"] == 4
    claimed = store.claim_due_deliveries(10)
    assert [d.message_id for d in claimed] == [a1, b1]  # heads only, one per patient
    assert store.claim_due_deliveries(10) == []  # claimed heads are not claimed twice
    # a dead head lets the next one go, as a delivered one does; the one after still waits
    head = next(d for d in claimed if d.message_id == a1)
    store.record_outcomes([Outcome(head.id, False, "refused", None)])
    assert _states(store, [a1, a2, a3]) == ["dead", "pending", "waiting"]
    assert store.get(a1).state == "dead"  # type: ignore[union-attr]
    [second] = store.claim_due_deliveries(10)
    assert second.message_id == a2
    store.record_outcomes([Outcome(second.id, True)])
    assert _states(store, [a2, a3]) == ["delivered", "pending"]
    assert store.get(a2).state == "delivered"  # type: ignore[union-attr]


def test_a_head_settled_while_the_next_delivery_is_queued_never_strands_it(
    store: SqlMessageStore,
) -> None:
    """The dispatcher settling a patient's head and a processor queueing the patient's next
    delivery, at the same moment: the new one ends up pending (the head), never left waiting
    behind a head that is gone."""
    for i in range(15):
        patient = f"RACE{i}"
        _routed(store, patient)
        [head] = store.claim_due_deliveries(100)
        [nxt] = [s.id for s in store.save_batch([Incoming(raw=b"MSH|", channel="test")])]
        delivery = NewDelivery("dest", "r", "hl7v2", "text/plain", b"y", patient)
        barrier = threading.Barrier(2)

        def settle(head_id: int = head.id, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            store.record_outcomes([Outcome(head_id, True)])

        def queue(
            mid: int = nxt,
            d: NewDelivery = delivery,
            p: str = patient,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            store.finish_batch([Processed(mid, "routed", None, p, [d])])

        threads = [threading.Thread(target=settle), threading.Thread(target=queue)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        [d] = store.get(nxt).deliveries  # type: ignore[union-attr]
        assert d.state == "pending", f"round {i}: the next delivery was stranded ({d.state})"
        [again] = store.claim_due_deliveries(100)
        store.record_outcomes([Outcome(again.id, True)])


def _queue_of_three(store: SqlMessageStore, patient: str = "Q") -> list[int]:
    return [_routed(store, patient) for _ in range(3)]


def test_a_delivery_settled_twice_promotes_only_once(store: SqlMessageStore) -> None:
    mids = _queue_of_three(store)
    [head] = store.claim_due_deliveries(10)
    # sent twice (its lease ran out in flight): both outcomes come back
    store.record_outcomes([Outcome(head.id, True)])
    store.record_outcomes([Outcome(head.id, True)])
    assert _states(store, mids) == ["delivered", "pending", "waiting"]
    store.record_outcomes([Outcome(head.id, False, "late refusal", None)])  # a late dead
    assert _states(store, mids) == ["delivered", "pending", "waiting"]
    assert store.get(mids[0]).state == "delivered"  # type: ignore[union-attr]


def test_claims_are_renewed_only_while_ours_and_given_back(store: SqlMessageStore) -> None:
    mids = _queue_of_three(store)
    [head] = store.claim_due_deliveries(10, lease=600)
    assert head.claimed_until is not None
    later = head.claimed_until + timedelta(seconds=60)
    assert store.renew_claim(head.id, head.claimed_until, later)
    assert not store.renew_claim(head.id, head.claimed_until, later)  # no longer that lease
    assert store.claim_due_deliveries(10) == []
    store.release_claims([head.id])
    [again] = store.claim_due_deliveries(10)
    assert again.id == head.id and again.message_id == mids[0]


def test_a_queue_left_without_a_head_is_repaired(store: SqlMessageStore) -> None:
    mids = _queue_of_three(store)
    [head] = store.claim_due_deliveries(10)
    with store.db_engine.begin() as conn:  # settled behind the store's back: no promotion
        conn.execute(update(deliveries).where(deliveries.c.id == head.id).values(state="dead"))
    assert store.claim_due_deliveries(10) == []
    assert store.repair_queues() == 1
    assert _states(store, mids) == ["dead", "pending", "waiting"]
    assert store.repair_queues() == 0


def test_nothing_queued_is_no_backlog(store: SqlMessageStore) -> None:
    assert store.backlog() == []


def test_backlog_counts_what_waits_per_destination_and_ages_the_oldest(
    store: SqlMessageStore,
) -> None:
    for patient in ("A", "A", "B"):  # two heads pending, one waiting behind A's head
        _routed(store, patient, "lab")
    for destination in ("archive", "billing", "pharmacy"):
        _routed(store, "C", destination)
    heads = {d.destination: d.id for d in store.claim_due_deliveries(10)}
    later = datetime.now(UTC) + timedelta(hours=1)
    store.record_outcomes(
        [
            Outcome(heads["archive"], True),  # delivered: nothing left
            Outcome(heads["billing"], False, "refused", None),  # dead: nothing left
            Outcome(heads["pharmacy"], False, "HTTP 503", later),  # to retry: still waits
        ]
    )
    # the delivery waiting behind A's head was queued long ago (set here: its age is known)
    queued_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with store.db_engine.begin() as conn:
        aged = conn.execute(
            update(deliveries)
            .where(deliveries.c.destination == "lab", deliveries.c.state == "waiting")
            .values(created_at=queued_at)
        )
        assert aged.rowcount == 1
    before = datetime.now(UTC)
    backlog = store.backlog()
    after = datetime.now(UTC)
    assert [(b.destination, b.waiting) for b in backlog] == [("lab", 3), ("pharmacy", 1)]
    lab = backlog[0]
    assert isinstance(lab, DestinationBacklog)
    assert (before - queued_at).total_seconds() <= lab.oldest_age_s
    assert lab.oldest_age_s <= (after - queued_at).total_seconds()
    assert backlog[1].oldest_age_s >= 0
