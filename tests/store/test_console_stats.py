"""The console's figures and actions on the real store (SQLite and PostgreSQL): counts per route
and destination by window, the queue, dead letters and last errors, the ingest rate, breakers
as live worker nodes report them, one message in full (audited) and "mark handled"."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from engine.store import (
    ActionRefused,
    Incoming,
    NewDelivery,
    Outcome,
    Processed,
    SqlMessageStore,
    Who,
)
from engine.store.tables import deliveries, eligibility_checks, messages
from tests.store.console_oracle import ingest_rate, received_counts

WHO = Who("alice", "console", "127.0.0.1:5000")


def _message(store: SqlMessageStore, n: int, *, destinations: tuple[str, ...] = ("fhir",)) -> int:
    [stored] = store.save_batch(
        [
            Incoming(
                raw=f"MSH|^~\\&|FRONTDESK|CLINIC|||20260102||ADT^A04|C{n}|P|2.5.1\rPID|1||MRN{n}^^^CLINIC\r".encode(),
                channel="mllp",
                control_id=f"C{n}",
                message_type="ADT",
                trigger="A04",
                patient_key=f"CLINIC|MRN{n}",
            )
        ]
    )
    news = [
        NewDelivery(d, "adt", "fhir-bundle", "application/fhir+json", b'{"a":1}', f"CLINIC|MRN{n}")
        for d in destinations
    ]
    store.finish_batch([Processed(stored.id, "routed", None, f"CLINIC|MRN{n}", news)])
    return stored.id


def _settle(store: SqlMessageStore, ok: bool, error: str = "") -> None:
    for due in store.claim_due_deliveries(100):
        store.record_outcomes([Outcome(due.id, ok, error)])


def _age(store: SqlMessageStore, message_id: int, hours: float) -> None:
    """Move a message and its deliveries back in time."""
    then = datetime.now(UTC) - timedelta(hours=hours)
    with store.db_engine.begin() as conn:
        conn.execute(update(messages).where(messages.c.id == message_id).values(received_at=then))
        conn.execute(
            update(deliveries).where(deliveries.c.message_id == message_id).values(created_at=then)
        )


def test_counts_per_route_and_destination_by_window(store: SqlMessageStore) -> None:
    old = _message(store, 1, destinations=("fhir", "folder"))
    _settle(store, True)
    _age(store, old, hours=5)  # in the day, not the hour
    _message(store, 2)
    _settle(store, False, "HTTP 400 refused")  # dead at once: no retry policy
    _message(store, 3)  # still queued
    _age(store, _message(store, 4), hours=30)  # older than a day: in no window
    figures = {(f.route, f.destination): f for f in store.route_figures()}
    assert set(figures) == {("adt", "fhir"), ("adt", "folder")}
    fhir = figures["adt", "fhir"]
    assert (fhir.hour.made, fhir.hour.delivered, fhir.hour.dead, fhir.hour.queued) == (2, 0, 1, 1)
    assert (fhir.day.made, fhir.day.delivered, fhir.day.errors, fhir.day.queued) == (3, 1, 1, 1)
    folder = figures["adt", "folder"]
    assert (folder.hour.made, folder.day.made, folder.day.delivered) == (0, 1, 1)
    received = received_counts(store, datetime.now(UTC) - timedelta(hours=1))
    assert sum(received.values()) == 2


def test_queue_dead_letters_and_last_error_per_destination(store: SqlMessageStore) -> None:
    dead = _message(store, 1)
    _settle(store, False, "HTTP 400 refused\nsecond line")
    _message(store, 2)
    _age(store, _message(store, 3), hours=2)
    now = datetime.now(UTC)
    figures = store.destination_figures(now)["fhir"]
    assert figures.queued == 2
    assert figures.oldest_age_s is not None and 7100 < figures.oldest_age_s < 7300
    assert figures.dead == 1
    assert figures.last_error == "HTTP 400 refused"  # the first line only
    store.mark_handled(dead, WHO, "called the vendor")
    assert store.destination_figures(now)["fhir"].dead == 0  # handled: no longer a dead letter


def test_ingest_rate_by_minute_and_by_hour(store: SqlMessageStore) -> None:
    now = datetime.now(UTC)
    for n, hours in ((1, 0), (2, 0), (3, 3.5), (4, 26)):
        mid = _message(store, n)
        if hours:
            _age(store, mid, hours)
    by_hour = ingest_rate(store, "day", now)
    assert len(by_hour) == 24
    assert by_hour[-1] == (now.replace(minute=0, second=0, microsecond=0), 2)
    assert sum(n for _, n in by_hour) == 3  # the 26-hour-old one is out
    assert [n for _, n in by_hour].index(1) in (19, 20)  # 3.5 h ago
    by_minute = ingest_rate(store, "hour", now)
    assert len(by_minute) == 60 and sum(n for _, n in by_minute) == 2
    with pytest.raises(ValueError):
        ingest_rate(store, "week", now)


def _breakers(store: SqlMessageStore) -> dict[str, Any]:
    """The breakers as the dashboard reads them (destination_figures)."""
    return {
        name: figures.breaker
        for name, figures in store.destination_figures().items()
        if figures.breaker is not None
    }


def test_breakers_as_live_nodes_report_them(store: SqlMessageStore) -> None:
    live = store.register_node("worker")
    store.record_breaker("fhir", live, is_open=True, failures=5, last_error="connect refused\nx")
    store.record_breaker("folder", "gone:1:abcd", is_open=True, failures=9)  # no such node
    breakers = _breakers(store)
    assert set(breakers) == {"fhir"}
    assert breakers["fhir"].open and breakers["fhir"].failures == 5
    assert breakers["fhir"].last_error == "connect refused"
    store.record_breaker("fhir", live, is_open=False, failures=0)
    assert not _breakers(store)["fhir"].open


def test_message_detail_shows_everything_and_is_audited(store: SqlMessageStore) -> None:
    mid = _message(store, 1, destinations=("fhir", "folder"))
    _settle(store, False, "HTTP 422 bad bundle")
    detail = store.message_detail(mid, WHO)
    assert detail is not None
    assert detail.raw.startswith(b"MSH|^~\\&|FRONTDESK") and detail.patient_key == "CLINIC|MRN1"
    assert detail.destinations == ["fhir", "folder"]
    assert [(d.state, d.attempts, d.payload) for d in detail.deliveries] == [
        ("dead", 1, b'{"a":1}'),
        ("dead", 1, b'{"a":1}'),
    ]
    assert detail.deliveries[0].last_error == "HTTP 422 bad bundle"
    assert store.message_detail(mid + 100, WHO) is None
    trail = [
        (e.action, e.actor, e.source, e.message_id, e.patient_key, e.outcome)
        for e in store.audit_entries(limit=5)
    ]
    assert trail == [
        ("view-message", "alice", "console", mid + 100, None, "refused"),
        ("view-message", "alice", "console", mid, "CLINIC|MRN1", "ok"),
    ]


def test_mark_handled_once_for_a_message_that_needs_someone(store: SqlMessageStore) -> None:
    dead = _message(store, 1)
    _settle(store, False, "HTTP 400")
    queued = _message(store, 2)
    mark = store.mark_handled(dead, WHO, "  resent by phone  ")
    assert (mark.handled_by, mark.note) == ("alice", "resent by phone")
    marks = store.handled_marks([dead, queued])
    assert set(marks) == {dead} and marks[dead].handled_by == "alice"
    with pytest.raises(ActionRefused, match="marked handled by alice"):
        store.mark_handled(dead, WHO)
    with pytest.raises(ActionRefused, match="is routed"):
        store.mark_handled(queued, WHO)
    with pytest.raises(KeyError):
        store.mark_handled(queued + 100, WHO)
    outcomes = [(e.action, e.message_id, e.outcome) for e in store.audit_entries(limit=10)]
    assert outcomes == [
        ("mark-handled", None, "refused"),
        ("mark-handled", queued, "refused"),
        ("mark-handled", dead, "refused"),
        ("mark-handled", dead, "ok"),
    ]
    detail = store.message_detail(dead, WHO)
    assert detail is not None and detail.handled is not None


def test_eligibility_summary_counts_the_latest_verdict_per_appointment(
    store: SqlMessageStore,
) -> None:
    day = date(2026, 12, 4)
    rows = [
        ("Appointment/1", "eligible"),
        ("Appointment/2", "payer_unavailable"),
        ("Appointment/2", "inactive"),  # checked again: the latest counts
        ("Appointment/3", "needs_action"),
    ]
    with store.db_engine.begin() as conn:
        for url, status in rows:
            conn.execute(
                eligibility_checks.insert().values(
                    appointment_url=url,
                    patient_url="Patient/1",
                    payer_id="P",
                    service_date=day,
                    checked_at=datetime.now(UTC),
                    status=status,
                    attempts=1,
                )
            )
    assert store.eligibility_summary(day) == {"eligible": 1, "inactive": 1, "needs_action": 1}
    assert store.eligibility_summary(day + timedelta(days=1)) == {}


def test_newer_cursor_pages_back_with_the_same_filters(store: SqlMessageStore) -> None:
    from engine.store import MessageQuery

    ids = [_message(store, n) for n in range(1, 8)]  # 7 messages, newest last
    query = MessageQuery(mrn=None, limit=3)
    first = store.search(query)
    older = store.search(MessageQuery(before=first[-1].id, limit=3))
    assert [m.id for m in older] == ids[3:0:-1]
    back = store.newer_cursor(query, older[0].id)
    assert back is not None
    assert [m.id for m in store.search(MessageQuery(before=back, limit=3))] == [m.id for m in first]
    assert store.newer_cursor(query, first[0].id) is None  # the newest page already
    only_one = MessageQuery(mrn="MRN2", limit=3)
    assert store.newer_cursor(only_one, ids[0]) is None  # one match above: the newest page


def test_migration_0014_goes_down_and_up_again(store: SqlMessageStore) -> None:
    from pathlib import Path

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    import engine.store.repository as repository

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(repository.__file__).parent / "migrations"))

    def tables() -> set[str]:
        return set(inspect(store.db_engine).get_table_names())

    def indexes() -> set[str]:
        return {i["name"] or "" for i in inspect(store.db_engine).get_indexes("deliveries")}

    assert {"message_handled", "destination_breakers"} <= tables()
    assert "ix_deliveries_created" in indexes()
    with store.db_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0013")
    assert not {"message_handled", "destination_breakers"} & tables()
    assert "ix_deliveries_created" not in indexes()
    store.migrate()
    assert {"message_handled", "destination_breakers"} <= tables()
