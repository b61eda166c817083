"""``/metrics`` of a real ``engine serve``: what its worker process counted (routed, delivered)
shows on the receiver's page beside what the receiver counted, and the queue gauges read the
store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.metrics_support import parse
from tests.serve_support import OUTBOX_ROUTES

ROUTES = OUTBOX_ROUTES

ADT = b"MSH|^~\\&|A|B|ENGINE|HUB|20260101||ADT^A04|MET-1|P|2.5.1\rPID|1||M1\r"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _page(url: str, proc: subprocess.Popen[bytes]) -> dict[str, float] | None:
    """The parsed page, or None while the engine is not answering yet."""
    assert proc.poll() is None, "engine exited early"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return parse(resp.read().decode())
    except OSError:
        return None


def _send(port: int, message: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x0b" + message + b"\x1c\r")
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = sock.recv(4096)
            assert chunk, "connection closed before the ACK"
            buf += chunk


def _leaders(samples: dict[str, float]) -> list[float]:
    """The ``engine_leader`` gauges, one per worker node, sorted."""
    return sorted(v for k, v in samples.items() if k.startswith("engine_leader{"))


def test_the_worker_processes_counts_show_on_the_receivers_page(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "example.yaml").write_text("routes: []\n")  # the built-in example off
    (routes / "outbox.yaml").write_text(ROUTES.format(outbox=tmp_path / "outbox"))
    var = tmp_path / "var"
    (var / "metrics").mkdir(parents=True)
    (var / "metrics" / "counter_1.db").write_bytes(b"left by an earlier run")
    mllp, http = _free_port(), _free_port()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env |= {
        "ENGINE_VAR_DIR": str(var),
        "ENGINE_ROUTES_DIR": str(routes),
        "ENGINE_MLLP_HOST": "127.0.0.1",
        "ENGINE_HTTP_HOST": "127.0.0.1",
        "ENGINE_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--mllp-port",
            str(mllp),
            "--http-port",
            str(http),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{http}/metrics"
    delivered = 'engine_deliveries_total{destination="outbox",outcome="delivered"}'
    try:
        samples = None
        for _ in range(600):  # the engine comes up (a bounded wait, not a speed limit)
            samples = _page(url, proc)
            if samples is not None and samples.get("engine_worker_processes") == 2:
                break
            time.sleep(0.1)
        assert samples is not None and samples["engine_worker_processes"] == 2  # the default
        _send(mllp, ADT)
        for _ in range(600):  # the worker routes and delivers it, and both have campaigned
            samples = _page(url, proc)
            # (the first worker's leadership begins about a second after it starts: a delivery
            # can come first)
            if samples is not None and samples.get(delivered) == 1 and _leaders(samples) == [0, 1]:
                break
            time.sleep(0.1)
        assert samples is not None
        assert samples[delivered] == 1
        assert samples['engine_messages_routed_total{route="adt-to-outbox"}'] == 1
        assert samples['engine_delivery_latency_seconds_count{destination="outbox"}'] == 1
        assert samples['engine_messages_received_total{channel="mllp"}'] == 1
        assert samples['engine_acks_total{code="AA"}'] == 1
        assert samples["engine_queue_depth"] == 0
        assert samples['engine_destination_queue_depth{destination="outbox"}'] == 0
        assert samples['engine_destination_oldest_waiting_seconds{destination="outbox"}'] == 0
        # on SQLite the first worker node leads, the other never; no reload has published a
        # generation yet
        assert _leaders(samples) == [0, 1]
        assert samples["engine_config_generation"] == 0
        # a resend, stamped anew, and other content under the same control ID
        _send(mllp, ADT.replace(b"|20260101|", b"|20260102|"))
        _send(mllp, ADT.replace(b"|M1\r", b"|M2\r"))
        samples = _page(url, proc)
        assert samples is not None
        assert samples['engine_resends_total{outcome="duplicate"}'] == 1
        assert samples['engine_resends_total{outcome="control_id_reused"}'] == 1
        assert samples['engine_messages_received_total{channel="mllp"}'] == 2
        assert samples['engine_acks_total{code="AA"}'] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not (var / "metrics" / "counter_1.db").exists()  # emptied at start
