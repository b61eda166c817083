"""An in-memory :class:`~engine.adapters.payer.contract.PayerAdapter` for eligibility tests.

It answers each 270 with the canned X12 text (a 271, or a TA1/999) set for its subscriber's
member ID (2100C NM109), records every 270 it was sent, and can be told to fail the next N
exchanges (:class:`PayerUnavailable` or :class:`PayerRejected`) or to take its time, so retries,
back-off, timeouts and concurrency limits can be tested without a network. ``max_in_flight``
says how many exchanges ever ran at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from engine.adapters.payer.contract import PayerRejected, PayerUnavailable
from engine.x12.errors import X12Error
from engine.x12.x270 import read_270

__all__ = ["MemoryPayer"]


@dataclass
class _Failures:
    count: int
    retryable: bool
    detail: str


class MemoryPayer:
    """Canned answers by member ID; ``fail_next`` and ``delay_s`` for the unhappy paths."""

    def __init__(
        self,
        name: str = "memory",
        *,
        answers: Mapping[str, str] | None = None,
        default: str | None = None,
        delay_s: float = 0.0,
        max_concurrency: int | None = None,
    ) -> None:
        self.name = name
        #: member ID -> the X12 text answered for it
        self.answers: dict[str, str] = dict(answers or {})
        #: the answer for member IDs without one (None: PayerRejected)
        self.default = default
        self.delay_s = delay_s
        #: every 270 received, in order, failed exchanges included
        self.requests: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False
        self._failures: list[_Failures] = []
        self._max_concurrency = max_concurrency
        self._limit: asyncio.Semaphore | None = None

    def set_answer(self, member_id: str, x12: str) -> None:
        self.answers[member_id] = x12

    def fail_next(self, count: int = 1, *, retryable: bool = True, detail: str = "") -> None:
        """Fail the next ``count`` exchanges (after any failures already queued)."""
        if count <= 0:
            return
        kind = "unavailable" if retryable else "rejected"
        self._failures.append(_Failures(count, retryable, detail or f"memory: injected {kind}"))

    async def exchange(self, x270: str, *, timeout_s: float = 20.0) -> str:
        if self._max_concurrency is not None and self._limit is None:
            self._limit = asyncio.Semaphore(self._max_concurrency)
        if self._limit is not None:
            async with self._limit:
                return await self._exchange(x270, timeout_s)
        return await self._exchange(x270, timeout_s)

    async def _exchange(self, x270: str, timeout_s: float) -> str:
        self.requests.append(x270)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                if self.delay_s >= timeout_s:
                    await asyncio.sleep(timeout_s)
                    raise PayerUnavailable(f"{self.name}: no answer within {timeout_s:g} s")
                await asyncio.sleep(self.delay_s)
            if self._failures:
                failure = self._failures[0]
                failure.count -= 1
                if failure.count <= 0:
                    self._failures.pop(0)
                if failure.retryable:
                    raise PayerUnavailable(failure.detail)
                raise PayerRejected(failure.detail)
            try:
                inquiries = read_270(x270)
            except X12Error as exc:
                raise PayerRejected(f"{self.name}: the request is not a readable 270") from exc
            member_id = inquiries[0].subscriber.member_id if inquiries else ""
            answer = self.answers.get(member_id, self.default)
            if answer is None:
                raise PayerRejected(f"{self.name}: no canned answer for this member ID")
            return answer
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        self.closed = True
