"""SIGHUP on a running ``engine serve``: new route files are taken at the gate before the ACK and
by the worker process (restarted on them); an invalid file keeps the running configuration, and
the reason is logged with the file's name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flow.test_pass_through import ORU, raw
from tests.serve_support import Engine, wait_for

ADT_ONLY = """\
destinations:
  dropbox:
    type: file
    directory: {folder}
routes:
  - name: adt-to-dropbox
    match: {{message: [ADT]}}
    mapping: none
    destinations: [dropbox]
"""

LAB = """\
destinations:
  lab-drop:
    type: file
    directory: {folder}
routes:
  - name: oru-to-lab
    match: {{message: [ORU]}}
    mapping: none
    destinations: [lab-drop]
"""

BROKEN = """\
routes:
  - name: broken
    match: {message: [ORM]}
    mapping: none
    destinations: [nowhere]
"""


def ack_code(port: int, message: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x0b" + message + b"\x1c\r")
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the ACK"
            buf += chunk
    msa = next(seg for seg in buf.strip(b"\x0b\x1c\r").split(b"\r") if seg.startswith(b"MSA|"))
    return msa.split(b"|")[1].decode()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "example.yaml").write_text(ADT_ONLY.format(folder=tmp_path / "adt"))
    var = tmp_path / "var"
    var.mkdir()
    running = Engine(var, routes, env={"ENGINE_LOG_LEVEL": "INFO"})
    running.start()
    yield running
    running.stop()


def test_sighup_applies_valid_routes_and_keeps_the_running_ones_when_invalid(
    engine: Engine, tmp_path: Path
) -> None:
    assert engine.proc is not None
    lab = tmp_path / "lab"
    assert ack_code(engine.mllp, raw(ORU, 1)) == "AR"  # no route takes an ORU yet

    (engine.routes / "lab.yaml").write_text(LAB.format(folder=lab))
    engine.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: ack_code(engine.mllp, raw(ORU, 2)) == "AA", 30), "not reloaded"
    # the worker process was restarted on the new files: it delivers to the new destination
    assert wait_for(lambda: lab.is_dir() and any(lab.iterdir()), 20), "ORU never delivered"

    (engine.routes / "broken.yaml").write_text(BROKEN)
    engine.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused" in engine.log.read_text(errors="replace"), 30)
    log = engine.log.read_text(errors="replace")
    assert "broken.yaml" in log and "nowhere" in log
    assert engine.proc.poll() is None  # still running
    assert ack_code(engine.mllp, raw(ORU, 3)) == "AA"  # the running routes stayed
    assert ack_code(engine.mllp, raw(ORU, 4).replace(b"ORU^R01", b"ORM^O01")) == "AR"
    delivered = len(list(lab.iterdir()))
    assert wait_for(lambda: len(list(lab.iterdir())) > delivered, 20), "worker stopped delivering"


ADT = (
    b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A08|R{n}|P|2.5.1\r"
    b"EVN|A08|20260102030405\rPID|1||MRN{n}^^^CLINIC^MR||Testpatient^Ann||19800101|F\r"
)


def test_engine_worker_reloads_on_sighup(tmp_path: Path) -> None:
    """``engine worker`` on its own (another host's workers): SIGHUP with a valid change moves
    its deliveries to the new folder; a broken file keeps it on the running routes."""
    routes = tmp_path / "routes"
    routes.mkdir()
    first, second = tmp_path / "first", tmp_path / "second"
    (routes / "example.yaml").write_text(ADT_ONLY.format(folder=first))
    var = tmp_path / "var"
    var.mkdir()
    receiver = Engine(var, routes, env={"ENGINE_WORKERS": "false"})
    receiver.start()
    env = {
        **os.environ,
        "ENGINE_VAR_DIR": str(var),
        "ENGINE_ROUTES_DIR": str(routes),
        "ENGINE_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker"], env=env, cwd=var, stderr=out
        )
    try:
        n = iter(range(1, 1000))
        assert ack_code(receiver.mllp, raw(ADT, next(n))) == "AA"
        assert wait_for(lambda: first.is_dir() and any(first.iterdir()), 20)

        (routes / "example.yaml").write_text(ADT_ONLY.format(folder=second))
        worker.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "workers restarting" in log.read_text(errors="replace"), 30)
        assert ack_code(receiver.mllp, raw(ADT, next(n))) == "AA"
        assert wait_for(lambda: second.is_dir() and any(second.iterdir()), 20)

        (routes / "broken.yaml").write_text(BROKEN)
        worker.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload refused" in log.read_text(errors="replace"), 30)
        assert worker.poll() is None
        assert ack_code(receiver.mllp, raw(ADT, next(n))) == "AA"
        assert wait_for(lambda: len(list(second.iterdir())) == 2, 20)
    finally:
        worker.terminate()
        worker.wait(30)
        receiver.stop()
