"""The in-memory payer fake the eligibility service's tests use."""

from __future__ import annotations

import asyncio

import pytest

from engine.adapters.payer import MemoryPayer, PayerAdapter, PayerRejected, PayerUnavailable
from tests.adapters.payer.conftest import alice, inquiry, x270


def test_canned_answers_by_member_id_and_failures() -> None:
    payer = MemoryPayer(answers={"XQZ123456789": "ISA-271-FOR-ALICE"})
    adapter: PayerAdapter = payer  # it satisfies the protocol

    async def run() -> list[str]:
        out = [await adapter.exchange(x270(alice()))]
        payer.fail_next(2)
        payer.fail_next(1, retryable=False, detail="memory: bad request")
        for _ in range(3):
            try:
                await adapter.exchange(x270(alice()))
            except (PayerUnavailable, PayerRejected) as exc:
                out.append(type(exc).__name__)
        out.append(await adapter.exchange(x270(alice())))
        with pytest.raises(PayerRejected, match="no canned answer"):
            await adapter.exchange(x270(inquiry("OTHER")))
        payer.default = "DEFAULT-ANSWER"
        out.append(await adapter.exchange(x270(inquiry("OTHER"))))
        await adapter.close()
        return out

    assert asyncio.run(run()) == [
        "ISA-271-FOR-ALICE",
        "PayerUnavailable",
        "PayerUnavailable",
        "PayerRejected",
        "ISA-271-FOR-ALICE",
        "DEFAULT-ANSWER",
    ]
    assert len(payer.requests) == 7 and payer.closed


def test_delay_timeout_and_concurrency() -> None:
    payer = MemoryPayer(default="ANSWER", delay_s=0.03, max_concurrency=2)

    async def run() -> list[str]:
        return await asyncio.gather(*(payer.exchange(x270(alice())) for _ in range(5)))

    assert asyncio.run(run()) == ["ANSWER"] * 5
    assert payer.max_in_flight == 2
    slow = MemoryPayer(default="ANSWER", delay_s=5)
    with pytest.raises(PayerUnavailable, match="no answer within 0.02 s"):
        asyncio.run(slow.exchange(x270(alice()), timeout_s=0.02))
    with pytest.raises(PayerRejected, match="not a readable 270"):
        asyncio.run(MemoryPayer(default="A").exchange("garbage"))
