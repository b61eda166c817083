"""The operator's message search: filters, keyset paging, and why a message is stuck."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update

from engine.store import (
    Incoming,
    MessageQuery,
    NewDelivery,
    Outcome,
    Processed,
    SqlMessageStore,
)
from engine.store.tables import messages


def _save(store: SqlMessageStore, n: int, **header: str) -> int:
    fields = {
        "control_id": f"C{n}",
        "message_type": "ADT",
        "trigger": "A04",
        "sending_application": "FRONTDESK",
        "sending_facility": "CLINIC",
        "patient_key": "CLINIC|MRN1",
    } | header
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="mllp", **fields)])  # type: ignore[arg-type]
    return stored.id


def _ids(store: SqlMessageStore, **query: object) -> list[int]:
    return [line.id for line in store.search(MessageQuery(**query))]  # type: ignore[arg-type]


def test_filters_combine_newest_first(store: SqlMessageStore) -> None:
    a = _save(store, 1)
    b = _save(store, 2, trigger="A08", patient_key="CLINIC|MRN2")
    c = _save(store, 3, message_type="SIU", trigger="S12", sending_application="SCHED")
    d = _save(store, 4, sending_facility="ANNEX", patient_key="LAB|MRN2")
    assert _ids(store) == [d, c, b, a]
    assert _ids(store, message_type="adt") == [d, b, a]
    assert _ids(store, message_type="ADT", trigger="A08") == [b]
    assert _ids(store, sender="SCHED") == [c]
    assert _ids(store, sender="ANNEX") == [d]
    assert _ids(store, sender="FRONTDESK^ANNEX") == [d]
    assert _ids(store, sender="FRONTDESK^CLINIC") == [b, a]
    assert _ids(store, mrn="MRN2") == [d, b]  # any authority
    assert _ids(store, mrn="LAB|MRN2") == [d]  # one authority: the index
    assert _ids(store, mrn="MRN") == []  # a suffix of the whole MRN, not of a part
    assert _ids(store, mrn="%") == []  # LIKE's wildcards are taken literally
    assert _ids(store, control_id="C3") == [c]
    assert _ids(store, state="received") == [d, c, b, a]
    assert _ids(store, state="error") == []


def test_keyset_paging(store: SqlMessageStore) -> None:
    ids = [_save(store, n) for n in range(7)]
    first = _ids(store, limit=3)
    assert first == ids[::-1][:3]
    second = _ids(store, limit=3, before=first[-1])
    third = _ids(store, limit=3, before=second[-1])
    assert first + second + third == ids[::-1]


def test_date_range(store: SqlMessageStore) -> None:
    old, mid, new = (_save(store, n) for n in range(3))
    day = datetime(2026, 3, 1, tzinfo=UTC)
    with store.db_engine.begin() as conn:
        for n, mid_ in enumerate((old, mid, new)):
            conn.execute(
                update(messages)
                .where(messages.c.id == mid_)
                .values(received_at=day + timedelta(days=n))
            )
    assert _ids(store, since=day + timedelta(hours=1)) == [new, mid]
    assert _ids(store, until=day + timedelta(days=1)) == [old]
    assert _ids(store, since=day + timedelta(days=1), until=day + timedelta(days=2)) == [mid]
    assert _ids(store, since=day + timedelta(days=9)) == []


def test_time_bounds_in_another_zone_compare_in_utc(store: SqlMessageStore) -> None:
    """Before: on SQLite the bound's wall-clock text was compared with the stored UTC text, so a
    New York time was off by five hours (only UTC bounds worked)."""
    received = [
        datetime(2026, 12, 3, 4, 0, tzinfo=UTC),  # 23:00 the day before in New York
        datetime(2026, 12, 3, 7, 11, 40, tzinfo=UTC),  # 02:11:40 in New York
        datetime(2026, 12, 3, 10, 30, tzinfo=UTC),  # 05:30 in New York
    ]
    early, mid, late = (_save(store, n) for n in range(3))
    with store.db_engine.begin() as conn:
        for id_, at in zip((early, mid, late), received, strict=True):
            conn.execute(update(messages).where(messages.c.id == id_).values(received_at=at))
    for zone in (ZoneInfo("America/New_York"), timezone(timedelta(hours=-5))):
        assert _ids(store, since=datetime(2026, 12, 3, 2, 11, 40, tzinfo=zone)) == [late, mid]
        assert _ids(store, until=datetime(2026, 12, 3, 2, 11, 40, tzinfo=zone)) == [early]
        assert _ids(store, until=datetime(2026, 12, 3, 5, 0, tzinfo=zone)) == [mid, early]
        assert _ids(
            store,
            since=datetime(2026, 12, 2, 23, 30, tzinfo=zone),
            until=datetime(2026, 12, 3, 5, 0, tzinfo=zone),
        ) == [mid]
    # east of UTC too: 12:00 in Kolkata is 06:30Z
    kolkata = ZoneInfo("Asia/Kolkata")
    assert _ids(store, since=datetime(2026, 12, 3, 12, 0, tzinfo=kolkata)) == [late, mid]
    assert _ids(store, until=datetime(2026, 12, 3, 12, 0, tzinfo=kolkata)) == [early]
    # a time without a zone is UTC, as the store keeps it
    assert _ids(store, since=datetime(2026, 12, 3, 7, 11, 40)) == [late, mid]


def test_unknown_state_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown state 'deadd' \(states: received, .*replayed"):
        MessageQuery(state="deadd")


def test_a_line_names_the_failing_destinations_and_the_reason(store: SqlMessageStore) -> None:
    bad = store.save_batch(
        [Incoming(raw=b"junk", channel="mllp", state="error", reason="segment 1: no MSH")]
    )[0].id
    mid = _save(store, 1)
    new = [NewDelivery(d, "r", "hl7v2", "text/plain", b"x", "CLINIC|MRN1") for d in ("fhir", "raw")]
    store.finish_batch([Processed(mid, "routed", None, "CLINIC|MRN1", new)])
    due = {d.destination: d.id for d in store.claim_due_deliveries(10)}
    store.record_outcomes(
        [
            Outcome(due["raw"], False, "HTTP 503 Service Unavailable\nmore"),
            Outcome(due["fhir"], False, "timeout", datetime.now(UTC) + timedelta(hours=1)),
        ]
    )
    lines = {line.id: line for line in store.search(MessageQuery())}
    assert lines[bad].reason == "segment 1: no MSH" and lines[bad].failing == ()
    assert lines[mid].failing == (
        "fhir (retrying): timeout",
        "raw (dead): HTTP 503 Service Unavailable",
    )
    assert lines[mid].sender == "FRONTDESK^CLINIC" and lines[mid].state == "routed"
