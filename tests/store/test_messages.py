"""The message store keeps every byte received, with its state and reason, and shows it, on SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from engine.store import Incoming, MessageView, SqlMessageStore
from engine.store.tables import messages


def _receive(store: SqlMessageStore, raw: bytes, **fields: Any) -> int:
    """Store one message as received; its id."""
    [stored] = store.save_batch([Incoming(raw=raw, **fields)])
    return stored.id


def test_raw_bytes_kept_exactly(store: SqlMessageStore) -> None:
    raw = b"\x00\xffnot hl7 at all\r\n\x1c"
    mid = _receive(store, raw, channel="mllp", peer="127.0.0.1:5000")
    assert store.raw(mid) == raw
    rec = store.get(mid)
    assert rec is not None
    assert (rec.channel, rec.state) == ("mllp", "received")
    with store.db_engine.connect() as conn:
        row = conn.execute(
            select(messages.c.peer, messages.c.size).where(messages.c.id == mid)
        ).one()
    assert (row.peer, row.size) == ("127.0.0.1:5000", len(raw))
    received = rec.received_at.replace(tzinfo=None)  # SQLite returns naive UTC
    assert abs((datetime.now(UTC).replace(tzinfo=None) - received).total_seconds()) < 60


def test_what_was_read_and_the_state_are_shown(store: SqlMessageStore) -> None:
    mid = _receive(
        store,
        b"MSH|^~\\&|A|B\r",
        channel="http",
        control_id="CTRL1",
        message_type="ADT",
        trigger="A04",
        structure="ADT_A01",
        sending_application="A",
        sending_facility="B",
        state="error",
        reason="segment 2: bad",
    )
    rec = store.get(mid)
    assert rec is not None
    assert rec == MessageView(
        id=mid,
        received_at=rec.received_at,
        channel="http",
        control_id="CTRL1",
        message_type="ADT",
        trigger="A04",
        state="error",
        reason="segment 2: bad",
    )
    assert rec.deliveries == () and rec.warnings == ()
    assert [r.id for r in store.list(state="error")] == [mid]
    assert store.list(state="received") == []
    assert store.ids_in_state("error") == [mid]


def test_ids_increase_and_list_newest_first(store: SqlMessageStore) -> None:
    ids = [_receive(store, f"m{i}".encode(), channel="cli") for i in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [r.id for r in store.list()] == ids[::-1]
    assert [r.id for r in store.list(limit=2)] == ids[:0:-1]
    assert store.get(10**9) is None
    assert store.raw(10**9) is None
    assert store.ping()


def test_group_commit_keeps_order_and_dedupes_within_and_across_batches(
    store: SqlMessageStore,
) -> None:
    def item(n: int, key: str | None) -> Incoming:
        return Incoming(raw=f"m{n}".encode(), channel="mllp", dedupe_key=key)

    first = store.save_batch([item(0, "A|B|1"), item(1, None), item(2, "A|B|2"), item(0, "A|B|1")])
    # each new message gets its own id, in the batch's order; the resend (same key, same bytes)
    # points at the original
    assert [s.duplicate for s in first] == [False, False, False, True]
    assert first[0].id < first[1].id < first[2].id and first[3].id == first[0].id
    assert [store.raw(s.id) for s in first[:3]] == [b"m0", b"m1", b"m2"]
    again = store.save_batch([item(2, "A|B|2"), item(5, "A|B|3")])
    assert (again[0].id, again[0].duplicate) == (first[2].id, True)
    assert not again[1].duplicate and store.raw(again[1].id) == b"m5"
    assert len(store.list()) == 4


def test_a_batch_of_outcomes_gives_each_message_its_own(store: SqlMessageStore) -> None:
    """One finish_batch (one statement for the batch on PostgreSQL) of messages that end
    differently: each row takes its own state, reason, warnings and patient, NULLs included."""
    from engine.store import Processed

    ids = [_receive(store, f"MSH|{n}".encode(), channel="test") for n in range(4)]
    claimed = [mid for mid, _, _ in store.claim_received("w1")]
    assert claimed == ids
    outcomes = [
        Processed(ids[0], "unrouted", None, "CLINIC|MRN1", worker="w1"),
        Processed(ids[1], "error", "PID-7: not a date", None, worker="w1"),
        Processed(ids[2], "unrouted", None, "CLINIC|MRN2", worker="w1", warnings="PD1-3"),
        Processed(ids[3], "error", "bad\x00byte", "CLINIC|\x00MRN3", worker="w1"),
    ]
    assert [o.message_id for o in store.finish_batch(outcomes)] == ids
    with store.db_engine.connect() as conn:
        rows = conn.execute(
            select(messages.c.state, messages.c.reason, messages.c.warnings, messages.c.patient_key)
            .where(messages.c.id.in_(ids))
            .order_by(messages.c.id)
        ).all()
    assert [tuple(r) for r in rows[:3]] == [
        ("unrouted", None, None, "CLINIC|MRN1"),
        ("error", "PID-7: not a date", None, None),
        ("unrouted", None, "PD1-3", "CLINIC|MRN2"),
    ]
    state, reason, _, patient = rows[3]
    assert state == "error" and "\x00" not in reason and "\x00" not in patient  # cleaned
