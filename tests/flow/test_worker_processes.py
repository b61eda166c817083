"""``engine serve`` with two worker processes on SQLite (``ENGINE_WORKER_PROCESSES=2``): they
share the queue through the database (each message delivered once, each patient's in order),
only the first leads (the singleton jobs), and one killed is started again while the other
goes on."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import urllib.request
from pathlib import Path

from tests.metrics_support import parse
from tests.serve_support import OUTBOX_ROUTES, Engine, send_stream, wait_for

ROUTES = OUTBOX_ROUTES

PATIENTS = 12


def _adt(sender: int, n: int) -> tuple[str, bytes]:
    cid = f"WP{sender}-{n}"
    patient = f"P{(sender * 7 + n) % PATIENTS}"
    raw = (
        f"MSH|^~\\&|A|B|ENGINE|HUB|20260101||ADT^A08|{cid}|P|2.5.1\r"
        f"PID|1||{patient}^^^CLINIC^MR||Test^Pat||19800101|F\r"
    ).encode()
    return cid, raw


def _metrics(engine: Engine) -> dict[str, float]:
    try:
        url = f"http://127.0.0.1:{engine.http}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return parse(resp.read().decode())
    except OSError:
        return {}


def _worker_pids(engine: Engine) -> list[int]:
    """The receiver's spawned children, but multiprocessing's resource tracker."""
    assert engine.proc is not None
    pids = []
    for task in Path(f"/proc/{engine.proc.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmd:
                pids.append(int(child))
    return sorted(pids)


def _send(engine: Engine, start: int, count: int) -> list[str]:
    """``count`` messages from each of 4 senders at once; the control IDs ACKed AA."""
    acked: list[str] = []
    threads = [
        threading.Thread(
            target=send_stream,
            args=(engine.mllp, [_adt(s, n) for n in range(start, start + count)], acked),
        )
        for s in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return acked


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql).fetchall()


def test_two_worker_processes_share_the_queue_and_one_killed_comes_back(tmp_path: Path) -> None:
    var, routes, outbox = tmp_path / "var", tmp_path / "routes", tmp_path / "outbox"
    var.mkdir()
    routes.mkdir()
    (routes / "example.yaml").write_text("routes: []\n")  # the built-in example off
    (routes / "outbox.yaml").write_text(ROUTES.format(outbox=outbox))
    engine = Engine(var, routes, {"ENGINE_WORKER_PROCESSES": "2"})
    engine.start()
    db = var / "engine.db"
    try:
        assert wait_for(lambda: _metrics(engine).get("engine_worker_processes") == 2, 60)
        assert len(_worker_pids(engine)) == 2
        # both registered as worker nodes before anything is sent
        workers = "SELECT count(*) FROM nodes WHERE role LIKE 'worker%'"
        assert wait_for(lambda: _rows(db, workers)[0][0] == 2, 30)

        acked = _send(engine, 0, 60)
        assert len(acked) == 240
        delivered = "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
        assert wait_for(lambda: _rows(db, delivered)[0][0] == 240, 60)

        # one of them killed: started again, and what is sent meanwhile and after is delivered
        first = _worker_pids(engine)
        os.kill(first[1], signal.SIGKILL)
        acked += _send(engine, 60, 40)
        assert wait_for(lambda: len(set(_worker_pids(engine)) - set(first)) == 1, 30)
        assert wait_for(lambda: _metrics(engine).get("engine_worker_processes") == 2, 30)
        assert wait_for(lambda: _rows(db, delivered)[0][0] == 400, 90)
        # the survivor killed too: the last messages are new processes' alone (which process
        # claims a batch is a race; this makes "the work was shared" below certain)
        os.kill(first[0], signal.SIGKILL)
        assert wait_for(lambda: not set(_worker_pids(engine)) & set(first), 30)
        assert wait_for(lambda: _metrics(engine).get("engine_worker_processes") == 2, 30)
        acked += _send(engine, 100, 20)
        assert len(acked) == 480
        assert wait_for(lambda: _rows(db, delivered)[0][0] == 480, 90)

        # once each, a file each (the outbox holds what was delivered, nothing twice)
        assert len(list(outbox.iterdir())) == 480
        per_message = "SELECT message_id, count(*) FROM deliveries GROUP BY message_id"
        assert {n for _, n in _rows(db, per_message)} == {1}
        # each patient's deliveries in the order their messages came
        order = (
            "SELECT patient_key, delivered_at FROM deliveries WHERE state = 'delivered' "
            "ORDER BY patient_key, message_id"
        )
        by_patient: dict[object, list[str]] = {}
        for patient, at in _rows(db, order):
            by_patient.setdefault(patient, []).append(str(at))
        assert len(by_patient) == PATIENTS
        for times in by_patient.values():
            assert times == sorted(times)
        # the work was shared: messages claimed by more than one worker node
        claimants = "SELECT count(DISTINCT claimed_by) FROM messages WHERE claimed_by IS NOT NULL"
        assert _rows(db, claimants)[0][0] >= 2

        # on SQLite only the first worker leads (the singleton jobs run once)
        def leaders() -> list[float]:
            return [v for k, v in _metrics(engine).items() if k.startswith("engine_leader{")]

        assert wait_for(lambda: leaders().count(1) == 1, 30), leaders()
    finally:
        engine.stop()
