"""kill -9 of ``engine serve`` while documents come in: every document it answered 201 for is in
the store after the restart, and every file dropped in the folder ends up stored exactly once
and moved to done/."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select

from engine.api.auth_settings import DEV_SECRET_NAME, AuthSettings
from engine.api.tokens import mint_dev_token
from engine.store.tables import documents, messages
from tests.documents.intake_support import PNG
from tests.serve_support import free_port


class _Serve:
    """``engine serve`` (no worker: only the intake is under test) in a process group."""

    def __init__(self, tmp_path: Path) -> None:
        self.var = tmp_path / "var"
        self.var.mkdir(exist_ok=True)
        routes = tmp_path / "routes"
        routes.mkdir(exist_ok=True)
        (routes / "example.yaml").write_text("routes: []\n")
        self.http = free_port()
        self.env = {
            **os.environ,
            "ENGINE_VAR_DIR": str(self.var),
            "ENGINE_ROUTES_DIR": str(routes),
            "ENGINE_MLLP_HOST": "127.0.0.1",
            "ENGINE_HTTP_HOST": "127.0.0.1",
            "ENGINE_MLLP_PORT": str(free_port()),
            "ENGINE_HTTP_PORT": str(self.http),
            "ENGINE_LOG_LEVEL": "WARNING",
            "ENGINE_ENV": "development",
            "ENGINE_WORKERS": "false",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.log = self.var / f"engine-{self.runs}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine", "serve"],
                env=self.env,
                cwd=self.var.parent,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", self.http), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(self.log.read_text(errors="replace")[-2000:])

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

    def token(self) -> str:
        auth = AuthSettings(environment="development", dev_secret_file=self.var / DEV_SECRET_NAME)
        return mint_dev_token(auth, role="integration", subject="uploader")


def _png(n: int) -> bytes:
    return PNG + n.to_bytes(8, "big") + os.urandom(32 * 1024)


def test_kill9_during_uploads_loses_no_answered_document(tmp_path: Path) -> None:
    serve = _Serve(tmp_path)
    serve.start()
    answered: list[tuple[int, int]] = []  # (document id, n)
    sent: dict[int, bytes] = {}
    stop = threading.Event()
    lock = threading.Lock()
    token = serve.token()

    def upload(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{serve.http}", timeout=10) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                n = worker * 100_000 + i
                data = _png(n)
                with lock:
                    sent[n] = data
                try:
                    response = client.post(
                        "/documents",
                        headers={"Authorization": f"Bearer {token}"},
                        files={"file": (f"{n}.png", data, "image/png")},
                        data={"mrn": f"MRN{n}", "document_type": "consent"},
                    )
                except httpx.HTTPError:
                    return  # the engine died under us
                if response.status_code == 201:
                    with lock:
                        answered.append((response.json()["document_id"], n))

    threads = [threading.Thread(target=upload, args=(w,)) for w in range(4)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(answered) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        serve.kill9()
        stop.set()
        for t in threads:
            t.join(15)
        assert len(answered) >= 20
        serve.start()  # the store as the restarted engine opens it
    finally:
        stop.set()
        serve.stop()
    db = create_engine(f"sqlite:///{serve.var / 'engine.db'}")
    with db.connect() as conn:
        stored = {r.id: r.sha256 for r in conn.execute(select(documents.c.id, documents.c.sha256))}
    db.dispose()
    for doc_id, n in answered:
        assert stored.get(doc_id) == hashlib.sha256(sent[n]).hexdigest(), (doc_id, n)


def test_kill9_while_taking_the_folder_stores_each_file_once(tmp_path: Path) -> None:
    serve = _Serve(tmp_path)
    inbox = serve.var / "inbox"
    inbox.mkdir(parents=True)
    names = []
    for n in range(40):
        name = f"MRN{n}_consent_20261201.png"
        (inbox / name).write_bytes(_png(n) + os.urandom(256 * 1024))
        names.append(name)
    done = inbox / "done"
    try:
        serve.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if done.is_dir() and len(list(done.iterdir())) >= 5:
                break
            time.sleep(0.01)
        serve.kill9()
        left = [p for p in inbox.iterdir() if p.is_file()]
        serve.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and [p for p in inbox.iterdir() if p.is_file()]:
            time.sleep(0.1)
    finally:
        serve.stop()
    assert left, "the kill came after every file was taken: nothing was tested"
    assert sorted(p.name for p in done.iterdir()) == sorted(names)
    db = create_engine(f"sqlite:///{serve.var / 'engine.db'}")
    with db.connect() as conn:
        docs = conn.execute(select(func.count()).select_from(documents)).scalar_one()
        msgs = conn.execute(
            select(func.count()).select_from(messages).where(messages.c.kind == "document")
        ).scalar_one()
    db.dispose()
    assert (docs, msgs) == (40, 40)
