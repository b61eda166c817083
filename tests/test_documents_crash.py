"""kill -9 during uploads and deliveries loses no accepted document and delivers none twice.

A real ``engine serve`` (receiver and worker processes, SQLite) takes synthetic PDFs from eight
uploaders over ``POST /documents`` and delivers each as a DocumentReference to the stub Epic (real
HTTP, SMART Backend Services with the engine's own keys, fetched by the stub from the engine's
``/.well-known/jwks.json``). The engine is killed with SIGKILL twice while documents are being
uploaded and delivered, and restarted; the uploaders send again what was not acknowledged, as a
scanner station would. The stub counts creates per content SHA-256: every acknowledged document
must be created exactly once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.sim.epic import StubEpicServer, running_stub_epic
from engine.sim.epic_fhir import MRN_SYSTEM
from engine.sim.pdf import synthetic_pdf
from tests.serve_support import Engine, engine_cli

ROUTES = """
destinations:
  epic:
    type: epic
    base_url: {base}
    client_id: crash-test
    mrn_system: "{mrn_system}"
    timeout_s: 5
    retry: {{max_attempts: 50, base_delay_s: 0.2, max_delay_s: 1}}
routes:
  - name: documents-to-epic
    match: {{kind: document}}
    mapping: fhir
    destinations: [epic]
"""

MRNS = ("DEMO1001", "DEMO1002", "DEMO1003")
DOCUMENTS = 48


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Engine, StubEpicServer, str]]:
    var = tmp_path / "var"
    var.mkdir()
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "example.yaml").write_text("routes: []\n")
    with running_stub_epic() as epic:
        (routes / "epic.yaml").write_text(ROUTES.format(base=epic.base_url, mrn_system=MRN_SYSTEM))
        engine = Engine(var, routes, {"ENGINE_HOME": str(var)})
        epic.state.register("crash-test", f"http://127.0.0.1:{engine.http}/.well-known/jwks.json")
        engine_cli(var, "keys", "create")
        token = engine_cli(var, "token", "--role", "integration").splitlines()[-1]
        try:
            yield engine, epic, token
        finally:
            engine.stop()


def _upload(port: int, token: str, n: int, pdf: bytes) -> bool:
    """One upload; True when the engine answered that it has the document (201 or 200)."""
    try:
        resp = httpx.post(
            f"http://127.0.0.1:{port}/documents",
            headers={"Authorization": f"Bearer {token}"},
            data={"mrn": MRNS[n % len(MRNS)], "document_type": "consent", "date": "2026-12-01"},
            files={"file": (f"scan-{n}.pdf", pdf, "application/pdf")},
            timeout=10,
        )
    except httpx.HTTPError:
        return False
    return resp.status_code in (200, 201)


def _uploaders(port: int, token: str, todo: list[int], pdfs: list[bytes], acked: set[int]) -> None:
    """Eight uploaders share ``todo``; each stops at its first failure (the engine is down)."""
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                if not todo:
                    return
                n = todo.pop()
            if _upload(port, token, n, pdfs[n]):
                with lock:
                    acked.add(n)
            else:
                with lock:
                    todo.append(n)
                return

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def _ready(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("engine's HTTP API did not become ready")


def _kill_at(engine: Engine, acked: set[int], threshold: int, cut_short: list[int]) -> None:
    """SIGKILL the engine once ``threshold`` documents in all were acknowledged."""
    deadline = time.monotonic() + 60
    while len(acked) < threshold and time.monotonic() < deadline:
        time.sleep(0.005)
    cut_short.append(DOCUMENTS - len(acked))
    engine.kill9()


def test_kill9_during_uploads_and_deliveries_loses_and_doubles_nothing(
    setup: tuple[Engine, StubEpicServer, str],
) -> None:
    engine, epic, token = setup
    pdfs = [
        synthetic_pdf(
            "consent", "Synthetic Patient", mrn=MRNS[n % 3], target_size=256 * 1024, seed=n
        )
        for n in range(DOCUMENTS)
    ]
    digests = [hashlib.sha256(p).hexdigest() for p in pdfs]
    todo = list(range(DOCUMENTS))
    acked: set[int] = set()
    cut_short: list[int] = []  # uploads still to do when each kill came
    for threshold in (DOCUMENTS // 4, DOCUMENTS // 2, None):
        engine.start()
        _ready(engine.http)
        killer = None
        if threshold is not None:
            # SIGKILL while uploads are in flight and earlier documents are being delivered
            killer = threading.Thread(target=_kill_at, args=(engine, acked, threshold, cut_short))
            killer.start()
        _uploaders(engine.http, token, todo, pdfs, acked)
        if killer is not None:
            killer.join(60)
    assert len(cut_short) == 2 and all(left > 0 for left in cut_short), cut_short
    assert acked == set(range(DOCUMENTS))

    deadline = time.monotonic() + 90
    wanted = set(digests)
    while time.monotonic() < deadline:
        created = {h for h, n in epic.state.creates_by_hash.items() if n}
        if wanted <= created:
            break
        time.sleep(0.5)
    counts = epic.state.creates_by_hash
    missing = [d[:12] for d in digests if counts.get(d, 0) == 0]
    twice = [d[:12] for d in digests if counts.get(d, 0) > 1]
    assert not missing, f"{len(missing)} accepted documents never reached Epic"
    assert not twice, f"{len(twice)} documents created twice in Epic"
