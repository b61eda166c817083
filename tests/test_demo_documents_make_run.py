"""What ``make run`` does, on free ports: the stub Epic and the stub athenahealth as their commands
start them, ``engine serve`` with the example route file and make run's addition
(engine/sim/routes), ``engine demo``; every demo document reaches both stubs (the Epic stub's own
count of DocumentReferences, the engine's deliveries to athena) and the folder. The route files
are the repository's with only their ports changed."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select

from engine.routes.loader import default_routes_dir
from engine.store.tables import deliveries
from tests.serve_support import free_port


@contextmanager
def _process(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait_port(port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} not open; {log.name}: {log.read_text()[-1500:]}")


def test_the_demo_documents_reach_the_stub_epic_the_stub_athena_and_the_folder(
    tmp_path: Path,
) -> None:
    ports = {p: free_port() for p in (8080, 8090, 8092, 8093, 2575)}
    routes = tmp_path / "routes"
    routes.mkdir()
    make_run = Path(__file__).resolve().parents[1] / "engine" / "sim" / "routes"
    for source in [default_routes_dir() / "example.yaml", *make_run.glob("*.yaml")]:
        text = source.read_text()
        for old, new in ports.items():
            text = re.sub(rf"127\.0\.0\.1:{old}\b", f"127.0.0.1:{new}", text)
        (routes / source.name).write_text(text)
    env = {
        **os.environ,
        "ENGINE_ROUTES_DIR": str(routes),
        "ENGINE_MLLP_HOST": "127.0.0.1",
        "ENGINE_HTTP_HOST": "127.0.0.1",
        "ENGINE_MLLP_PORT": str(ports[2575]),
        "ENGINE_HTTP_PORT": str(ports[8080]),
        "ENGINE_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports[8080]}",
        "ENGINE_STUB_ATHENA_SECRET": secrets.token_urlsafe(24),
        "ENGINE_LOG_LEVEL": "INFO",
        "ENGINE_ENV": "development",
    }
    env.pop("ENGINE_VAR_DIR", None)
    env.pop("ENGINE_HOME", None)
    keys = subprocess.run(
        [sys.executable, "-m", "engine", "keys", "create"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert keys.returncode == 0, keys.stderr
    jwks = f"http://127.0.0.1:{ports[8080]}/.well-known/jwks.json"
    epic_port, athena_port = ports[8092], ports[8093]
    epic_args = ["stub-epic", "--port", str(epic_port), "--jwks-url", jwks, "--admin"]
    with (
        _process(epic_args, env, tmp_path, tmp_path / "epic.log"),
        _process(
            ["stub-athena", "--port", str(athena_port)], env, tmp_path, tmp_path / "athena.log"
        ),
        _process(["serve"], env, tmp_path, tmp_path / "engine.log"),
    ):
        for port, log in ((epic_port, "epic.log"), (athena_port, "athena.log")):
            _wait_port(port, tmp_path / log)
        _wait_port(ports[8080], tmp_path / "engine.log")
        demo = subprocess.run(
            [sys.executable, "-m", "engine", "demo", "--port", str(ports[2575])],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert demo.returncode == 0, demo.stderr
        db = create_engine(f"sqlite:///{tmp_path / 'var' / 'engine.db'}")
        epic_creates, athena_done = 0, 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (epic_creates, athena_done) != (4, 4):
            time.sleep(0.5)
            stats = httpx.get(f"http://127.0.0.1:{epic_port}/admin/stats", timeout=5).json()
            epic_creates = stats["document_creates"]
            with db.connect() as conn:
                athena_done = len(
                    conn.execute(
                        select(deliveries.c.id).where(
                            deliveries.c.destination == "stub-athena",
                            deliveries.c.state == "delivered",
                        )
                    ).all()
                )
        db.dispose()
        log = (tmp_path / "engine.log").read_text(errors="replace")
        assert (epic_creates, athena_done) == (4, 4), log[-3000:]
        assert stats["documents_created_twice"] == 0
        assert stats["token_requests"] == 1  # one token for every delivery
        assert log.count("athena: document") == 4
        copies = sorted((tmp_path / "var" / "outbox" / "documents").glob("*.pdf"))
        assert len(copies) == 4
        assert all(c.read_bytes().startswith(b"%PDF-") for c in copies)
        assert env["ENGINE_STUB_ATHENA_SECRET"] not in log
