"""Ingest: store first, then parse, then acknowledge; nothing received is lost."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.hl7v2.codec import parse_message
from engine.pipeline import Ingest
from engine.store.repository import SqlMessageStore

CLOCK = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

ADT = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|CTRL-{n}|P|2.5.1{tail}\r"
    "EVN|A04|20260102030405\r"
    "PID|1||MRN{n}^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
    "PV1|1|O\r"
)


def adt(n: int = 1, tail: str = "") -> bytes:
    return ADT.format(n=n, tail=tail).encode()


def ingest(store: SqlMessageStore) -> Ingest:
    return Ingest(store, identity=("ENGINE", "HUB"), clock=lambda: CLOCK)


def test_good_message_is_stored_described_and_acked_aa(store: SqlMessageStore) -> None:
    receipt = ingest(store).receive(adt(7), channel="mllp", peer="10.0.0.1:1")
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


def test_unreadable_bytes_are_stored_with_the_reason_and_rejected(store: SqlMessageStore) -> None:
    raw = b"\x00\x01 this is not HL7"
    receipt = ingest(store).receive(raw, channel="mllp")
    assert receipt.state == "error" and receipt.ack_code == "AR"
    assert receipt.message_id is not None
    assert store.raw(receipt.message_id) == raw
    rec = store.get(receipt.message_id)
    assert rec is not None and rec.state == "error"
    assert rec.reason is not None and "no MSH" in rec.reason


def test_bad_msh2_rejected_with_the_salvaged_control_id(store: SqlMessageStore) -> None:
    raw = b"MSH|^~|APP|FAC|ENGINE|HUB|20260102||ADT^A04|BAD-1|P|2.5.1\rPID|1\r"
    receipt = ingest(store).receive(raw, channel="http")
    assert receipt.ack is not None
    ack = parse_message(receipt.ack)
    assert ack.get("MSA-1") == "AR" and ack.get("MSA-2") == "BAD-1"
    assert ack.get("ERR-2.1") == "MSH" and ack.get("ERR-2.3") == "2"


def test_enhanced_mode_commit_ack(store: SqlMessageStore) -> None:
    receipt = ingest(store).receive(adt(2, "|||AL|NE"), channel="mllp")
    assert receipt.ack_code == "CA"
    assert receipt.ack is not None and parse_message(receipt.ack).get("MSA-1") == "CA"


def test_enhanced_mode_never_commit_ack_sends_nothing(store: SqlMessageStore) -> None:
    receipt = ingest(store).receive(adt(3, "|||NE|AL"), channel="mllp")
    assert receipt.ack is None and receipt.state == "received"
    assert receipt.message_id is not None and store.get(receipt.message_id) is not None


class _BrokenStore:
    def save_received(self, raw: bytes, *, channel: str, peer: str = "") -> int:
        raise OSError("disk full")

    def describe(self, message_id: int, **kw: str) -> None:  # pragma: no cover - never reached
        raise AssertionError

    def set_state(self, message_id: int, state: str, reason: str | None = None) -> None:
        raise AssertionError  # pragma: no cover


@pytest.mark.parametrize(("tail", "code"), [("", "AR"), ("|||AL|AL", "CR")])
def test_store_failure_is_never_acknowledged_positively(tail: str, code: str) -> None:
    receipt = Ingest(_BrokenStore(), clock=lambda: CLOCK).receive(adt(4, tail), channel="mllp")
    assert receipt.message_id is None and receipt.state == "refused"
    assert receipt.ack_code == code
    assert receipt.ack is not None and parse_message(receipt.ack).get("MSA-2") == "CTRL-4"
