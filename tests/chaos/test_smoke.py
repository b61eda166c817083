"""The fault campaign in small (``make chaos`` runs it at 10,000 messages a scenario): 500
messages from 8 senders to a real ``engine serve`` killed with SIGKILL twice, while the stub FHIR
server applies some writes and cuts their answers; every ACKed message must reach both
destinations once, in order per patient, and nothing may be left waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chaos.harness import Context, Scenario, run_scenario


async def kill_twice_and_cut_answers(ctx: Context) -> None:
    """Ten answers cut, then kill -9 once 150 messages were ACKed; again at 300. The cuts are
    not cleared: the drain consumes what is left of them (a worker just restarted may not have
    delivered anything yet when the load ends)."""
    for acked in (150, 300):
        await asyncio.to_thread(ctx.fhir.switch, {"drop": 10})
        while len(ctx.load.acked) < acked and not ctx.done.is_set():
            await asyncio.sleep(0.05)
        if ctx.done.is_set():
            break
        await asyncio.to_thread(ctx.engine.kill9)
        ctx.faults.append("kill -9")
        await asyncio.to_thread(ctx.engine.start)


def test_500_messages_through_two_kills_and_cut_answers_arrive_once_in_order(
    tmp_path: Path,
) -> None:
    scenario = Scenario("smoke", "kill -9 twice, answers cut", kill_twice_and_cut_answers)
    row = asyncio.run(run_scenario(scenario, tmp_path, 500, seed=1, rate=50))
    assert row.faults.count("kill -9") == 2, row  # the kills came while messages were sent
    assert row.replayed >= 10, row  # cut answers sent again, answered from the key, not applied
    assert row.acked == 500, row  # the senders sent again what a kill cut short
    assert (row.delivered, row.duplicates, row.lost, row.out_of_order, row.stuck) == (
        500,
        0,
        0,
        0,
        0,
    ), row.detail
