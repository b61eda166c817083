"""What the leader and resume tests share: a stub payer that counts the 270s it receives per
member (the subscriber's NM1*IL NM109, synthetic ids), one that holds its first answer, and many
synthetic appointments."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from datetime import date
from typing import Any

from engine.sim.demo import PATIENTS, demo_messages
from engine.sim.payer.stub import StubPayer, StubReply

__all__ = ["CountingPayer", "HeldPayer", "many_appointments"]

_MEMBER = re.compile(r"NM1\*IL\*[^~]*?\*MI\*([^~*]+)")


class CountingPayer(StubPayer):
    """The stub payer, counting each 270 by the member it asks about."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.asked: Counter[str] = Counter()

    def respond(self, x270: str) -> StubReply:
        match = _MEMBER.search(x270)
        with self.lock:
            self.asked[match.group(1) if match else "?"] += 1
        return super().respond(x270)


class HeldPayer(CountingPayer):
    """The counting stub, slow to answer its first 270: ``held`` is set once it has arrived
    (counted), and the answer comes back when ``answer`` is set. Made in the test's loop."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.held = asyncio.Event()
        self.answer = asyncio.Event()

    async def exchange(self, x270: str, *, timeout_s: float = 20.0) -> str:
        reply = await super().exchange(x270, timeout_s=timeout_s)
        if not self.held.is_set():
            self.held.set()
            await self.answer.wait()
        return reply


def many_appointments(today: date, copies: int) -> Iterator[bytes]:
    """The demo's patients (ADT with IN1, SIU the next business day) ``copies`` times over, each
    copy with its own MRN, member id, appointment and control ids (``3 * copies`` patients)."""
    for n in range(copies):
        for _, raw in demo_messages(today):
            for mrn, *_rest, member in PATIENTS:
                raw = raw.replace(mrn.encode(), f"{mrn}{n:03d}".encode())
                raw = raw.replace(f"|{member}".encode(), f"|{member}{n:03d}".encode())
            yield raw
