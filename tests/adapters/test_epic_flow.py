"""A document to Epic end to end: stored as the intake stores it, routed and mapped to a
DocumentReference by the real processor, delivered by the real dispatcher through the ``epic``
destination to the stub Epic over HTTP with the real SMART Backend Services token. Filed once,
for the patient Epic knows by that MRN; a replay creates nothing new; a document for an MRN Epic
does not know waits in needs-patient. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.adapters.epic import EpicDestination, EpicDocumentDestination
from engine.adapters.registry import load_routes
from engine.flow.deliver import Dispatcher
from engine.flow.process import Processor
from engine.keys import Keyring
from engine.mappings import Mappings, load_mappings
from engine.routes.loader import RouteSet
from engine.settings import Settings
from engine.sim.epic import MRN_SYSTEM, StubEpicServer
from engine.store import SqlMessageStore, Who
from engine.store.documents import NewDocument
from tests.sim.epic_support import epic_with_client

CLIENT = "engine-epic-flow"
ROUTES = """
destinations:
  epic:
    type: epic
    base_url: {base}
    client_id: {client}
    mrn_system: "{mrn}"
    retry: {{max_attempts: 3, base_delay_s: 0, max_delay_s: 0}}
routes:
  - name: documents-to-epic
    match: {{kind: document}}
    mapping: fhir
    destinations: [epic]
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    Keyring(home / "var" / "keys").create("ES384")
    return home


@pytest.fixture(scope="module")
def epic_server(home: Path) -> Iterator[StubEpicServer]:
    with epic_with_client(Keyring(home / "var" / "keys"), CLIENT) as epic:
        yield epic


@pytest.fixture
def epic(epic_server: StubEpicServer) -> StubEpicServer:
    epic_server.state.reset_documents()
    epic_server.state.failures.clear()
    return epic_server


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


@pytest.fixture
def routes(tmp_path: Path, epic: StubEpicServer) -> RouteSet:
    folder = tmp_path / "routes"
    folder.mkdir()
    text = ROUTES.format(base=epic.base_url, client=CLIENT, mrn=MRN_SYSTEM)
    (folder / "epic.yaml").write_text(text)
    return load_routes(defaults=folder)


def store_document(store: SqlMessageStore, tmp_path: Path, mrn: str, data: bytes) -> int:
    source = tmp_path / f"{mrn}.pdf"
    source.write_bytes(data)
    stored = store.store_document(
        NewDocument(mrn, "referral", "2026-12-03", "FRONTDESK", "folder", "OAKCLINIC"),
        source,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        media_type="application/pdf",
    )
    return stored.message_id


def run_flow(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, epic: StubEpicServer, home: Path
) -> None:
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass
    config = EpicDestination.model_validate(routes.destinations["epic"].settings)

    async def dispatch() -> None:
        dest = EpicDocumentDestination("epic", config, settings=Settings(home=home))
        stop = asyncio.Event()
        dispatcher = Dispatcher(store, routes, {"epic": dest}, idle_s=0.02)
        task = asyncio.create_task(dispatcher.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while loop.time() < deadline:
            await asyncio.sleep(0.1)
            if not (await asyncio.to_thread(store.counts)).get("deliveries_pending"):
                break
        stop.set()
        await task
        await dest.close()

    asyncio.run(dispatch())


def test_a_document_reaches_epic_once_for_the_right_patient(
    store: SqlMessageStore,
    routes: RouteSet,
    mappings: Mappings,
    epic: StubEpicServer,
    home: Path,
    tmp_path: Path,
) -> None:
    data = b"%PDF-1.4\n%a referral letter for the demo\n%%EOF\n"
    known = store_document(store, tmp_path, "DEMO1002", data)
    unknown = store_document(store, tmp_path, "NOSUCH77", data + b" ")
    run_flow(store, routes, mappings, epic, home)

    view = store.get(known)
    assert view is not None and view.state == "delivered", view
    assert epic.state.creates_by_hash[hashlib.sha256(data).hexdigest()] == 1
    with epic.state.fhir.lock:
        [doc] = epic.state.fhir.resources["DocumentReference"].values()
        patient = epic.state.fhir.resources["Patient"][doc["subject"]["reference"].split("/")[1]]
    assert patient["identifier"][0]["value"] == "DEMO1002"
    waiting = store.get(unknown)
    assert waiting is not None and waiting.state == "needs-patient"
    [delivery] = waiting.deliveries
    assert delivery.last_error == "patient not found (0 matches)"  # no MRN in it

    # sent again (an operator's resend: the same payload): Epic keeps the one it has
    store.resend(known, Who("alice", "cli"), "epic")
    run_flow(store, routes, mappings, epic, home)
    again = store.get(known)
    assert again is not None and again.state == "delivered"
    assert sorted((d.state, d.attempts) for d in again.deliveries) == [
        ("delivered", 1),
        ("resent", 1),
    ]
    assert epic.state.creates_by_hash[hashlib.sha256(data).hexdigest()] == 1
