"""``engine stub-athena --port P``: a real server that prints the credentials it accepts."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_stub_athena_prints_its_client_and_issues_tokens_to_it(tmp_path: Path) -> None:
    port = free_port()
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_STUB_ATHENA_SECRET"}
    with err.open("wb") as sink:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "engine"), "stub-athena", "--port", str(port)],
            stderr=sink,
            stdout=subprocess.DEVNULL,
            env=env,
        )
    try:
        secret = None
        deadline = time.monotonic() + 30
        while secret is None and time.monotonic() < deadline:
            found = re.search(r"client secret (\S+)", err.read_text())
            secret = found.group(1) if found else None
            time.sleep(0.05)
        assert secret, err.read_text()
        assert "client id     engine-demo" in err.read_text()
        form = {"grant_type": "client_credentials", "scope": "athena/service/Athenanet.MDP.*"}
        url = f"http://127.0.0.1:{port}/oauth2/v1/token"
        resp = None
        while time.monotonic() < deadline:
            try:
                resp = httpx.post(url, data=form, auth=("engine-demo", secret))
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        assert resp is not None and resp.status_code == 200, resp
        assert httpx.post(url, data=form, auth=("engine-demo", "guess")).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)
