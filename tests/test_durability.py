"""Nothing is lost: the engine killed with SIGKILL mid-stream, and a destination that is down.

A real ``engine serve`` (receiver and worker processes) receives a stream of ADTs over MLLP and
delivers them to the stub FHIR server (real HTTP, in this process). The stub applies each delivery
once per ``Idempotency-Key`` and logs every request, so "delivered" and "not twice" are read off
the destination itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.sim.fhir_server import StubFhirServer, running_stub_fhir
from engine.store import SqlMessageStore, create_db_engine
from tests.serve_support import Engine, send_stream

ROUTES = """
destinations:
  fhir:
    type: fhir
    base_url: {base}
    mode: transaction
    timeout_s: 5
    retry: {{max_attempts: 50, base_delay_s: 0.2, max_delay_s: 1}}
routes:
  - name: adt-to-fhir
    match: {{message: [ADT]}}
    mapping: fhir
    destinations: [fhir]
"""

MESSAGE = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405-0500||ADT^A08^ADT_A01|{cid}|P|2.5.1\r"
    "EVN|A08|20260102030405-0500\r"
    "PID|1||MRN{p}^^^CLINIC^MR||Durable^Patient{p}^{seq}||19800101|F\r"
    "PV1|1|O\r"
)


def stream(n: int, patients: int, tag: str) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        cid = f"{tag}-{i:04d}"
        out.append((cid, MESSAGE.format(cid=cid, p=i % patients, seq=i).encode()))
    return out


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Engine, StubFhirServer, SqlMessageStore]]:
    with running_stub_fhir() as fhir:
        routes = tmp_path / "routes"
        routes.mkdir()
        (routes / "example.yaml").write_text(ROUTES.format(base=fhir.base_url))
        engine = Engine(tmp_path, routes)
        db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
        try:
            yield engine, fhir, SqlMessageStore(db)
        finally:
            engine.stop()
            db.dispose()


def applied(fhir: StubFhirServer) -> dict[str, int]:
    """Idempotency key → how many times the destination applied it."""
    counts: dict[str, int] = defaultdict(int)
    for entry in list(fhir.state.log):
        if entry.get("interaction") == "transaction" and entry.get("status") == 200:
            if not entry.get("replayed"):
                counts[str(entry.get("idempotency_key"))] += 1
    return counts


def wait_delivered(store: SqlMessageStore, want: int, timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = store.counts()
        if counts.get("delivered", 0) >= want and not counts.get("deliveries_pending"):
            return counts
        time.sleep(0.2)
    return counts


def test_kill_9_mid_stream_loses_nothing_and_delivers_once(
    setup: tuple[Engine, StubFhirServer, SqlMessageStore],
) -> None:
    engine, fhir, store = setup
    engine.start()
    messages = stream(400, patients=7, tag="K")
    acked: list[str] = []
    sender = threading.Thread(target=send_stream, args=(engine.mllp, messages, acked))
    sender.start()
    deadline = time.monotonic() + 60
    while len(acked) < 120:
        assert sender.is_alive() and time.monotonic() < deadline, (
            f"{len(acked)} ACKs, not the 120 wanted before the kill"
        )
        time.sleep(0.01)
    engine.kill9()  # receiver and worker, mid-stream
    sender.join(10)
    assert 120 <= len(acked) < 400

    engine.start()  # the same database: the queue picks up where it was
    rest = [(c, r) for c, r in messages if c not in set(acked)][:50]
    send_stream(engine.mllp, rest, acked)
    stored = {r.control_id for r in store.list(limit=1000)}
    assert set(acked) <= stored  # every ACKed message is stored
    counts = wait_delivered(store, len(stored))
    assert counts.get("delivered") == len(stored), counts
    records = {r.control_id: r for r in store.list(limit=1000)}
    keys = applied(fhir)
    for cid in acked:
        rec = records[cid]
        assert rec.state == "delivered"
        assert keys.get(f"{rec.id}-fhir") == 1, (cid, keys.get(f"{rec.id}-fhir"))
    assert all(n == 1 for n in keys.values())  # none twice at the destination


def test_destination_down_then_back_delivers_all_in_order_and_acks_never_wait(
    setup: tuple[Engine, StubFhirServer, SqlMessageStore],
) -> None:
    engine, fhir, store = setup
    fhir.state.fail_next(503, count=10_000)  # down
    engine.start()
    messages = stream(200, patients=5, tag="D")
    acked: list[str] = []
    send_stream(engine.mllp, messages, acked)
    # every message ACKed AA while the destination refused them all: ACKs never wait for it (how
    # fast they come is the ingest bench's p99, not a test's)
    assert len(acked) == 200
    time.sleep(1)
    assert store.counts().get("delivered", 0) == 0
    fhir.state.reset_failures()  # back
    counts = wait_delivered(store, 200, timeout=90)
    assert counts.get("delivered") == 200, counts
    # order per patient at the destination: message ids (receipt order) only go up
    seen: dict[str, list[int]] = defaultdict(list)
    for entry in list(fhir.state.log):
        if entry.get("status") == 200 and not entry.get("replayed"):
            mid = int(str(entry["idempotency_key"]).split("-")[0])
            patient = next(
                w["identifier"] for w in entry["entry"] if w["resourceType"] == "Patient"
            )
            seen[str(patient)].append(mid)
    assert len(seen) == 5
    for mids in seen.values():
        assert mids == sorted(mids) and len(mids) == 40


def test_alive(setup: tuple[Engine, StubFhirServer, SqlMessageStore]) -> None:
    engine, _fhir, _store = setup
    engine.start()
    acked: list[str] = []
    send_stream(engine.mllp, stream(3, 1, "A"), acked)
    assert acked == ["A-0000", "A-0001", "A-0002"]


def test_enhanced_mode_gets_commit_then_application_ack(
    setup: tuple[Engine, StubFhirServer, SqlMessageStore],
) -> None:
    engine, _fhir, _store = setup
    engine.start()
    raw = (
        MESSAGE.format(cid="ENH-1", p=1, seq=1).replace("|P|2.5.1\r", "|P|2.5.1|||AL|AL\r").encode()
    )
    with socket.create_connection(("127.0.0.1", engine.mllp), timeout=10) as sock:
        sock.sendall(b"\x0b" + raw + b"\x1c\r")
        buf = b""
        while buf.count(b"\x1c\r") < 2:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before both ACKs"
            buf += chunk
    commit, application = (p.strip(b"\x0b") for p in buf.split(b"\x1c\r")[:2])
    assert b"MSA|CA|ENH-1" in commit
    assert b"MSA|AA|ENH-1" in application
