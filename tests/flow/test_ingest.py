"""Ingest: store first (group commit), then acknowledge; nothing received is lost."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from engine.flow.ingest import Ingest, Receipt
from engine.hl7v2.codec import parse_message
from engine.store import Incoming, SqlMessageStore, Stored

CLOCK = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

ADT = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|CTRL-{n}|P|2.5.1{tail}\r"
    "EVN|A04|20260102030405\r"
    "PID|1||MRN{n}^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
    "PV1|1|O\r"
)


def adt(n: int = 1, tail: str = "") -> bytes:
    return ADT.format(n=n, tail=tail).encode()


def ingest(store: SqlMessageStore | _BrokenStore) -> Ingest:
    return Ingest(store, identity=("ENGINE", "HUB"), clock=lambda: CLOCK)  # type: ignore[arg-type]


def receive(ing: Ingest, raw: bytes, channel: str = "mllp") -> Receipt:
    return asyncio.run(ing.receive(raw, channel=channel, peer="10.0.0.1:1"))


def test_good_message_is_stored_described_and_acked_aa(store: SqlMessageStore) -> None:
    receipt = receive(ingest(store), adt(7))
    assert receipt.state == "received" and receipt.ack_code == "AA"
    assert receipt.ack is not None and receipt.message_id is not None
    ack = parse_message(receipt.ack)
    assert ack.get("MSA-1") == "AA" and ack.get("MSA-2") == "CTRL-7"
    assert (ack.get("MSH-3"), ack.get("MSH-5")) == ("ENGINE", "FRONTDESK")
    rec = store.get(receipt.message_id)
    assert rec is not None
    assert (rec.control_id, rec.message_type, rec.trigger, rec.state) == (
        "CTRL-7",
        "ADT",
        "A04",
        "received",
    )
    assert store.raw(receipt.message_id) == adt(7)


def test_duplicate_gets_the_original_ack_and_is_stored_once(store: SqlMessageStore) -> None:
    ing = ingest(store)
    first = receive(ing, adt(8))
    again = receive(ing, adt(8))
    assert again.duplicate and again.message_id == first.message_id
    assert again.ack == first.ack
    assert len(store.list()) == 1
    # an operator's replay (a copy with replay_of, engine/store/operator.py) is not a duplicate
    assert first.message_id is not None
    copy = Incoming(raw=adt(8), channel="replay", replay_of=first.message_id)
    [stored] = store.save_batch([copy])
    replayed = stored.id
    assert replayed != first.message_id and len(store.list()) == 2


def test_unreadable_bytes_are_stored_with_the_reason_and_rejected(store: SqlMessageStore) -> None:
    raw = b"\x00\x01 this is not HL7"
    receipt = receive(ingest(store), raw)
    assert receipt.state == "error" and receipt.ack_code == "AR"
    assert receipt.message_id is not None
    assert store.raw(receipt.message_id) == raw
    rec = store.get(receipt.message_id)
    assert rec is not None and rec.state == "error"
    assert rec.reason is not None and "no MSH" in rec.reason


def test_bad_msh2_rejected_with_the_salvaged_control_id(store: SqlMessageStore) -> None:
    raw = b"MSH|^~|APP|FAC|ENGINE|HUB|20260102||ADT^A04|BAD-1|P|2.5.1\rPID|1\r"
    receipt = receive(ingest(store), raw, channel="http")
    assert receipt.ack is not None
    ack = parse_message(receipt.ack)
    assert ack.get("MSA-1") == "AR" and ack.get("MSA-2") == "BAD-1"
    assert ack.get("ERR-2.1") == "MSH" and ack.get("ERR-2.3") == "2"


@pytest.mark.parametrize(
    ("mutate", "code", "where"),
    [
        (lambda r: r.replace(b"|CTRL-3|", b"||"), "101", "10"),
        (lambda r: r.replace(b"|P|2.5.1", b"|X|2.5.1"), "103", "11"),
        (lambda r: r.replace(b"|P|2.5.1", b"|P|"), "101", "12"),
    ],
)
def test_header_problems_are_refused_with_their_0357_code(
    store: SqlMessageStore, mutate: object, code: str, where: str
) -> None:
    raw = mutate(adt(3))  # type: ignore[operator]
    receipt = receive(ingest(store), raw)
    assert receipt.state == "error" and receipt.ack is not None
    ack = parse_message(receipt.ack)
    assert ack.get("MSA-1") == "AE"
    assert ack.get("ERR-3.1") == code and ack.get("ERR-2.3") == where
    assert receipt.message_id is not None
    rec = store.get(receipt.message_id)
    assert rec is not None and rec.state == "error" and f"MSH-{where}" in (rec.reason or "")


def test_enhanced_mode_commit_ack(store: SqlMessageStore) -> None:
    receipt = receive(ingest(store), adt(2, "|||AL|NE"))
    assert receipt.ack_code == "CA"
    assert receipt.ack is not None and parse_message(receipt.ack).get("MSA-1") == "CA"


def test_enhanced_mode_never_commit_ack_sends_nothing(store: SqlMessageStore) -> None:
    receipt = receive(ingest(store), adt(3, "|||NE|AL"))
    assert receipt.ack is None and receipt.state == "received"
    assert receipt.message_id is not None and store.get(receipt.message_id) is not None


def test_group_commit_stores_concurrent_messages_together(store: SqlMessageStore) -> None:
    batches: list[int] = []
    real = store.save_batch

    def counting(items: list[Incoming]) -> list[Stored]:
        batches.append(len(items))
        return real(items)

    store.save_batch = counting  # type: ignore[method-assign]

    async def run() -> list[Receipt]:
        ing = ingest(store)
        await ing.start()
        try:
            return await asyncio.gather(
                *(ing.receive(adt(100 + i), channel="mllp") for i in range(50))
            )
        finally:
            await ing.stop()

    receipts = asyncio.run(run())
    assert [r.ack_code for r in receipts] == ["AA"] * 50
    assert sorted(parse_message(r.ack or b"").get("MSA-2") for r in receipts) == sorted(
        f"CTRL-{100 + i}" for i in range(50)
    )
    assert sum(batches) == 50 and len(batches) < 50  # shared transactions
    assert len(store.list(limit=100)) == 50


class _BrokenStore:
    def save_batch(self, items: list[Incoming]) -> list[Stored]:
        raise OSError("disk full")


@pytest.mark.parametrize(("tail", "code"), [("", "AR"), ("|||AL|AL", "CR")])
def test_store_failure_is_never_acknowledged_positively(tail: str, code: str) -> None:
    receipt = receive(ingest(_BrokenStore()), adt(4, tail))
    assert receipt.message_id is None and receipt.state == "refused"
    assert receipt.ack_code == code
    assert receipt.ack is not None and parse_message(receipt.ack).get("MSA-2") == "CTRL-4"


def test_a_refused_message_fixed_and_resent_with_the_same_control_id_is_taken(
    store: SqlMessageStore,
) -> None:
    ing = ingest(store)
    refused = receive(ing, adt(30).replace(b"|P|2.5.1", b"|X|2.5.1"))
    assert refused.ack_code == "AE"
    fixed = receive(ing, adt(30))
    assert fixed.ack_code == "AA" and not fixed.duplicate
    assert fixed.message_id != refused.message_id
    rec = store.get(fixed.message_id or 0)
    assert rec is not None and rec.state == "received"


def test_long_header_values_are_clipped_to_their_columns_not_refused(
    store: SqlMessageStore,
) -> None:
    long_id = "L" * 250
    raw = (
        adt(31)
        .replace(b"CTRL-31", long_id.encode())
        .replace(b"ADT^A04", b"ADTXXXXXXXXXXXXXXXXXXX^A04")
    )

    async def run() -> list[Receipt]:
        ing = ingest(store)
        await ing.start()
        try:
            return await asyncio.gather(
                ing.receive(raw, channel="mllp"),
                *(ing.receive(adt(40 + i), channel="mllp") for i in range(3)),
            )
        finally:
            await ing.stop()

    receipts = asyncio.run(run())
    assert all(r.message_id is not None for r in receipts)  # nobody refused
    rec = store.get(receipts[0].message_id or 0)
    assert rec is not None and rec.control_id == long_id[:199]  # clipped metadata...
    assert rec.message_type == "ADTXXXXXXXXXXXXX"
    assert store.raw(rec.id) == raw  # ...the raw bytes whole
