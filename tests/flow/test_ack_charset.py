"""An ACK goes out whatever our own name holds (review of 7 December): with
``ENGINE_APPLICATION_NAME`` "HÔPITAL" and a sender whose MSH-18 says ASCII and whose MSH-5/6 are
empty, the ACK (built after the message was committed) raised "text cannot be written in the
message character set ascii": the sender got no answer and resent for ever, each resend a
duplicate failing the same way. The character the sender's set cannot carry now reads ``?``."""

from __future__ import annotations

import asyncio

import pytest

from engine.flow.ingest import Ingest
from engine.hl7v2.codec import parse_message
from engine.store import SqlMessageStore

HEAD = "MSH|^~\\&|FRONTDESK|CLINIC|||20260102030405||ADT^A04|CTRL-1|{pid}|2.5.1||||||ASCII\r"
BODY = "EVN|A04|20260102030405\rPID|1||MRN1^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"


@pytest.mark.parametrize(
    ("processing", "code"),
    [("P", "AA"), ("X", "AE")],  # accepted (the template), refused (composed in full)
)
def test_our_name_outside_the_senders_charset_still_gets_an_ack(
    store: SqlMessageStore, processing: str, code: str
) -> None:
    ingest = Ingest(store, identity=("HÔPITAL", "HUB"))
    raw = (HEAD.format(pid=processing) + BODY).encode("ascii")
    receipt = asyncio.run(ingest.receive(raw, channel="mllp", peer="127.0.0.1:1"))
    assert receipt.message_id is not None and receipt.ack is not None
    ack = parse_message(receipt.ack)
    assert (ack.get("MSA-1"), ack.get("MSA-2")) == (code, "CTRL-1")
    assert ack.get("MSH-3") == "H?PITAL"
    assert receipt.ack.decode("ascii")  # every byte the sender's set can read
