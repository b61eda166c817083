"""The backlog per destination (queue depth and the oldest waiting delivery's age), on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from engine.store import DestinationBacklog, SqlMessageStore
from engine.store.repository import Incoming, NewDelivery, Outcome, Processed
from engine.store.tables import deliveries


def _routed(store: SqlMessageStore, destination: str, patient: str) -> int:
    """A message routed to ``destination`` for ``patient``: its id."""
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test")])
    delivery = NewDelivery(destination, "r", "hl7v2", "text/plain", b"x", patient)
    store.finish_batch([Processed(stored.id, "routed", None, patient, [delivery])])
    return stored.id


def test_nothing_queued_is_no_backlog(store: SqlMessageStore) -> None:
    assert store.backlog() == []


def test_backlog_counts_what_waits_per_destination_and_ages_the_oldest(
    store: SqlMessageStore,
) -> None:
    for patient in ("A", "A", "B"):  # two heads pending, one waiting behind A's head
        _routed(store, "lab", patient)
    for destination in ("archive", "billing", "pharmacy"):
        _routed(store, destination, "C")
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
