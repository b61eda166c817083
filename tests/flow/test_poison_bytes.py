"""Poison bytes: a NUL in MSH-3, MSH-4, MSH-9, MSH-10 or PID-3 is stored and acknowledged on
PostgreSQL as on SQLite (PostgreSQL's text columns cannot hold NUL; before the store cleaned its
header columns the sender was told "send again" forever and nothing was stored)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from engine.flow.ingest import Ingest, Receipt
from engine.hl7v2.codec import parse_message
from engine.store import SqlMessageStore
from engine.store.tables import messages

CLOCK = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ADT = (
    b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|CTRL-1|P|2.5.1\r"
    b"EVN|A04|20260102030405\r"
    b"PID|1||MRN1^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
    b"PV1|1|O\r"
)
#: where the NUL goes: (field, bytes replaced, with)
POISON = {
    "MSH-3": (b"|FRONTDESK|", b"|FRONT\x00DESK|"),
    "MSH-4": (b"|CLINIC|ENGINE", b"|CLI\x00NIC|ENGINE"),
    "MSH-9": (b"|ADT^A04|", b"|ADT\x00^A04|"),
    "MSH-10": (b"|CTRL-1|", b"|CTRL\x00-1|"),
    "PID-3": (b"|MRN1^", b"|MRN\x001^"),
}
HEADERS = (
    messages.c.control_id,
    messages.c.message_type,
    messages.c.trigger,
    messages.c.structure,
    messages.c.sending_application,
    messages.c.sending_facility,
    messages.c.dedupe_key,
    messages.c.patient_key,
    messages.c.reason,
    messages.c.peer,
)


def _receive(store: SqlMessageStore, raw: bytes) -> Receipt:
    ingest = Ingest(store, identity=("ENGINE", "HUB"), clock=lambda: CLOCK)
    return asyncio.run(ingest.receive(raw, channel="mllp", peer="127.0.0.1:1\x00"))


@pytest.mark.parametrize("field", POISON)
def test_nul_in_a_header_field_is_stored_and_acked_as_on_sqlite(
    store: SqlMessageStore, field: str
) -> None:
    old, new = POISON[field]
    raw = ADT.replace(old, new, 1)
    assert raw.count(b"\x00") == 1
    receipt = _receive(store, raw)
    # the same answer on both databases: stored, read, accepted (the NUL stays in the raw bytes)
    assert (receipt.state, receipt.ack_code) == ("received", "AA")
    assert receipt.message_id is not None and receipt.ack is not None
    ack = parse_message(receipt.ack)
    assert ack.get("MSA-1") == "AA"
    assert ack.get("MSH-10") == f"A{receipt.message_id}"
    assert store.raw(receipt.message_id) == raw
    with store.db_engine.connect() as conn:
        row = conn.execute(select(*HEADERS).where(messages.c.id == receipt.message_id)).one()
    for name, value in row._asdict().items():
        assert "\x00" not in (value or ""), name
    # a resend is the same message (its cleaned key still finds it), not a new one
    again = _receive(store, raw)
    assert again.duplicate and again.message_id == receipt.message_id
    assert again.ack == receipt.ack
