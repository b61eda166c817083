"""The in-memory destination the pipeline tests use."""

from __future__ import annotations

import asyncio

from engine.adapters.destination import DeliveryResult, Destination, Payload
from engine.adapters.memory import MemoryDestination


def payload(message_id: int) -> Payload:
    return Payload(message_id, "mem", "hl7v2", b"MSH|", "text/plain", f"{message_id}:mem", "C")


def test_records_and_fails_on_demand() -> None:
    mem = MemoryDestination("mem")
    dest: Destination = mem  # it satisfies the protocol
    mem.fail_next(2)
    mem.fail_next(1, retryable=False, detail="nope")
    mem.fail_next(0)

    async def run() -> list[DeliveryResult]:
        out = [await dest.deliver(payload(n)) for n in range(5)]
        await dest.close()
        return out

    results = asyncio.run(run())
    assert [(r.ok, r.retryable) for r in results] == [
        (False, True),
        (False, True),
        (False, False),
        (True, False),
        (True, False),
    ]
    assert results[2].detail == "nope"
    assert [p.message_id for p in mem.attempts] == [0, 1, 2, 3, 4]
    assert [p.message_id for p in mem.delivered] == [3, 4]
    assert mem.received(3) == [payload(3)] and mem.closed
    assert "MSH" not in repr(payload(1))  # no body in logs
