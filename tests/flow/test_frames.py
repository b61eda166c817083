"""One MLLP frame is one message: two MSH in a frame, and a frame over the size limit.

Both are refused with AR (CR in enhanced mode) whose ERR names the problem, and both leave a
stored record with state ``error`` and the reason, so every byte received is accounted for and
nothing glued or cut short is ever routed.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path

from engine.flow.ingest import Ingest, Receipt
from engine.hl7v2.codec import parse_message
from engine.store import Incoming, SqlMessageStore, Stored
from tests.adapters.test_mllp_server import recv_frame, running_server

CLOCK = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

MSG = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|{cid}|P|2.5.1{tail}\r"
    "EVN|A04|20260102030405\r"
    "PID|1||MRN{cid}^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
)


def msg(cid: str, tail: str = "") -> bytes:
    return MSG.format(cid=cid, tail=tail).encode()


def ingest(store: object) -> Ingest:
    return Ingest(store, identity=("ENGINE", "HUB"), clock=lambda: CLOCK)  # type: ignore[arg-type]


class _BrokenStore:
    def save_batch(self, items: list[Incoming]) -> list[Stored]:
        raise OSError("disk full")


# -- two messages in one frame -------------------------------------------------------------------


def test_two_msh_in_one_frame_is_rejected_naming_the_second_msh(store: SqlMessageStore) -> None:
    raw = msg("FIRST") + msg("SECOND")
    receipt = asyncio.run(ingest(store).receive(raw, channel="mllp", peer="10.0.0.1:1"))
    assert receipt.state == "error" and receipt.ack_code == "AR"
    assert receipt.ack is not None
    ack = parse_message(receipt.ack)
    assert ack.get("MSA-1") == "AR" and ack.get("MSA-2") == "FIRST"
    # ERR-2 (ERL): the second MSH segment; ERR-3: 0357 code 100, segment sequence error
    assert (ack.get("ERR-2.1"), ack.get("ERR-2.2")) == ("MSH", "2")
    assert ack.get("ERR-3.1") == "100"
    assert [s.name for s in ack.segments].count("ERR") == 1
    assert receipt.message_id is not None
    rec = store.get(receipt.message_id)
    assert rec is not None and rec.state == "error"
    assert rec.reason is not None and "MSH" in rec.reason and "segment 4" in rec.reason
    assert store.raw(receipt.message_id) == raw  # the frame's bytes, whole
    assert store.claim_received("test") == []  # nothing routed, glued or not


def test_two_msh_in_enhanced_mode_is_a_commit_reject(store: SqlMessageStore) -> None:
    raw = msg("E1", "|||AL|NE") + msg("E2", "|||AL|NE")
    receipt = asyncio.run(ingest(store).receive(raw, channel="mllp"))
    assert receipt.ack_code == "CR" and receipt.state == "error"
    assert receipt.ack is not None and parse_message(receipt.ack).get("MSA-1") == "CR"


def test_a_resend_of_the_first_message_alone_is_taken(store: SqlMessageStore) -> None:
    ing = ingest(store)
    refused = asyncio.run(ing.receive(msg("R1") + msg("R2"), channel="mllp"))
    assert refused.ack_code == "AR"
    alone = asyncio.run(ing.receive(msg("R1"), channel="mllp"))
    assert alone.ack_code == "AA" and not alone.duplicate


def test_two_msh_over_mllp_get_one_ar_and_nothing_routed(tmp_path: Path) -> None:
    with running_server(tmp_path) as (port, store):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"\x0b" + msg("G1") + msg("G2") + b"\x1c\r")
            ack = parse_message(recv_frame(sock))
            assert ack.get("MSA-1") == "AR" and ack.get("MSA-2") == "G1"
            assert (ack.get("ERR-2.1"), ack.get("ERR-2.2")) == ("MSH", "2")
            # the connection carries on: the next frame is a message of its own
            sock.sendall(b"\x0b" + msg("G3") + b"\x1c\r")
            assert parse_message(recv_frame(sock)).get("MSA-1") == "AA"
        states = sorted((r.control_id, r.state) for r in store.list())
        assert states == [("G1", "error"), ("G3", "received")]
        claimed = store.claim_received("test")
        assert len(claimed) == 1 and claimed[0][1] == msg("G3")


# -- oversize frames -----------------------------------------------------------------------------


def test_oversize_head_is_stored_with_size_and_reason(store: SqlMessageStore) -> None:
    head = msg("BIG") + b"NTE|1||" + b"x" * 500
    receipt = asyncio.run(
        ingest(store).receive_oversize(head, limit=2048, channel="mllp", peer="10.0.0.9:5")
    )
    assert receipt.state == "error" and receipt.ack_code == "AR"
    assert receipt.ack is not None
    nak = parse_message(receipt.ack)
    assert nak.get("MSA-1") == "AR" and nak.get("MSA-2") == "BIG"
    # not 207 (internal error, "try again"): the same bytes will be refused every time
    assert nak.get("ERR-3.1") not in ("", "207")
    assert "2048" in (nak.get("ERR-8") or "")
    assert receipt.message_id is not None
    rec = store.get(receipt.message_id)
    assert rec is not None and rec.state == "error"
    assert rec.control_id == "BIG" and rec.message_type == "ADT"
    assert rec.reason is not None
    assert "2048-byte limit" in rec.reason and f"first {len(head)} bytes" in rec.reason
    assert store.raw(receipt.message_id) == head
    assert store.claim_received("test") == []


def test_oversize_without_any_msh_is_still_stored_and_rejected(store: SqlMessageStore) -> None:
    head = b"z" * 3000
    receipt = asyncio.run(ingest(store).receive_oversize(head, limit=2048, channel="mllp"))
    assert receipt.state == "error" and receipt.ack_code == "AR"
    rec = store.get(receipt.message_id or 0)
    assert rec is not None and rec.state == "error" and store.raw(rec.id) == head


def test_oversize_keeps_at_most_64_kib(store: SqlMessageStore) -> None:
    head = msg("HUGE") + b"x" * (200 * 1024)
    receipt = asyncio.run(ingest(store).receive_oversize(head, limit=1024, channel="mllp"))
    assert store.raw(receipt.message_id or 0) == head[: 64 * 1024]


def test_oversize_when_the_store_fails_is_still_a_final_reject() -> None:
    receipt: Receipt = asyncio.run(
        ingest(_BrokenStore()).receive_oversize(msg("B2"), limit=1024, channel="mllp")
    )
    assert receipt.message_id is None and receipt.ack_code == "AR"
    nak = parse_message(receipt.ack or b"")
    assert "1024" in (nak.get("ERR-8") or "") and "send again" not in (nak.get("ERR-8") or "")


def test_oversize_over_mllp_is_stored_and_rejected(tmp_path: Path) -> None:
    with running_server(tmp_path, max_message_bytes=2048) as (port, store):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as big:
            big.sendall(b"\x0b" + msg("BIG") + b"NTE|1||" + b"x" * 4000)
            nak = parse_message(recv_frame(big))
            assert nak.get("MSA-1") == "AR" and nak.get("MSA-2") == "BIG"
            assert nak.get("ERR-3.1") != "207"
            assert big.recv(10) == b""  # closed after the NAK
        [rec] = store.list()
        view = store.get(rec.id)
        assert view is not None and view.state == "error" and view.control_id == "BIG"
        assert view.reason is not None and "2048-byte limit" in view.reason
        raw = store.raw(rec.id) or b""
        assert raw.startswith(msg("BIG")) and len(raw) > 2048
        assert store.claim_received("test") == []
