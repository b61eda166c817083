"""The processes a scenario runs and hurts: ``engine serve`` as ``make run`` runs it (receiver and
its worker process) and ``engine stub-fhir``, each in a session of its own, on the loopback.

The engine is killed with SIGKILL to its whole process group (receiver and worker, as a power
cut or the OOM killer would), or only its worker process (found among the receiver's children:
multiprocessing's ``spawn_main``); the receiver's supervisor then starts a new worker itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

__all__ = ["EngineProcess", "StubFhirProcess", "free_port", "wait_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class _Process:
    """A command in a session of its own, its stderr appended to ``log``."""

    def __init__(self, argv: list[str], cwd: Path, env: Mapping[str, str], log: Path) -> None:
        self.argv, self.cwd, self.env, self.log = argv, cwd, dict(env), log
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self.log.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL to the whole process group (the worker process too)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the group after 30 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything of its group left behind (a worker process mid-stop)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


class EngineProcess(_Process):
    """``engine serve`` in ``home`` (its ``var/`` there unless ``ENGINE_VAR_DIR`` says where),
    with the settings ``make run`` gives it that matter here (text logs, a routes directory)."""

    def __init__(self, home: Path, routes: Path, env: Mapping[str, str] | None = None) -> None:
        self.mllp, self.http = free_port(), free_port()
        full = {
            **os.environ,
            "ENGINE_HOME": str(home),
            "ENGINE_ROUTES_DIR": str(routes),
            "ENGINE_MLLP_HOST": "127.0.0.1",
            "ENGINE_HTTP_HOST": "127.0.0.1",
            "ENGINE_LOG_FORMAT": "text",
            "ENGINE_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        argv = [sys.executable, "-m", "engine", "serve"]
        argv += ["--mllp-port", str(self.mllp), "--http-port", str(self.http)]
        super().__init__(argv, home, full, home / "engine.log")
        self.starts = 0

    def start(self, timeout_s: float = 90) -> None:
        self.spawn()
        self.starts += 1
        if not wait_port(self.mllp, timeout_s) or not self.alive():
            raise RuntimeError(f"engine serve did not start; its log ends:\n{self.tail()}")

    def worker_pid(self, prefer: int | None = None) -> int | None:
        """The receiver's worker process (multiprocessing's spawned child), if running:
        ``prefer`` when it is one of them (an ``engine serve`` starts two by default)."""
        if self.proc is None:
            return None
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
        if prefer in found:
            return prefer
        return found[0] if found else None

    def kill_worker(self, prefer: int | None = None) -> bool:
        """SIGKILL one worker process only (``prefer`` when it is one); False when there was
        none to kill."""
        pid = self.worker_pid(prefer)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


class StubFhirProcess(_Process):
    """``engine stub-fhir`` on a free port; its test switches (``$fail``, ``$log``) over HTTP."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "engine", "stub-fhir", "--port", str(self.port)]
        super().__init__(argv, home, os.environ, home / "stub-fhir.log")
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"

    def start(self) -> None:
        self.spawn()
        if not wait_port(self.port, 30):
            raise RuntimeError(f"the stub FHIR server did not start:\n{self.tail()}")

    def switch(self, body: dict[str, Any]) -> None:
        """One of the stub's ``$fail`` switches (engine/sim/fhir_server.py)."""
        httpx.post(f"{self.base_url}/$fail", json=body, timeout=10).raise_for_status()

    def log_entries(self) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.base_url}/$log", timeout=60)
        resp.raise_for_status()
        entries: list[dict[str, Any]] = resp.json()["log"]
        return entries
