"""A document filed under an MRN the EHR does not know, end to end on the real flow: stored as
the intake stores it, routed and mapped by the real processor (a DocumentReference for the EHR,
the document as it came for a folder), delivered by the real dispatcher to an EHR that knows one
MRN. It waits in ``needs-patient`` (one attempt, not dead) while the folder has it; an operator
matches it to the right MRN and the copy, mapped again, reaches the EHR with that MRN and not
the folder a second time. On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.documents.model import DocumentEnvelope
from engine.flow.process import Processor
from engine.mappings import Mappings, load_mappings
from engine.routes.loader import RouteSet
from engine.store import DocumentQuery, MessageQuery, SqlMessageStore, Who
from engine.store.documents import NewDocument
from tests.store.test_needs_patient_match import _dispatch

ROUTES = """
destinations:
  epic:
    type: file
    directory: "{tmp}/epic"
    retry: {{max_attempts: 5, base_delay_s: 0, max_delay_s: 0}}
  scans:
    type: file
    directory: "{tmp}/scans"
routes:
  - name: documents-to-the-chart
    match: {{kind: document}}
    mapping: fhir
    destinations: [epic]
  - name: documents-to-the-folder
    match: {{kind: document}}
    mapping: none
    destinations: [scans]
"""


class ChartKnowingOneMrn:
    """An EHR that files a DocumentReference only for the patient whose MRN it knows (the
    subject's identifier), as Epic's and athena's adapters answer for an unknown MRN."""

    def __init__(self, mrn: str) -> None:
        self.name = "epic"
        self.mrn = mrn
        self.attempts: list[Payload] = []
        self.filed: list[dict[str, object]] = []

    async def deliver(self, payload: Payload) -> DeliveryResult:
        self.attempts.append(payload)
        envelope = DocumentEnvelope.from_bytes(payload.body)
        assert envelope.format == "fhir"
        docref = envelope.body["DocumentReference"]
        if self.mrn not in repr(docref["subject"]):
            return DeliveryResult.unknown_patient("Patient?identifier: no match")
        self.filed.append(docref)
        return DeliveryResult.success("201 Created")

    async def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


@pytest.fixture
def routes(tmp_path: Path) -> RouteSet:
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "docs.yaml").write_text(ROUTES.format(tmp=tmp_path))
    return load_routes(defaults=folder)


def _process(store: SqlMessageStore, routes: RouteSet, mappings: Mappings) -> None:
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass


def test_an_unknown_patients_document_waits_then_is_matched_and_filed(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, tmp_path: Path
) -> None:
    data = b"%PDF-1.4\n%a referral letter\n%%EOF\n"
    source = tmp_path / "referral.pdf"
    source.write_bytes(data)
    stored = store.store_document(
        NewDocument("MRN404", "referral", "2026-11-30", "FRONTDESK", "folder", "OAKCLINIC"),
        source,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        media_type="application/pdf",
    )
    doc_id, first = stored.info.document_id, stored.message_id
    chart, scans = ChartKnowingOneMrn("MRN1"), MemoryDestination("scans")
    _process(store, routes, mappings)
    _dispatch(store, routes, {"epic": chart, "scans": scans})
    # waits: one attempt, not retried, not dead; the folder has it
    assert [p.message_id for p in chart.attempts] == [first]
    view = store.get(first)
    assert view is not None and view.state == "needs-patient"
    assert {d.destination: d.state for d in view.deliveries} == {
        "epic": "needs-patient",
        "scans": "delivered",
    }
    assert store.search(MessageQuery(state="dead")) == []
    [line] = store.list_documents(DocumentQuery(), Who("alice", "cli"))
    assert (line.id, line.state, line.waiting) == (doc_id, "needs-patient", ("epic",))
    # matched to the MRN the EHR knows: mapped again with it, filed; the folder not again
    matched = store.match_document(doc_id, "MRN1", who=Who("alice", "cli"))
    _process(store, routes, mappings)
    _dispatch(store, routes, {"epic": chart, "scans": scans})
    [filed] = chart.filed
    assert "MRN1" in repr(filed["subject"]) and "MRN404" not in repr(filed)
    assert len(scans.delivered) == 1
    copy = store.get(matched.message_id)
    assert copy is not None and copy.state == "delivered"
    [line] = store.list_documents(DocumentQuery(), Who("alice", "cli"))
    assert (line.message_id, line.state, line.waiting) == (matched.message_id, "delivered", ())
