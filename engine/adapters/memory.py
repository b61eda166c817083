"""An in-memory :class:`~engine.adapters.destination.Destination` for pipeline and queue tests.

It records every attempt and every delivered payload, and can be told to fail the next N attempts
(retryable or permanent), to check retries, back-off and dead-lettering without a network.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from engine.adapters.destination import DeliveryResult, Payload

__all__ = ["MemoryDestination"]


@dataclass
class _Failures:
    count: int
    retryable: bool
    detail: str


class MemoryDestination:
    """Keeps payloads in lists; ``fail_next`` makes the next attempts fail."""

    def __init__(self, name: str = "memory", *, delay_s: float = 0.0) -> None:
        self.name = name
        #: every attempt, in order, failed ones included
        self.attempts: list[Payload] = []
        #: the payloads delivered successfully, in order
        self.delivered: list[Payload] = []
        self.closed = False
        self.delay_s = delay_s
        self._failures: list[_Failures] = []

    def fail_next(self, count: int = 1, *, retryable: bool = True, detail: str = "") -> None:
        """Fail the next ``count`` attempts (after any failures already queued)."""
        if count <= 0:
            return
        kind = "retryable" if retryable else "permanent"
        self._failures.append(_Failures(count, retryable, detail or f"memory: injected {kind}"))

    def received(self, message_id: int) -> list[Payload]:
        """The payloads delivered for one message."""
        return [p for p in self.delivered if p.message_id == message_id]

    async def deliver(self, payload: Payload) -> DeliveryResult:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.attempts.append(payload)
        if self._failures:
            failure = self._failures[0]
            failure.count -= 1
            if failure.count <= 0:
                self._failures.pop(0)
            if failure.retryable:
                return DeliveryResult.retry(failure.detail)
            return DeliveryResult.fail(failure.detail)
        self.delivered.append(payload)
        return DeliveryResult.success(f"memory: {len(self.delivered)} delivered")

    async def close(self) -> None:
        self.closed = True
