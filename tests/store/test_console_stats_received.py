"""The dashboard's messages in one read (issue 13: the dashboard's reads cost ingest): the hour's
and the day's counts per state and the ingest rate, the same figures the three separate reads
give; the deliveries per route by window in one pass on PostgreSQL, the same as two on SQLite.
On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, update

from engine.store import Incoming, NewDelivery, Outcome, Processed, SqlMessageStore
from engine.store.tables import deliveries, messages
from tests.store.console_oracle import ingest_rate, received_counts


def _received(store: SqlMessageStore, n: int, *, hours_ago: float, state: str = "routed") -> None:
    [stored] = store.save_batch(
        [Incoming(raw=f"MSH|{n}".encode(), channel="mllp", control_id=f"C{n}")]
    )
    news = [NewDelivery("fhir", "adt", "hl7v2", "text/plain", b"x", f"P{n}")]
    reason = None if state == "routed" else "no"
    store.finish_batch(
        [Processed(stored.id, state, reason, f"P{n}", news if state == "routed" else [])]
    )
    then = datetime.now(UTC) - timedelta(hours=hours_ago)
    with store.db_engine.begin() as conn:
        conn.execute(update(messages).where(messages.c.id == stored.id).values(received_at=then))
        conn.execute(
            update(deliveries).where(deliveries.c.message_id == stored.id).values(created_at=then)
        )


@pytest.mark.parametrize("span", ["day", "hour"])
def test_one_read_gives_what_the_three_did(store: SqlMessageStore, span: str) -> None:
    for n, hours, state in (
        (1, 0.0, "routed"),
        (2, 0.2, "error"),
        (3, 0.5, "unrouted"),
        (4, 3.5, "error"),
        (5, 20.0, "routed"),
        (6, 30.0, "error"),  # older than a day: in no window
    ):
        _received(store, n, hours_ago=hours, state=state)
    now = datetime.now(UTC)
    figures = store.received_figures(span, now)
    assert figures.hour == received_counts(store, now - timedelta(hours=1))
    assert figures.day == received_counts(store, now - timedelta(days=1))
    assert figures.rate == ingest_rate(store, span, now)
    assert sum(figures.hour.values()) == 3 and figures.hour["error"] == 1
    assert sum(figures.day.values()) == 5 and figures.day["error"] == 2
    assert sum(n for _, n in figures.rate) == (5 if span == "day" else 3)
    with pytest.raises(ValueError):
        store.received_figures("week", now)


def test_route_figures_count_the_hour_within_the_day(store: SqlMessageStore) -> None:
    for n, hours in ((1, 0.1), (2, 0.5), (3, 2.0), (4, 23.0), (5, 25.0)):
        _received(store, n, hours_ago=hours)
    # the first three queued (0.1, 0.5 and 2 hours ago) delivered; 23 and 25 hours still queued
    for due in store.claim_due_deliveries(10)[:3]:
        store.record_outcomes([Outcome(due.id, True)])
    [fhir] = store.route_figures()
    assert (fhir.route, fhir.destination) == ("adt", "fhir")
    assert (fhir.hour.made, fhir.hour.delivered, fhir.hour.queued) == (2, 2, 0)
    assert (fhir.day.made, fhir.day.delivered, fhir.day.queued) == (4, 3, 1)


def test_the_dashboard_reads_each_part_of_its_figures_on_one_connection(
    store: SqlMessageStore,
) -> None:
    for n, hours, state in ((1, 0.1, "routed"), (2, 2.0, "error"), (3, 5.0, "routed")):
        _received(store, n, hours_ago=hours, state=state)
    checkouts: list[int] = []
    event.listen(store.db_engine.pool, "checkout", lambda *_: checkouts.append(1))
    now = datetime.now(UTC)
    routes, received = store.dashboard_traffic("day", now)
    assert len(checkouts) == 1
    destinations, eligibility = store.dashboard_now(now.date(), now)
    assert len(checkouts) == 2
    assert received == store.received_figures("day", now)
    assert routes == store.route_figures(now)
    assert destinations == store.destination_figures(now)
    assert eligibility == store.eligibility_summary(now.date()) == {}
    assert sum(received.day.values()) == 3 and received.hour == {"routed": 1}
