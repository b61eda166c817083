"""Enhanced mode's application ACKs (HL7 v2.5.1 §2.9.3) under load: they wait for their
messages beside one another, one state query a tick for all of them; at most
MAX_PENDING_APPLICATION_ACKS wait at once; one whose connection closed stops waiting; and the
group commits never queue behind them (or anything else) on asyncio's default thread pool."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from engine.adapters.mllp.server import MLLPServer
from engine.flow import ingest as ingest_module
from engine.flow.ingest import Ingest, Receipt
from engine.hl7v2.codec import parse_message
from engine.service import _MLLPHandler
from engine.store import Incoming, SqlMessageStore, Stored

CLOCK = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
ADT = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260304050607||ADT^A08|CTRL-{n}|P|2.5.1|||AL|{app}\r"
    "PID|1||MRN{n}^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
)


def adt(n: int, app: str = "AL") -> bytes:
    return ADT.format(n=n, app=app).encode()


class _MemoryStore:
    """Stores nothing, numbers each message: Ingest's commits without a database."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def save_batch(self, items: list[Incoming]) -> list[Stored]:
        with self._lock:
            return [Stored(next(self._ids), CLOCK) for _ in items]


class _States:
    """The store's ``states_of``: the states the test sets (``received`` until then; ``gone``:
    not in the store), and each query's ids. Given one id, as the per-message reader these
    replaced was, it answers that id's state (so that these tests fail on what they check when
    run against that form, not on a type)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self._states: dict[int, str] = {}
        self._lock = threading.Lock()

    def settle(self, ids: Sequence[int | None], state: str) -> None:
        """Set the state of ``ids`` all at once (a query sees all of them changed or none)."""
        with self._lock:
            self._states.update((i, state) for i in ids if i is not None)

    def __call__(self, ids: Sequence[int] | int) -> dict[int, str] | str | None:
        asked = [ids] if isinstance(ids, int) else list(ids)
        with self._lock:
            self.calls.append(asked)
            found = {i: s for i in asked if (s := self._states.get(i, "received")) != "gone"}
        return found.get(ids) if isinstance(ids, int) else found


def _ingest() -> Ingest:
    return Ingest(_MemoryStore(), identity=("ENGINE", "HUB"), clock=lambda: CLOCK)  # type: ignore[arg-type]


async def _until(condition: Callable[[], object], within_s: float = 20.0) -> None:
    """Wait for ``condition`` (a generous bound: the machine may be loaded)."""
    async with asyncio.timeout(within_s):
        while not condition():
            await asyncio.sleep(0.01)


async def _received(ing: Ingest, numbers: range, app: str = "AL") -> list[Receipt]:
    receipts = [await ing.receive(adt(n, app), channel="mllp") for n in numbers]
    assert all(r.application_ack and r.state == "received" for r in receipts)
    return receipts


def test_waiting_application_acks_share_one_state_query_a_tick() -> None:
    states = _States()

    async def run() -> tuple[list[bytes | None], list[int]]:
        ing = _ingest()
        receipts = await _received(ing, range(20))
        waits = [
            asyncio.create_task(ing.application_ack(adt(n), r, states))
            for n, r in enumerate(receipts)
        ]
        await _until(lambda: len(states.calls) >= 3)  # three ticks with all 20 waiting
        states.settle([r.message_id for r in receipts], "routed")
        acks = await asyncio.wait_for(asyncio.gather(*waits), 20)
        return acks, [r.message_id or 0 for r in receipts]

    acks, ids = asyncio.run(run())
    # every query asked for all 20 at once (a query per message and tick made thousands)
    assert states.calls and all(sorted(call) == sorted(ids) for call in states.calls)
    for n, (ack, mid) in enumerate(zip(acks, ids, strict=True)):
        assert ack is not None
        parsed = parse_message(ack)
        assert parsed.get("MSA-1") == "AA" and parsed.get("MSA-2") == f"CTRL-{n}"
        assert parsed.get("MSH-10") == f"P{mid}"


@pytest.mark.parametrize(
    ("app", "state", "code"),
    [
        ("AL", "routed", "AA"),
        ("AL", "error", "AE"),
        ("AL", "gone", "AE"),  # no longer in the store: as an error, as before
        ("ER", "routed", None),
        ("ER", "unrouted", None),
        ("ER", "error", "AE"),
        ("SU", "delivered", "AA"),
        ("SU", "error", None),
    ],
)
def test_the_application_ack_is_the_one_msh16_asks_for(
    app: str, state: str, code: str | None
) -> None:
    states = _States()

    async def run() -> bytes | None:
        ing = _ingest()
        [receipt] = await _received(ing, range(1), app)
        wait = asyncio.create_task(ing.application_ack(adt(0, app), receipt, states))
        await _until(lambda: states.calls)
        states.settle([receipt.message_id], state)
        return await asyncio.wait_for(wait, 20)

    ack = asyncio.run(run())
    assert (parse_message(ack).get("MSA-1") if ack else None) == code


def test_an_application_ack_not_settled_in_time_is_not_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    states = _States()

    async def run() -> bytes | None:
        ing = _ingest()
        [receipt] = await _received(ing, range(1))
        return await asyncio.wait_for(
            ing.application_ack(adt(0), receipt, states, timeout_s=0.2), 20
        )

    with caplog.at_level(logging.WARNING, logger="engine.flow.ingest"):
        ack = asyncio.run(run())
    assert ack is None
    assert "no application ACK: processing took too long" in caplog.messages


def test_past_the_limit_the_application_ack_is_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ingest_module, "MAX_PENDING_APPLICATION_ACKS", 3)
    states = _States()

    async def run() -> tuple[bytes | None, list[bytes | None]]:
        ing = _ingest()
        receipts = await _received(ing, range(4))
        waits = [
            asyncio.create_task(ing.application_ack(adt(n), r, states))
            for n, r in enumerate(receipts[:3])
        ]
        await _until(lambda: states.calls)  # the three wait
        # the fourth is stored and got its commit ACK; its application ACK is not waited for
        assert receipts[3].ack is not None and parse_message(receipts[3].ack).get("MSA-1") == "CA"
        fourth = await asyncio.wait_for(ing.application_ack(adt(3), receipts[3], states), 20)
        states.settle([r.message_id for r in receipts], "routed")
        return fourth, list(await asyncio.wait_for(asyncio.gather(*waits), 20))

    with caplog.at_level(logging.WARNING, logger="engine.flow.ingest"):
        fourth, first_three = asyncio.run(run())
    assert fourth is None
    assert "application ACK skipped: too many waiting for their messages" in caplog.messages
    assert all(a is not None and parse_message(a).get("MSA-1") == "AA" for a in first_three)


def test_group_commits_do_not_queue_on_the_default_thread_pool() -> None:
    """The default pool's one thread is busy: a message is stored and acknowledged anyway."""
    release = threading.Event()

    async def run() -> Receipt:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        busy = loop.run_in_executor(None, release.wait, 60)
        ing = _ingest()
        await ing.start()
        try:
            return await asyncio.wait_for(ing.receive(adt(1), channel="mllp"), 15)
        finally:
            release.set()
            await busy
            await ing.stop()

    receipt = asyncio.run(run())
    assert receipt.ack_code == "CA" and receipt.message_id is not None


async def _send(writer: asyncio.StreamWriter, raw: bytes) -> None:
    writer.write(b"\x0b" + raw + b"\x1c\r")
    await writer.drain()


async def _frame(reader: asyncio.StreamReader) -> bytes:
    return (await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 20))[:-2].lstrip(b"\x0b")


def test_over_mllp_the_application_ack_follows_the_commit_ack() -> None:
    states = _States()

    async def run() -> tuple[bytes, bytes]:
        ing = _ingest()
        await ing.start()
        server = MLLPServer(_MLLPHandler(ing, states), host="127.0.0.1", port=0)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
            await _send(writer, adt(7))
            commit = await _frame(reader)
            await _until(lambda: states.calls)
            mid = int(parse_message(commit).get("MSH-10").removeprefix("A"))
            states.settle([mid], "routed")
            application = await _frame(reader)
            writer.close()
            return commit, application
        finally:
            await server.stop()
            await ing.stop()

    commit, application = asyncio.run(run())
    assert parse_message(commit).get("MSA-1") == "CA"
    assert parse_message(application).get("MSA-1") == "AA"
    assert parse_message(application).get("MSA-2") == "CTRL-7"


def test_a_closed_connection_drops_its_waiting_application_ack() -> None:
    """The application ACK would wait 30 s; its connection closed, it stops waiting at once."""
    states = _States()

    async def run() -> None:
        ing = _ingest()
        await ing.start()
        server = MLLPServer(_MLLPHandler(ing, states), host="127.0.0.1", port=0)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
            await _send(writer, adt(8))
            await _frame(reader)  # the commit ACK
            await _until(lambda: states.calls)  # its application ACK waits
            writer.close()
            # its message's state no longer asked for, its place among those waiting given back
            quiet = _no_more_asked(states)
            await _until(lambda: quiet() and ing.application_acks_waiting == 0)
        finally:
            await server.stop()
            await ing.stop()

    asyncio.run(run())


def _no_more_asked(states: _States, quiet_s: float = 0.5) -> Callable[[], bool]:
    """True once no query has been made for ``quiet_s`` (ten ticks; the message would be
    waited for 30 s)."""
    loop = asyncio.get_running_loop()
    seen = [len(states.calls), loop.time()]

    def quiet() -> bool:
        if len(states.calls) != seen[0]:
            seen[:] = [len(states.calls), loop.time()]
        return loop.time() - seen[1] >= quiet_s

    return quiet


def test_the_store_reads_the_states_of_many_messages_in_one_query(
    store: SqlMessageStore,
) -> None:
    ing = Ingest(store, identity=("ENGINE", "HUB"), clock=lambda: CLOCK)
    receipts = [asyncio.run(ing.receive(adt(n), channel="mllp")) for n in range(3)]
    ids = [r.message_id for r in receipts if r.message_id is not None]
    assert len(ids) == 3
    assert store.states_of([*ids, max(ids) + 1000]) == {i: "received" for i in ids}
    assert store.states_of([]) == {}
