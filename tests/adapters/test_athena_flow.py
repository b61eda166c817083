"""Documents through the whole pipeline to the stub athena: stored, routed by a route file with
an ``athenahealth`` destination, delivered by the dispatcher over real HTTP (SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.adapters.athena import AthenaDestination, AthenaDestinationConfig
from engine.adapters.registry import load_routes
from engine.flow.deliver import Dispatcher
from engine.flow.process import Processor
from engine.mappings import Mappings, load_mappings
from engine.settings import Settings
from engine.sim.athena import DEMO_DEPARTMENT, DEMO_PRACTICE, StubAthenaServer, running_stub_athena
from engine.store import SqlMessageStore
from engine.store.documents import NewDocument
from engine.store.tables import deliveries

CLIENT = "engine-athena-flow"
SECRET = "athena-flow-secret"

ROUTES = """
destinations:
  athena:
    type: athenahealth
    base_url: {url}
    client_id: {client}
    client_secret_env: ATHENA_FLOW_SECRET
    practices:
      OAK: {{practice_id: "{practice}", department_id: "{department}"}}
    requests_per_second: 50
routes:
  - name: documents-to-athena
    match: {{kind: document}}
    mapping: none
    destinations: [athena]
"""


@pytest.fixture(scope="module")
def athena() -> Iterator[StubAthenaServer]:
    with running_stub_athena(client_id=CLIENT, client_secret=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def pdf(n: int) -> bytes:
    return b"%PDF-1.4\n% flow test " + str(n).encode() + b"\n%%EOF\n"


def put(store: SqlMessageStore, tmp_path: Path, data: bytes, mrn: str) -> None:
    src = tmp_path / f"{hashlib.sha256(data).hexdigest()[:8]}.pdf"
    src.write_bytes(data)
    store.store_document(
        NewDocument(
            patient_mrn=mrn,
            document_type="consent",
            document_date="2030-01-07",
            sender="FRONTDESK",
            channel="folder",
            practice="OAK",
        ),
        src,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        media_type="application/pdf",
    )


def states(store: SqlMessageStore) -> list[str]:
    with store.db_engine.connect() as conn:
        return sorted(r.state for r in conn.execute(select(deliveries.c.state)))


def test_documents_reach_athena_and_an_unknown_patient_waits(
    store: SqlMessageStore,
    athena: StubAthenaServer,
    mappings: Mappings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    athena.state.reset()
    monkeypatch.setenv("ATHENA_FLOW_SECRET", SECRET)
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "athena.yaml").write_text(
        ROUTES.format(
            url=athena.url, client=CLIENT, practice=DEMO_PRACTICE, department=DEMO_DEPARTMENT
        )
    )
    routes = load_routes(defaults=folder)
    (home := tmp_path / "home").mkdir()
    config = AthenaDestinationConfig.model_validate(routes.destinations["athena"].settings)
    dest = AthenaDestination("athena", config, settings=Settings(home=home))
    for n, mrn in enumerate(("DEMO1001", "DEMO1002", "DEMO1003", "NOSUCH77")):
        put(store, tmp_path, pdf(n), mrn)
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass

    async def run() -> None:
        stop = asyncio.Event()
        dispatcher = Dispatcher(store, routes, {"athena": dest}, idle_s=0.05)
        task = asyncio.create_task(dispatcher.run(stop))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = await asyncio.to_thread(states, store)
            if done and all(s in ("delivered", "needs-patient") for s in done):
                break
            await asyncio.sleep(0.1)
        stop.set()
        await task
        await dest.close()

    asyncio.run(run())
    assert states(store) == ["delivered", "delivered", "delivered", "needs-patient"]
    assert athena.state.token_requests == 1
    assert len(athena.state.documents) == 3
    assert all(
        athena.state.uploads_by_hash[hashlib.sha256(pdf(n)).hexdigest()] == 1 for n in range(3)
    )
    assert {d.documentsubclass for d in athena.state.documents} == {"ADMIN_CONSENT"}
