"""One scenario's run: the destinations and the engine started, the load sent while the
scenario's fault runs beside it, the faults healed, the queues drained (within a bound), and
the verdict read off the destinations.

The engine runs as ``make run`` runs it (``engine serve``: receiver and worker process; SQLite
under its ``var/`` unless the scenario gives a PostgreSQL URL) with routes like the example's:
every ADT to the stub FHIR server (``engine stub-fhir``, a process of its own) as a transaction
Bundle and, as received, to a folder; the documents dropped in the watched folder during the
load (chaos/documents.py), as received, to a folder of their own. The retry policy is shorter
than the example's (at most 10 s between attempts instead of 300 s) so that a scenario's backlog
drains in minutes.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos import documents
from chaos.check import judge, lost_detail, quantile, read_fhir, read_files, read_store, unfinished
from chaos.load import LoadResult, plan, run_senders
from chaos.processes import EngineProcess, StubFhirProcess
from chaos.proxy import TcpProxy

__all__ = ["Context", "Row", "Scenario", "run_scenario"]

ROUTES = """\
# the fault campaign's routes (chaos/harness.py): the example's two ADT routes
destinations:
  local-fhir:
    type: fhir
    base_url: {fhir}
    mode: transaction
    timeout_s: 10
    retry: {{max_attempts: 200, base_delay_s: 0.5, max_delay_s: 10}}
  dropbox:
    type: file
    directory: {outbox}
  documents-folder:
    type: file
    directory: {outbox}/documents
routes:
  - name: to-local-fhir
    match: {{message: [ADT, SIU, DFT]}}
    mapping: fhir
    destinations: [local-fhir]
  - name: adt-to-dropbox
    match: {{message: [ADT]}}
    mapping: none
    destinations: [dropbox]
  - name: documents-to-folder
    match: {{kind: document}}
    mapping: none
    destinations: [documents-folder]
"""

#: how long the senders may take (the faults slow them; a sender then gives up)
LOAD_BOUND_S = 600.0
#: how long the queues may take to drain once the faults are healed
DRAIN_BOUND_S = 180.0


@dataclass
class Context:
    """What a scenario's fault works with."""

    name: str
    home: Path
    rng: random.Random
    engine: EngineProcess
    fhir: StubFhirProcess
    db_url: str
    outbox: Path
    #: set when the senders are done: the fault stops and heals
    done: asyncio.Event
    #: what the fault did (shown in the notes column)
    faults: list[str] = field(default_factory=list)
    #: the FHIR base URL the routes deliver to (a proxy's, when the scenario puts one between)
    fhir_url: str = ""
    #: a proxy the scenario put between the engine and a peer (a destination, the database)
    proxy: TcpProxy | None = None
    #: what the senders have seen so far (filled as the ACKs come)
    load: LoadResult = field(default_factory=LoadResult)
    #: anything else a scenario's setup made for its fault and teardown
    extra: dict[str, Any] = field(default_factory=dict)
    #: the MLLP ports the senders spread over (none: the engine's); a scenario of several nodes
    mllp_ports: list[int] = field(default_factory=list)


@dataclass
class Row:
    scenario: str
    sent: int
    acked: int
    delivered: int
    duplicates: int
    lost: int
    out_of_order: int
    stuck: int
    seconds: float
    naks: int
    faults: str
    #: deliveries the FHIR stub answered from its idempotency memory (sent again)
    replayed: int = 0
    detail: list[str] = field(default_factory=list)
    #: what the scenario's own check found wrong (beyond the messages: the payer asked twice,
    #: a leader late); each fails the scenario
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.duplicates or self.lost or self.out_of_order or self.stuck or self.problems
        )


Fault = Callable[[Context], Coroutine[Any, Any, None]]
#: a scenario's own check, once the queues are drained and the engine still runs: what is wrong
Verify = Callable[[Context], Coroutine[Any, Any, list[str]]]


@dataclass
class Scenario:
    name: str
    description: str
    fault: Fault
    #: prepares the context before the engine starts (a proxy, a database, a mount)
    setup: Fault | None = None
    #: undoes ``setup`` (always called)
    teardown: Fault | None = None
    #: settings for the engine (a database URL, a var dir)
    env: Callable[[Context], dict[str, str]] | None = None
    #: the scenario's own check after the drain (the engine still up)
    verify: Verify | None = None


async def _drain(ctx: Context, bound_s: float) -> float:
    """Wait until the store has nothing left to do (or ``bound_s``); the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < bound_s:
        if not ctx.engine.alive():  # a scenario's fault may have left it down: up again
            await asyncio.to_thread(ctx.engine.start)
        try:
            left = await asyncio.to_thread(unfinished, ctx.db_url)
        except Exception:  # noqa: BLE001 (the database may be coming back: ask again)
            left = -1
        if left == 0:
            break
        await asyncio.sleep(2)
    return time.monotonic() - start


async def run_scenario(
    scenario: Scenario,
    root: Path,
    messages: int,
    seed: int,
    senders: int = 8,
    rate: float = 100,
    keep: bool = False,
) -> Row:
    home = root / scenario.name
    home.mkdir(parents=True, exist_ok=False)
    routes = home / "routes"
    routes.mkdir()
    fhir = StubFhirProcess(home)
    ctx = Context(
        name=scenario.name,
        home=home,
        rng=random.Random(seed),
        engine=EngineProcess(home, routes),
        fhir=fhir,
        db_url=f"sqlite:///{home / 'var' / 'engine.db'}",
        outbox=home / "var" / "outbox",
        done=asyncio.Event(),
        fhir_url=fhir.base_url,
    )
    ctx.extra["keep"] = keep  # a scenario's database left running to be looked at
    try:
        fhir.start()
        if scenario.setup is not None:
            await scenario.setup(ctx)  # may set fhir_url, db_url, outbox
        (routes / "example.yaml").write_text(ROUTES.format(fhir=ctx.fhir_url, outbox=ctx.outbox))
        if scenario.env is not None:
            ctx.engine.env.update(scenario.env(ctx))
        await asyncio.to_thread(ctx.engine.start)
        return await _run(scenario, ctx, messages, senders, rate)
    finally:
        await asyncio.to_thread(ctx.engine.stop)
        fhir.stop()
        if scenario.teardown is not None:
            await scenario.teardown(ctx)


async def _run(scenario: Scenario, ctx: Context, messages: int, senders: int, rate: float) -> Row:
    started = time.monotonic()
    items = plan(messages, senders)
    ports = ctx.mllp_ports or [ctx.engine.mllp]
    load_task = asyncio.create_task(
        run_senders(ports, items, started + LOAD_BOUND_S, rate, ctx.load), name="load"
    )
    fault_task = asyncio.create_task(scenario.fault(ctx), name="fault")
    inbox = documents.inbox_of(ctx.engine.env, ctx.home)
    docs = documents.DocumentLoad()
    docs_task = asyncio.create_task(
        documents.drop_documents(inbox, ctx.done, docs, ctx.name), name="docs"
    )
    load: LoadResult = await load_task
    ctx.done.set()
    await fault_task  # it stops and heals
    await docs_task
    await _drain(ctx, DRAIN_BOUND_S)
    await documents.wait_taken(inbox)  # the last ones dropped: taken, then delivered
    await _drain(ctx, DRAIN_BOUND_S)
    problems = await scenario.verify(ctx) if scenario.verify is not None else []
    found = await asyncio.to_thread(documents.delivered_documents, ctx.outbox / "documents")
    problems += documents.document_problems(docs, found, inbox)
    await asyncio.to_thread(ctx.engine.stop)  # everything recorded; nothing more will move
    store = await asyncio.to_thread(read_store, ctx.db_url)
    log = await asyncio.to_thread(ctx.fhir.log_entries)
    applied = read_fhir(log, store.cid_of)
    # deliveries sent again after an outcome was lost, answered from the stub's idempotency
    # memory (what would be duplicates at a server without Idempotency-Key support)
    replayed = sum(1 for e in log if e.get("replayed"))
    files = await asyncio.to_thread(read_files, ctx.outbox)
    verdict = judge(messages, load.acked, store, applied, files)
    row = Row(
        scenario=scenario.name,
        sent=messages,
        acked=verdict.acked,
        delivered=verdict.delivered,
        duplicates=verdict.duplicates,
        lost=verdict.lost,
        out_of_order=verdict.out_of_order,
        stuck=verdict.stuck,
        seconds=round(time.monotonic() - started, 1),
        naks=sum(load.naks.values()),
        faults="; ".join(ctx.faults),
        replayed=replayed,
        detail=[documents.summary(docs, found, documents.leftover_temps(ctx.outbox / "documents"))]
        + lost_detail(verdict, store, applied, files)
        + [f"duplicate: {c}" for c in verdict.duplicate_ids]
        + [f"FAILED: {p}" for p in problems],
        problems=problems,
    )
    report = {
        **asdict(row),
        "naks_by_code": dict(load.naks),
        "broken_connections": load.broken,
        "unsent": load.unsent,
        "fhir_replayed": replayed,
        "ack_p99_ms": round(1000 * quantile(load.latencies, 0.99), 1),
    }
    (ctx.home / "result.json").write_text(json.dumps(report, indent=2))
    return row
