"""``kill-leader``: two ``engine serve`` nodes on one private PostgreSQL (chaos/infra.py's
cluster, reached directly), the scheduler's leader (engine/jobs/leader.py: the node holding the
advisory lock) killed with SIGKILL at random moments and restarted, over and over, while the
HL7v2 load runs and eligibility runs against a stub payer.

The senders are spread over the two nodes (sender ``s`` to node ``s % 2``, as EHRs each set up
for one node; no balancer in front: a killed node's senders send again until it is back). The
nodes' eligibility schedule fires every minute and at each election (``ENGINE_ELIGIBILITY_CRON``
``* * * * *``, ``ENGINE_ELIGIBILITY_ON_START``); appointments for it arrive during the load: every
3-6 s the demo's three patients (ADT^A04 with IN1, SIU^S12 the next business day) twice over, each
copy its own MRN, member id and control ids (tests/jobs/leader_support.py ``many_appointments``).
The payer is the stub over HTTP in this process (``CountingPayer``: each 270 counted by the
member it asks about), answering in 300 ms, one request at a time, so a run lasts long enough
for kills to land in it.

Kills alternate: the leader's whole node (receiver and worker: kill -9 of its process group,
then ``engine serve`` started again after 0-1 s) and the leader's worker process only (its
receiver's supervisor starts another). Which node leads is read off the nodes' logs ("this node
leads", at WARNING); a new term after a kill is the takeover.

Checks besides the messages' (chaos/check.py): no 270 sent twice for one member (patient and
payer) in one run, whichever of its appointments asked (the payer's count per member against
the runs that recorded an item for it); every
appointment ACKed is checked, and every run ended, within the drain (the minute's run
included); after each kill a node leads within 30 s; and no member asked once in each of two
runs either (:func:`asked_again`: the load books one appointment per member, the payer answers
every 270, so the "checked today" rule, or a started run item, must stop a second).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

from sqlalchemy import func, select

from chaos.harness import Context, Scenario
from chaos.infra import _pg_setup, _pg_teardown
from chaos.load import Item, LoadResult, run_senders
from chaos.processes import EngineProcess
from chaos.scenarios import pause
from engine.sim.demo import PATIENTS
from engine.sim.payer.http_server import PayerStubServer
from engine.store import SqlMessageStore, create_db_engine
from engine.store.tables import eligibility_checks, job_run_items, job_runs
from tests.jobs.leader_support import CountingPayer, many_appointments

__all__ = ["LEADER", "appointment_items", "asked_again", "eligibility_problems", "lead_terms"]

#: what a node logs when it takes the lead (engine/jobs/leader.py)
LEADS = "this node leads"
#: a new leader within this many seconds of each kill
TAKEOVER_BOUND_S = 30.0
#: the payer stub's answer time (one request at a time)
PAYER_LATENCY_MS = 300
#: copies of the demo's three patients a batch; at most this many copies in all (3-digit ids)
BATCH_COPIES = 2
MAX_COPIES = 900
#: how long the appointments may take to be checked once the queues are drained
CHECK_BOUND_S = 150.0

PAYERS = """\
# the fault campaign's payer (chaos/leader.py): the stub over HTTP, in the campaign's process
default:
  name: CHAOS STUB PAYER
  adapter: x12-http
  url: {url}
  max_concurrency: 1
  timeout_s: 20
  retry: {{max_attempts: 1, base_delay_s: 0, max_delay_s: 0}}
"""


def lead_terms(log_text: str) -> int:
    """How many terms a node's log says it began (one line each)."""
    return log_text.count(LEADS)


def appointment_items(first_copy: int, copies: int) -> list[Item]:
    """Copies ``first_copy`` .. ``first_copy + copies - 1`` of the demo's patients (ADT with IN1,
    then SIU, for each), appointments the next business day after today (UTC)."""
    today = datetime.now(UTC).date()
    per_copy = 2 * len(PATIENTS)
    raws = islice(many_appointments(today, first_copy + copies), first_copy * per_copy, None)
    return [Item(raw.split(b"\r", 1)[0].split(b"|")[9].decode(), -1, 0, raw) for raw in raws]


def asked_again(asked: dict[str, int], runs: dict[str, int]) -> tuple[list[str], list[str]]:
    """Members the payer got more than one 270 about: more than the runs that had an item for
    them (twice in one run), and the rest (once in each of two runs). A member is whom a 270 asks
    about, the subscriber id the stub reads from it: one patient with the one payer, whichever
    appointment the 270 was for; ``runs`` counts the items with a check of the member's patient
    (one per run while the load books one appointment per member). Any member asked twice fails
    the scenario, so a second 270 for another appointment of the same patient and payer fails it
    as well as one for the same appointment (the engine stops both since issue 14). The second
    kind is what a 270 in flight when its leader died led to before the engine looked for started
    items: its run records the item as started but no check, so another run that starts before
    the interrupted one is resumed (the new leader's on-start run, 5 s after its election; a
    resume waits for the dead node's heartbeat to be 10 s old) found no check of the patient
    today and asked again (3 of 105 270s on 4 December, before a3f4eef)."""
    in_a_run = sorted(m for m, n in asked.items() if n > max(1, runs.get(m, 1)))
    across = sorted(m for m, n in asked.items() if n > 1 and m not in in_a_run)
    return in_a_run, across


def eligibility_problems(
    asked: dict[str, int],
    runs: dict[str, int],
    booked: int,
    checked: int,
    takeovers: Sequence[float | None],
) -> list[str]:
    """What went wrong: members the payer was asked about twice in one run (``runs``: how many
    runs had an item for each member) or once in each of two runs, appointments never checked,
    kills after which no node led within :data:`TAKEOVER_BOUND_S`."""
    problems = []
    twice, across = asked_again(asked, runs)
    if twice:
        problems.append(f"the payer was asked twice in one run about {twice[:10]}")
    if across:
        problems.append(f"the payer was asked again by another run about {across[:10]}")
    if checked < booked:
        problems.append(f"{booked - checked} of {booked} appointments never checked")
    late = [n for n, s in enumerate(takeovers, 1) if s is None or s > TAKEOVER_BOUND_S]
    if late:
        problems.append(f"no leader within {TAKEOVER_BOUND_S:.0f} s after kills {late}")
    return problems


def _nodes(ctx: Context) -> list[EngineProcess]:
    node_b: EngineProcess = ctx.extra["node_b"]
    return [ctx.engine, node_b]


def leading_pid(log_text: str) -> int | None:
    """The process of the node's last term (``node=host:pid:random`` on its line), or None."""
    found = re.findall(re.escape(LEADS) + r".*?node=[^\s:]+:(\d+):", log_text)
    return int(found[-1]) if found else None


def _terms(nodes: Iterable[EngineProcess]) -> list[int]:
    return [lead_terms(n.log.read_text(errors="replace")) if n.log.exists() else 0 for n in nodes]


async def _new_leader(nodes: list[EngineProcess], before: list[int], bound_s: float) -> int | None:
    """The node that began a term since ``before`` (its index), or None after ``bound_s``."""
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        now = await asyncio.to_thread(_terms, nodes)
        for n, (was, is_) in enumerate(zip(before, now, strict=True)):
            if is_ > was:
                return n
        await asyncio.sleep(0.2)
    return None


# -- setup and teardown ---------------------------------------------------------------------


def _env(ctx: Context) -> dict[str, str]:
    return {
        "ENGINE_DATABASE_URL": ctx.db_url,
        "ENGINE_PAYERS_DIR": str(ctx.home / "payers"),
        "ENGINE_TIMEZONE": "UTC",
        "ENGINE_ELIGIBILITY_CRON": "* * * * *",
        "ENGINE_ELIGIBILITY_ON_START": "true",
    }


async def _setup(ctx: Context) -> None:
    await _pg_setup(ctx)  # its proxy stays unused: the nodes reach the cluster directly
    payer = CountingPayer(latency_ms=PAYER_LATENCY_MS)
    stub = PayerStubServer(payer)
    await asyncio.to_thread(stub.start)
    ctx.extra["payer_stub"], ctx.extra["payer"] = stub, payer
    (ctx.home / "payers").mkdir()
    (ctx.home / "payers" / "payers.yaml").write_text(PAYERS.format(url=stub.realtime_url))
    home_b = ctx.home / "node-b"  # its own var/ (and log); the same database, routes, outbox
    home_b.mkdir()
    node_b = EngineProcess(home_b, Path(ctx.engine.env["ENGINE_ROUTES_DIR"]), env=_env(ctx))
    ctx.extra["node_b"] = node_b
    ctx.mllp_ports = [ctx.engine.mllp, node_b.mllp]


async def _teardown(ctx: Context) -> None:
    try:
        if "node_b" in ctx.extra:
            await asyncio.to_thread(ctx.extra["node_b"].stop)
        if "payer_stub" in ctx.extra:
            await asyncio.to_thread(ctx.extra["payer_stub"].stop)
    finally:
        await _pg_teardown(ctx)


# -- the fault ------------------------------------------------------------------------------


async def _feed(ctx: Context) -> None:
    """Appointments for the eligibility runs, a batch every 3-6 s while the load runs."""
    result = LoadResult()
    ctx.extra["appointments"] = result
    copy, batches = 0, 0
    while copy < MAX_COPIES and await pause(ctx, ctx.rng.uniform(3, 6)):
        items = await asyncio.to_thread(appointment_items, copy, BATCH_COPIES)
        copy += BATCH_COPIES
        port = ctx.mllp_ports[batches % len(ctx.mllp_ports)]
        batches += 1
        await run_senders(port, [items], time.monotonic() + 120, 0.0, result)


async def _kill_node(ctx: Context, node: EngineProcess) -> None:
    await asyncio.to_thread(node.kill9)
    await asyncio.sleep(ctx.rng.uniform(0, 1))
    await asyncio.to_thread(node.start)


async def kill_leader(ctx: Context) -> None:
    nodes = _nodes(ctx)
    await asyncio.to_thread(nodes[1].start)
    feeder = asyncio.create_task(_feed(ctx), name="appointments")
    takeovers: list[float | None] = []
    ctx.extra["takeovers"] = takeovers
    kinds = {"node": 0, "worker": 0}
    before = [0, 0]
    leader = await _new_leader(nodes, before, 90)
    while await pause(ctx, ctx.rng.uniform(6, 14)):
        if leader is None:  # lost track (no term since the last kill): look again
            leader = await _new_leader(nodes, before, 1)
            continue
        whole = sum(kinds.values()) % 2 == 0
        before = await asyncio.to_thread(_terms, nodes)
        killed_at = time.monotonic()
        if whole:  # restarted while the other node takes over
            kill = asyncio.create_task(_kill_node(ctx, nodes[leader]))
        else:  # the worker process that leads: a node has two, and the other's death is
            # no takeover (it was taken for one, and a term that never ended for a late one)
            text = nodes[leader].log.read_text(errors="replace")
            if not await asyncio.to_thread(nodes[leader].kill_worker, leading_pid(text)):
                continue  # its worker was being restarted: nothing killed
        kinds["node" if whole else "worker"] += 1
        leader = await _new_leader(nodes, before, TAKEOVER_BOUND_S + 5)
        takeovers.append(time.monotonic() - killed_at if leader is not None else None)
        if whole:
            await kill
    for node in nodes:  # healed: both up for the drain
        if not node.alive():
            await asyncio.to_thread(node.start)
    await feeder
    measured = [s for s in takeovers if s is not None]
    ctx.faults.append(
        f"{kinds['node']} kill -9 of the leader's node, {kinds['worker']} of its worker only"
        + (
            f"; a new leader {min(measured):.1f}-{max(measured):.1f} s after "
            f"(median {statistics.median(measured):.1f})"
            if measured
            else ""
        )
    )


# -- the check ------------------------------------------------------------------------------


def _runs_per_member(url: str) -> dict[str, int]:
    """For each member (the subscriber id of its patient's Coverage): how many runs recorded
    an item with a check for it."""
    db = create_db_engine(url)
    store = SqlMessageStore(db)
    try:
        with db.connect() as conn:
            rows = conn.execute(
                select(eligibility_checks.c.patient_url, func.count())
                .select_from(
                    job_run_items.join(
                        eligibility_checks, eligibility_checks.c.id == job_run_items.c.result_id
                    )
                )
                .group_by(eligibility_checks.c.patient_url)
            ).all()
        out: dict[str, int] = {}
        coverage_of = store.resources_for_patients("Coverage", (str(r[0]) for r in rows))
        for patient_url, n in rows:
            coverages = coverage_of[str(patient_url)]
            if coverages:
                out[str(coverages[0].get("subscriberId"))] = int(n)
        return out
    finally:
        db.dispose()


def _eligibility(url: str) -> tuple[int, int, int, int]:
    """Appointments checked, checks interrupted mid-270 (not asked again), runs, runs ended."""
    db = create_db_engine(url)
    try:
        with db.connect() as conn:
            checked = conn.execute(
                select(func.count(func.distinct(eligibility_checks.c.appointment_url)))
            ).scalar_one()
            interrupted = conn.execute(
                select(func.count()).where(eligibility_checks.c.reason.contains("not asked twice"))
            ).scalar_one()
            runs = conn.execute(select(func.count()).select_from(job_runs)).scalar_one()
            ended = conn.execute(
                select(func.count()).where(job_runs.c.finished_at.is_not(None))
            ).scalar_one()
    finally:
        db.dispose()
    return int(checked), int(interrupted), int(runs), int(ended)


async def verify(ctx: Context) -> list[str]:
    nodes = _nodes(ctx)
    appointments: LoadResult = ctx.extra.get("appointments", LoadResult())
    booked = sum(1 for c in appointments.acked if c.startswith("DEMO-S-"))
    end = time.monotonic() + CHECK_BOUND_S
    while True:
        checked, interrupted, runs, ended = await asyncio.to_thread(_eligibility, ctx.db_url)
        # every appointment checked, and every run ended (an interrupted one resumed: its
        # items then say which members the payer was asked about in it)
        if (checked >= booked and ended == runs) or time.monotonic() > end:
            break
        for node in nodes:
            if not node.alive():
                await asyncio.to_thread(node.start)
        await asyncio.sleep(2)
    payer: CountingPayer = ctx.extra["payer"]
    asked = dict(payer.asked)
    per_member = await asyncio.to_thread(_runs_per_member, ctx.db_url)
    in_a_run, across = asked_again(asked, per_member)
    ctx.faults.append(
        f"eligibility: {booked} appointments booked, {checked} checked in {runs} runs "
        f"({ended} ended), {interrupted} cut mid-270 (not asked again in their run); "
        f"{sum(asked.values())} 270s for {len(asked)} members, {len(in_a_run)} asked twice in "
        f"one run, {len(across)} asked again by another run"
        + (f" ({', '.join(across[:5])})" if across else "")
    )
    return eligibility_problems(asked, per_member, booked, checked, ctx.extra.get("takeovers", []))


LEADER = [
    Scenario(
        "kill-leader",
        "two nodes on one PostgreSQL; the scheduler's leader killed -9 mid eligibility runs",
        kill_leader,
        setup=_setup,
        teardown=_teardown,
        env=_env,
        verify=verify,
    ),
]
