"""athena's token endpoint asking for a wait: shared by every process (the token file), but never
for longer than five minutes, and a wait written further out than that is not believed.

An uncapped ``Retry-After`` from the token endpoint (``1000000000``) was written into the shared
token file as ``not_before`` and stopped every athena delivery and pull, across restarts, for 31
years (engine/adapters/token_cache.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from engine.adapters.athena import AthenaDestination
from engine.adapters.destination import DeliveryResult
from engine.adapters.token_cache import TokenCooldown, shared_token
from engine.settings import Settings
from engine.sim.athena import StubAthenaServer
from tests.adapters.test_athena import athena, destination, home, payload, server

__all__ = ["athena", "home", "server"]  # the fixtures, for pytest

FIVE_MINUTES = 300.0


def deliver_at(dest: AthenaDestination, at: float, n: int) -> DeliveryResult:
    """One delivery with the token clock at ``at`` (time.time() seconds)."""

    async def run() -> DeliveryResult:
        dest.api.token.clock = lambda: at
        try:
            return await dest.deliver(payload(n))
        finally:
            await dest.close()

    return asyncio.run(run())


def token_file(dest: AthenaDestination, home: Path) -> Path:
    return dest.api.token.cache_file(Settings(home=home))


def test_an_absurd_token_retry_after_is_waited_five_minutes_at_most(
    athena: StubAthenaServer, home: Path
) -> None:
    athena.state.token_limit_per_minute = 0
    athena.state.token_retry_after = 10**9
    now = time.time()
    dest = destination(athena, home)
    first = deliver_at(dest, now, 1)
    assert not first.ok and first.retryable, first
    assert first.retry_after_s is not None and 0 < first.retry_after_s <= FIVE_MINUTES
    not_before = json.loads(token_file(dest, home).read_text())["not_before"]
    assert now < not_before <= now + FIVE_MINUTES + 1
    # inside the wait: no process asks the token endpoint again
    assert not deliver_at(destination(athena, home), now + 60, 2).ok
    assert athena.state.token_requests == 1
    # the endpoint is fine again; after the five minutes (a restarted engine), it is asked
    athena.state.token_limit_per_minute = 5
    later = deliver_at(destination(athena, home), now + FIVE_MINUTES + 2, 3)
    assert later.ok, later
    assert athena.state.token_requests == 2


def test_a_stored_wait_past_the_cap_is_not_believed(athena: StubAthenaServer, home: Path) -> None:
    """A token file written by an engine without the cap (or before a clock jump) still says
    "wait 31 years": that is ignored and the token endpoint is asked."""
    dest = destination(athena, home)
    path = token_file(dest, home)
    path.parent.mkdir(mode=0o700, parents=True)
    path.write_text(json.dumps({"not_before": time.time() + 1e9}))
    result = deliver_at(dest, time.time(), 1)
    assert result.ok, result
    assert athena.state.token_requests == 1


def test_the_shared_file_caps_whatever_wait_a_fetch_reports(tmp_path: Path) -> None:
    """Any token fetch (athena's, a SMART backend's) raising a cooldown: the file and the caller
    are told five minutes, not what the fetch said."""
    path = tmp_path / "tokens" / "x.json"
    now = 1_000_000.0

    async def cooldown() -> tuple[str, float]:
        raise TokenCooldown("token endpoint -> 429", retry_after_s=1e9)

    async def good() -> tuple[str, float]:
        return "a-token", 3600.0

    async def run() -> tuple[float, float, str]:
        try:
            await shared_token(path, cooldown, clock=lambda: now)
        except TokenCooldown as exc:
            told = exc.retry_after_s
        stored = json.loads(path.read_text())["not_before"]
        got = await shared_token(path, good, clock=lambda: now + FIVE_MINUTES)
        return told, stored, got.token

    told, stored, token = asyncio.run(run())
    assert told == FIVE_MINUTES
    assert stored == now + FIVE_MINUTES
    assert token == "a-token"
