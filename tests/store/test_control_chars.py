"""Control characters in what the store indexes: PostgreSQL's text columns cannot hold NUL, so the
store cleans every header column it writes (the raw bytes keep every byte), on both databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from engine.store import Incoming, NewDelivery, Outcome, Processed, SqlMessageStore
from engine.store.tables import deliveries, messages

HEADERS = (
    "control_id",
    "message_type",
    "trigger",
    "structure",
    "sending_application",
    "sending_facility",
    "dedupe_key",
    "patient_key",
    "reason",
    "peer",
)


def _row(store: SqlMessageStore, mid: int) -> Any:
    with store.db_engine.connect() as conn:
        return conn.execute(select(messages).where(messages.c.id == mid)).one()


def _controls(value: str | None) -> set[str]:
    return {c for c in value or "" if ord(c) < 0x20 and c != "\t"}


def test_nul_and_controls_in_every_header_column_are_stored_cleaned(
    store: SqlMessageStore,
) -> None:
    raw = b"MSH|^~\\&|A\x00P|F\x00C|E|H|20260102||AD\x00T^A04|C\x00\x01|P|2.5.1\rPID|1||M\x00\r"
    fields: dict[str, Any] = {name: f"{name[:3]}\x00\x01\x1f\t\r\nx" for name in HEADERS}
    [stored] = store.save_batch([Incoming(raw=raw, channel="mllp", state="error", **fields)])
    assert store.raw(stored.id) == raw
    row = _row(store, stored.id)
    for name in HEADERS:
        assert _controls(getattr(row, name)) == set(), name
        assert "\t" in getattr(row, name), f"{name}: a tab is kept"
    assert row.control_id == "con\ufffd\ufffd\ufffd\t\ufffd\ufffdx"
    assert row.size == len(raw)


def test_cleaning_never_makes_two_dedupe_keys_one(store: SqlMessageStore) -> None:
    """Two messages whose keys differ only in a control character (or a literal U+FFFD) are two
    messages: merging their keys would acknowledge the second as a duplicate and lose it."""
    keys = ["S|F|C\x00", "S|F|C\x01", "S|F|C\ufffd", "S|F|C\ufffd00", "S|F|C"]
    stored = store.save_batch([Incoming(raw=k.encode(), channel="t", dedupe_key=k) for k in keys])
    assert not any(s.duplicate for s in stored)
    assert len({s.id for s in stored}) == len(keys)
    again = store.save_batch([Incoming(raw=keys[0].encode(), channel="t", dedupe_key=keys[0])])
    assert again[0].duplicate and again[0].id == stored[0].id
    assert _controls(_row(store, stored[0].id).dedupe_key) == set()


def test_cleaned_values_still_fit_their_columns(store: SqlMessageStore) -> None:
    key = "\x00" * 700  # each NUL is escaped to three characters in the key
    [stored] = store.save_batch(
        [
            Incoming(
                raw=b"x", channel="t", control_id="\x00" * 199, dedupe_key=key, peer="\x00" * 255
            )
        ]
    )
    row = _row(store, stored.id)
    assert len(row.control_id) == 199 and len(row.dedupe_key) <= 700 and len(row.peer) == 255


def test_processing_and_delivery_outcomes_are_cleaned(store: SqlMessageStore) -> None:
    [stored] = store.save_batch([Incoming(raw=b"m", channel="t", patient_key="P\x00")])
    [(mid, _, _)] = store.claim_received("w1")
    delivery = NewDelivery("dest", "route", "hl7v2", "x-application/hl7-v2", b"\x00", "P\x00")
    kept = store.finish_batch(
        [
            Processed(
                mid,
                "routed",
                reason="bad \x00 value",
                patient_key="P\x00",
                new_deliveries=[delivery],
                worker="w1",
                warnings="PID: not mapped: PID-9 \x00\nPV1: not mapped: PV1-3",
            )
        ]
    )
    assert [k.message_id for k in kept] == [stored.id]
    row = _row(store, mid)
    assert row.reason == "bad \ufffd value" and row.patient_key == "P\ufffd"
    view = store.get(mid)
    assert view is not None
    assert view.warnings == ("PID: not mapped: PID-9 \ufffd", "PV1: not mapped: PV1-3")
    [due] = store.claim_due_deliveries(limit=10)
    assert due.payload == b"\x00"
    store.record_outcomes([Outcome(due.id, ok=False, error="refused: \x00\x07")])
    with store.db_engine.connect() as conn:
        drow = conn.execute(select(deliveries).where(deliveries.c.id == due.id)).one()
    assert drow.patient_key == "P\ufffd" and drow.last_error == "refused: \ufffd\ufffd"
