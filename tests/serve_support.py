"""A real ``engine serve`` for the tests that kill it: started in a process group of its own (so
SIGKILL reaches the worker process too), fed over MLLP like an EHR feeds it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["OUTBOX_ROUTES", "Engine", "engine_cli", "free_port", "send_stream", "wait_for"]


#: a route file passing every ADT as received to a folder (``{outbox}``), for the engines the
#: tests start
OUTBOX_ROUTES = """
destinations:
  outbox:
    type: file
    directory: {outbox}
routes:
  - name: adt-to-outbox
    match: {{message: [ADT]}}
    mapping: none
    destinations: [outbox]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_cli(var: Path, *args: str) -> str:
    """``engine ARGS`` in the home ``var`` (its var folder too), as an admin types it: its
    output, stripped; a failure fails the test (CalledProcessError)."""
    env = {**os.environ, "ENGINE_VAR_DIR": str(var), "ENGINE_HOME": str(var)}
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=env,
        cwd=var,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    """Whether ``check`` came true within ``timeout_s`` (asked every 0.2 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


class Engine:
    """``engine serve`` in a process group of its own (so SIGKILL reaches the worker too).

    ``env``: more settings (``ENGINE_DATABASE_URL`` for PostgreSQL); the database is otherwise
    SQLite at ``var/engine.db``.
    """

    def __init__(self, var: Path, routes: Path, env: Mapping[str, str] | None = None) -> None:
        self.var, self.routes = var, routes
        self.env = dict(env or {})
        self.mllp = free_port()
        self.http = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "ENGINE_VAR_DIR": str(self.var),
            "ENGINE_ROUTES_DIR": str(self.routes),
            "ENGINE_MLLP_HOST": "127.0.0.1",
            "ENGINE_HTTP_HOST": "127.0.0.1",
            "ENGINE_LOG_LEVEL": "WARNING",
            **self.env,
        }
        # its log goes to a file in var (named in the error when it does not start)
        self.log = self.var / f"engine-{len(list(self.var.glob('engine-*.log')))}.log"
        with self.log.open("wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engine",
                    "serve",
                    "--mllp-port",
                    str(self.mllp),
                    "--http-port",
                    str(self.http),
                ],
                env=env,
                cwd=self.var,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.mllp), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise AssertionError(f"engine did not start; its log ({self.log}) ends:\n{tail}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def send_stream(port: int, messages: list[tuple[str, bytes]], acked: list[str]) -> None:
    """Send one at a time, like an EHR; stop at the first broken connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for cid, raw in messages:
                sock.sendall(b"\x0b" + raw + b"\x1c\r")
                buf = b""
                while not buf.endswith(b"\x1c\r"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                if b"MSA|AA|" in buf:
                    acked.append(cid)
    except OSError:
        return
