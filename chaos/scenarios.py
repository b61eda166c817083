"""The scenarios, in the order the campaign runs them: each a fault that runs beside the load
until the senders are done, then heals (the engine up, the destination answering, the database
reachable, the disk with room).

Processes: ``kill-engine`` (kill -9 of ``engine serve``, receiver and worker, at random moments,
restarted each time), ``kill-worker`` (kill -9 of the worker process only; the receiver's
supervisor starts another). Destinations: ``dest-flap`` (the FHIR server unreachable, then back,
by a proxy), ``dest-slow`` (slow answers, some slower than the engine's timeout: applied after it
gave up), ``dest-errors`` (500s, and 429s with Retry-After), ``dest-drop`` (a write applied and
its answer's connection cut mid-body). The database and the disk: chaos/infra.py.
"""

from __future__ import annotations

import asyncio

from chaos.harness import Context, Scenario
from chaos.proxy import TcpProxy

__all__ = ["PROCESS_AND_DESTINATION", "pause"]


async def pause(ctx: Context, seconds: float) -> bool:
    """Sleep ``seconds`` or until the load is done; True while the load still runs."""
    try:
        await asyncio.wait_for(ctx.done.wait(), seconds)
    except TimeoutError:
        return True
    return False


async def kill_engine(ctx: Context) -> None:
    kills = 0
    while await pause(ctx, ctx.rng.uniform(3, 8)):
        await asyncio.to_thread(ctx.engine.kill9)
        kills += 1
        await asyncio.sleep(ctx.rng.uniform(0, 1))
        await asyncio.to_thread(ctx.engine.start)
    ctx.faults.append(f"{kills} kill -9 of engine serve")


async def kill_worker(ctx: Context) -> None:
    kills = 0
    while await pause(ctx, ctx.rng.uniform(2, 6)):
        if await asyncio.to_thread(ctx.engine.kill_worker):
            kills += 1
    ctx.faults.append(f"{kills} kill -9 of the worker")


# -- destinations ---------------------------------------------------------------------------


async def _proxy_fhir(ctx: Context) -> None:
    proxy = TcpProxy(ctx.fhir.port).start()
    ctx.fhir_url = f"http://127.0.0.1:{proxy.port}/fhir"
    ctx.proxy = proxy


async def _unproxy(ctx: Context) -> None:
    if ctx.proxy is not None:
        ctx.proxy.stop()


async def dest_flap(ctx: Context) -> None:
    proxy = ctx.proxy
    assert proxy is not None
    downs = 0
    while await pause(ctx, ctx.rng.uniform(2, 5)):
        proxy.down()
        downs += 1
        await asyncio.sleep(ctx.rng.uniform(1, 4))
        proxy.up()
    proxy.up()
    ctx.faults.append(f"FHIR server unreachable {downs} times (1-4 s each)")


async def dest_slow(ctx: Context) -> None:
    phases = {"slow": 0, "past-timeout": 0}
    while await pause(ctx, ctx.rng.uniform(2, 4)):
        if ctx.rng.random() < 0.25:  # past the destination's 10 s timeout: applied after it
            await asyncio.to_thread(ctx.fhir.switch, {"latency_s": 11})
            phases["past-timeout"] += 1
            await asyncio.sleep(1)
        else:
            await asyncio.to_thread(ctx.fhir.switch, {"latency_s": ctx.rng.uniform(0.2, 1.5)})
            phases["slow"] += 1
            await asyncio.sleep(ctx.rng.uniform(3, 8))
        await asyncio.to_thread(ctx.fhir.switch, {"clear": True})
    await asyncio.to_thread(ctx.fhir.switch, {"clear": True})
    ctx.faults.append(
        f"{phases['slow']} slow phases (0.2-1.5 s an answer), "
        f"{phases['past-timeout']} of 11 s (past the 10 s timeout)"
    )


async def dest_errors(ctx: Context) -> None:
    bursts = {500: 0, 429: 0}
    while await pause(ctx, ctx.rng.uniform(1, 3)):
        status = 500 if ctx.rng.random() < 0.5 else 429
        count = ctx.rng.randint(10, 60)
        body: dict[str, int] = {"status": status, "count": count}
        if status == 429:
            body["retry_after"] = ctx.rng.randint(1, 3)
        await asyncio.to_thread(ctx.fhir.switch, body)
        bursts[status] += 1
    await asyncio.to_thread(ctx.fhir.switch, {"clear": True})
    ctx.faults.append(f"{bursts[500]} bursts of 500, {bursts[429]} of 429 with Retry-After")


async def dest_drop(ctx: Context) -> None:
    dropped = 0
    while await pause(ctx, ctx.rng.uniform(1, 3)):
        n = ctx.rng.randint(5, 30)
        await asyncio.to_thread(ctx.fhir.switch, {"drop": n})
        dropped += n
    await asyncio.to_thread(ctx.fhir.switch, {"clear": True})
    ctx.faults.append(f"{dropped} answers cut mid-body after the write was applied (at most)")


PROCESS_AND_DESTINATION = [
    Scenario("kill-engine", "kill -9 of engine serve, repeatedly, restarted", kill_engine),
    Scenario("kill-worker", "kill -9 of the worker process, repeatedly", kill_worker),
    Scenario(
        "dest-flap",
        "the FHIR destination unreachable 1-4 s at a time (a proxy refusing)",
        dest_flap,
        setup=_proxy_fhir,
        teardown=_unproxy,
    ),
    Scenario("dest-slow", "slow answers, some past the timeout", dest_slow),
    Scenario("dest-errors", "bursts of 500 and of 429 with Retry-After", dest_errors),
    Scenario("dest-drop", "writes applied, answers cut mid-body", dest_drop),
]
