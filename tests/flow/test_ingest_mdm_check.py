"""An MDM's document check (decode and type check of OBX-5, up to megabytes) runs off the
receiver's event loop: a message on another connection is acknowledged meanwhile."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from engine.errors import EngineError
from engine.flow.ingest import Ingest
from engine.hl7v2.codec import Message
from engine.store import SqlMessageStore
from tests.flow.test_ingest import adt

MDM = (
    b"MSH|^~\\&|TRANSCRIBE|CLINIC|ENGINE|HUB|20260102030405||MDM^T02|MDM-1|P|2.5.1\r"
    b"EVN|T02|20260102030405\r"
    b"PID|1||MRN1^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
    b"TXA|1|CN|AP|20260102||||||||DOC-1||||||AU\r"
    b"OBX|1|ED|11506-3^Progress note^LN||^application^pdf^Base64^JVBERi0=\r"
)


class _SlowDocumentCheck:
    """A route gate whose MDM check takes a while, as decoding a 16 MiB OBX-5 does."""

    def __init__(self) -> None:
        self.finished_at = 0.0

    def refuse(self, message: Message) -> EngineError | None:
        if message.msh.get(9, 1, 1) == "MDM":
            time.sleep(0.6)  # blocking, like the decode
            self.finished_at = time.monotonic()
        return None


def test_an_adt_is_acknowledged_while_an_mdm_is_checked(store: SqlMessageStore) -> None:
    gate = _SlowDocumentCheck()
    ingest = Ingest(
        store,
        identity=("ENGINE", "HUB"),
        clock=lambda: datetime(2026, 1, 2, tzinfo=UTC),
        routes=gate,
    )

    async def run() -> float:
        mdm = asyncio.create_task(ingest.receive(MDM, channel="mllp", peer="10.0.0.1:1"))
        await asyncio.sleep(0.05)  # the MDM's check has begun
        adt_receipt = await ingest.receive(adt(2), channel="mllp", peer="10.0.0.2:1")
        acked = time.monotonic()
        assert adt_receipt.ack_code == "AA"
        assert (await mdm).ack_code == "AA"
        return acked

    adt_acked = asyncio.run(run())
    assert adt_acked < gate.finished_at, "the ADT waited for the MDM's document check"
