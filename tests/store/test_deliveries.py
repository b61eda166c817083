"""Deliveries queue per (destination, patient): only the head is claimable, settling it promotes
the next, claims are leased; and the backlog per destination. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text, update

from engine.store import (
    DestinationBacklog,
    Incoming,
    NewDelivery,
    Outcome,
    Processed,
    SqlMessageStore,
)
from engine.store.deliveries import lock_queues
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


def test_heads_of_several_queues_settled_together_each_promote_their_next(
    store: SqlMessageStore,
) -> None:
    """One batch of outcomes settles the heads of several queues (two patients of one
    destination, one patient of two destinations; PostgreSQL promotes them in one statement):
    each queue's next delivery, and only that one, becomes its head; a queue whose head was
    not settled keeps its head and its waiting delivery."""
    queues = {
        ("dest", "A"): [_routed(store, "A") for _ in range(3)],
        ("dest", "B"): [_routed(store, "B") for _ in range(2)],
        ("lab", "A"): [_routed(store, "A", "lab") for _ in range(2)],
        ("lab", "C"): [_routed(store, "C", "lab") for _ in range(2)],
    }
    heads = {
        (d.destination, _patient(store, d.message_id)): d for d in store.claim_due_deliveries(10)
    }
    assert set(heads) == set(queues)
    store.record_outcomes(
        [
            Outcome(heads["dest", "A"].id, True),
            Outcome(heads["dest", "B"].id, False, "refused", None),  # dead lets the next go too
            Outcome(heads["lab", "A"].id, True),
        ]
    )
    assert _states(store, queues["dest", "A"]) == ["delivered", "pending", "waiting"]
    assert _states(store, queues["dest", "B"]) == ["dead", "pending"]
    assert _states(store, queues["lab", "A"]) == ["delivered", "pending"]
    assert _states(store, queues["lab", "C"]) == ["pending", "waiting"]  # its head not settled
    # the promoted ones are due now: claimable at once, one per queue
    again = {(d.destination, d.message_id) for d in store.claim_due_deliveries(10)}
    assert again == {
        ("dest", queues["dest", "A"][1]),
        ("dest", queues["dest", "B"][1]),
        ("lab", queues["lab", "A"][1]),
    }


def _patient(store: SqlMessageStore, message_id: int) -> str:
    with store.db_engine.connect() as conn:
        return str(
            conn.execute(
                select(deliveries.c.patient_key).where(deliveries.c.message_id == message_id)
            ).scalar_one()
        )


def test_queue_locks_are_held_to_the_end_of_the_transaction(store: SqlMessageStore) -> None:
    """PostgreSQL: the queues' advisory locks (taken in one statement) are all held until the
    transaction ends, and only those: another session cannot take them meanwhile."""
    if store.db_engine.dialect.name != "postgresql":
        return  # SQLite has one writer at a time: no queue locks
    held = [("dest", "A"), ("lab", "B"), ("dest", "C")]
    probe = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:key, 0))")
    with store.db_engine.begin() as conn:
        lock_queues(conn, set(held))
        with store.db_engine.connect() as other:
            for destination, patient in [*held, ("dest", "Z")]:
                got = other.execute(probe, {"key": f"{destination}\x1f{patient}"}).scalar_one()
                assert got is ((destination, patient) == ("dest", "Z"))
            other.rollback()
    with store.db_engine.connect() as other:
        assert all(other.execute(probe, {"key": f"{d}\x1f{p}"}).scalar_one() for d, p in held)
        other.rollback()


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
