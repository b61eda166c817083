"""Crash recovery without a stall: ``engine serve`` killed with SIGKILL while a slow destination
works off a backlog, then restarted on the same database.

The dead worker's claims (messages being processed, deliveries leased for 10 minutes) block
every later message of their patients, since each patient's deliveries go in order. A restarted
node takes over the claims of a node whose heartbeat stopped (engine/store/nodes.py): the
backlog must resume within 15 s of the restart, every ACKed message reach the destination, and
each patient's deliveries arrive in the order the messages were received.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import Engine as DbEngine
from sqlalchemy import update

from engine.flow.worker import keep_node
from engine.store import Incoming, SqlMessageStore
from engine.store.tables import nodes
from tests.serve_support import Engine, send_stream
from tests.test_durability import ROUTES, stream, wait_delivered

#: how long the destination takes per delivery: the backlog is still in flight when it is killed
DELAY_S = 0.25
PATIENTS = 6
MESSAGES = 90
#: the issue's bound on how long a restarted engine leaves the backlog waiting
RESUME_WITHIN_S = 15.0


class SlowDestination:
    """A FHIR server that takes ``DELAY_S`` per transaction and logs when each one arrived
    (idempotency key ``<message id>-<destination>``, arrival time)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[int, float]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("content-length") or 0))
                key = self.headers.get("idempotency-key") or "0-?"
                with outer.lock:
                    outer.arrivals.append((int(key.split("-")[0]), time.monotonic()))
                time.sleep(DELAY_S)
                body = b'{"resourceType": "Bundle", "type": "transaction-response"}'
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/fhir+json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the engine was killed while we slept
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowDestination:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def first_after(self, t: float) -> float | None:
        with self.lock:
            times = [at for _, at in self.arrivals if at >= t]
        return min(times) if times else None

    def ids(self) -> list[int]:
        with self.lock:
            return [mid for mid, _ in self.arrivals]


@pytest.fixture
def world(db_engine: DbEngine, tmp_path: Path) -> Iterator[tuple[Engine, SlowDestination]]:
    """The engine on the store's database (SQLite in its var dir, or PostgreSQL by URL) and a
    slow destination."""
    with SlowDestination() as dest:
        routes = tmp_path / "routes"
        routes.mkdir()
        # example.yaml: in place of the built-in example routes
        (routes / "example.yaml").write_text(ROUTES.format(base=dest.base_url))
        env = {}
        if db_engine.dialect.name != "sqlite":
            env["ENGINE_DATABASE_URL"] = db_engine.url.render_as_string(hide_password=False)
        engine = Engine(tmp_path, routes, env)
        try:
            yield engine, dest
        finally:
            engine.stop()


def test_a_killed_engines_backlog_resumes_within_15_s_of_the_restart_in_order(
    world: tuple[Engine, SlowDestination], store: SqlMessageStore
) -> None:
    engine, dest = world
    engine.start()
    messages = stream(MESSAGES, patients=PATIENTS, tag="C")
    acked: list[str] = []
    send_stream(engine.mllp, messages, acked)
    assert len(acked) == MESSAGES  # all ACKed: the backlog is the destination's
    deadline = time.monotonic() + 30
    while len(dest.ids()) < 2 * PATIENTS:  # deliveries in flight for every patient
        assert time.monotonic() < deadline, "the backlog did not start"
        time.sleep(0.05)
    engine.kill9()  # receiver and worker: their claims stay behind
    before = len(set(dest.ids()))
    assert before < MESSAGES

    restarted = time.monotonic()
    engine.start()
    deadline = restarted + 60  # today a lease of 10 minutes: give up after one
    resumed = dest.first_after(restarted)
    while resumed is None and time.monotonic() < deadline:
        time.sleep(0.05)
        resumed = dest.first_after(restarted)
    waited = (resumed or time.monotonic()) - restarted
    figure = f"backlog resumed {waited:.1f} s after the restart ({before} delivered before)"
    print(f"\n{figure}")  # noqa: T201 (the measured figure, shown with -s)
    assert resumed is not None and waited <= RESUME_WITHIN_S, f"waited {waited:.1f} s"

    counts = wait_delivered(store, MESSAGES, timeout=60)
    assert counts.get("delivered") == MESSAGES, counts
    # every ACKed message reached the destination; per patient in the order received
    patient_of = {r.id: int(r.control_id.split("-")[1]) % PATIENTS for r in store.list(limit=1000)}
    assert all(r.control_id in acked for r in store.list(limit=1000))
    firsts: dict[int, list[int]] = defaultdict(list)
    for mid in dict.fromkeys(dest.ids()):  # first arrivals (one in flight at the kill comes again)
        firsts[patient_of[mid]].append(mid)
    assert set(dict.fromkeys(dest.ids())) == set(patient_of)
    for mids in firsts.values():
        assert mids == sorted(mids)


def test_the_workers_heartbeat_takes_over_a_dead_nodes_claims_and_wakes_the_workers(
    store: SqlMessageStore,
) -> None:
    """keep_node, in process: at its first beat a node whose heartbeat stopped loses its claim
    to the queue, and the processor and dispatcher are woken to claim it again at once."""
    dead = store.register_node("worker")
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test", patient_key="P")])
    store.claim_received(dead)
    with store.db_engine.begin() as conn:  # killed a minute ago
        conn.execute(
            update(nodes)
            .where(nodes.c.id == dead)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    node = store.register_node("worker")
    woken: list[str] = []

    async def one_beat() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(keep_node(store, node, stop, [lambda: woken.append("wake")]))
        while not woken:
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(one_beat(), 10))
    assert woken == ["wake"]
    assert [m for m, _, _ in store.claim_received(node)] == [stored.id]
