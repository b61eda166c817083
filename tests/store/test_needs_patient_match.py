"""An operator matches a document that waits for its patient to the right one: the document's
row records the new patient, and its message is replayed with the new metadata (a new message
of kind ``document``, ``replay_of`` the old one) to the destinations that had not taken it; the
old waiting deliveries are settled as ``resent``. Refusals say why; every action is audited,
without an MRN in the detail. Documents are listed and shown (audited too). On SQLite and
PostgreSQL, delivered by the real dispatcher to an EHR that knows one MRN."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.documents.model import DOCUMENT_ENVELOPE_TYPE, DocumentEnvelope, DocumentInfo
from engine.flow.deliver import Dispatcher
from engine.routes.loader import RouteSet
from engine.store import (
    ActionRefused,
    DocumentQuery,
    NewDelivery,
    NewDocument,
    Outcome,
    Processed,
    SqlMessageStore,
    Who,
)
from engine.store.documents import dedupe_key
from engine.store.tables import documents, messages
from tests.store.test_needs_patient import KnowsOnePatient

CLI = Who("alice", "cli")
PDF = b"%PDF-1.4\n" + b"0" * (1234 - 9)
SHA = hashlib.sha256(PDF).hexdigest()


def _document(
    store: SqlMessageStore, mrn: str = "MRN404", doc_type: str = "referral", tmp: Path | None = None
) -> int:
    """A stored document (its bytes, its ``documents`` row and its message of kind document,
    committed by the store as the intake does), still to be processed: its id."""
    folder = tmp or Path(tempfile.mkdtemp())
    source = folder / f"scan-{mrn}-{doc_type}.pdf"
    source.write_bytes(PDF)
    stored = store.store_document(
        NewDocument(
            patient_mrn=mrn,
            document_type=doc_type,
            document_date="2026-11-30",
            sender="scanner-1",
            channel="folder",
            patient_authority="CLINIC",
            title="Referral letter",
        ),
        source,
        sha256=SHA,
        size=len(PDF),
        media_type="application/pdf",
    )
    assert not stored.duplicate
    return stored.info.document_id


def _process(store: SqlMessageStore, *destinations: str) -> None:
    """Route every received document to ``destinations`` (as the processor does: an envelope
    made from the message's metadata, format none)."""
    claimed = store.claim_received("w1")
    done = []
    for mid, raw, kind in claimed:
        assert kind == "document"
        info = DocumentInfo.from_json(raw)
        body = DocumentEnvelope(info, "none").to_bytes()
        new = [
            NewDelivery(d, "docs", "document", DOCUMENT_ENVELOPE_TYPE, body, info.patient_key)
            for d in destinations
        ]
        done.append(Processed(mid, "routed", None, info.patient_key, new, worker="w1"))
    store.finish_batch(done)


@pytest.fixture
def routes(tmp_path: Path) -> RouteSet:
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "r.yaml").write_text(
        f"""
destinations:
  epic:
    type: file
    directory: {tmp_path}/epic
    retry: {{max_attempts: 5, base_delay_s: 0, max_delay_s: 0}}
  files:
    type: file
    directory: {tmp_path}/files
routes:
  - name: adt
    match: {{message: [ADT]}}
    mapping: none
    destinations: [epic, files]
"""
    )
    return load_routes(defaults=folder)


def _dispatch(store: SqlMessageStore, routes: RouteSet, dests: dict[str, object]) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        dispatcher = Dispatcher(store, routes, dests, idle_s=0.02)  # type: ignore[arg-type]
        task = asyncio.create_task(dispatcher.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while loop.time() < deadline:
            await asyncio.sleep(0.1)
            if not (await asyncio.to_thread(store.counts)).get("deliveries_pending"):
                break
        stop.set()
        await task

    asyncio.run(main())


def _doc_row(store: SqlMessageStore, doc_id: int):  # type: ignore[no-untyped-def]
    with store.db_engine.connect() as conn:
        return conn.execute(select(documents).where(documents.c.id == doc_id)).one()


def _message(store: SqlMessageStore, mid: int):  # type: ignore[no-untyped-def]
    with store.db_engine.connect() as conn:
        return conn.execute(select(messages).where(messages.c.id == mid)).one()


def _waiting_document(
    store: SqlMessageStore, routes: RouteSet
) -> tuple[int, int, KnowsOnePatient, MemoryDestination]:
    """A document for MRN404 delivered to files and waiting at epic (which knows MRN1 only)."""
    doc_id = _document(store)
    _process(store, "epic", "files")
    epic, files = KnowsOnePatient("epic", "MRN1"), MemoryDestination("files")
    _dispatch(store, routes, {"epic": epic, "files": files})
    mid = _doc_row(store, doc_id).message_id
    assert _message(store, mid).state == "needs-patient"
    return doc_id, mid, epic, files


def test_match_replays_the_document_for_the_new_patient(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    doc_id, old, epic, files = _waiting_document(store, routes)
    matched = store.match_document(doc_id, "MRN1", who=CLI)
    assert (matched.document_id, matched.replay_of, matched.resent) == (doc_id, old, ("epic",))
    new = matched.message_id
    row = _doc_row(store, doc_id)
    assert (row.patient_mrn, row.patient_authority, row.message_id) == ("MRN1", "CLINIC", new)
    copy = _message(store, new)
    assert (copy.kind, copy.channel, copy.replay_of, copy.state) == (
        "document",
        "replay",
        old,
        "received",
    )
    assert copy.patient_key == "CLINIC|MRN1"
    info = DocumentInfo.from_json(bytes(copy.raw))
    assert (info.document_id, info.patient_mrn, info.sha256, info.title) == (
        doc_id,
        "MRN1",
        SHA,
        "Referral letter",
    )
    original = _message(store, old)
    assert original.state == "replayed" and f"message {new}" in original.reason
    view = store.get(old)
    assert view is not None
    assert {d.destination: d.state for d in view.deliveries} == {
        "epic": "resent",
        "files": "delivered",
    }
    # processed and delivered: epic takes it now; files had it and is skipped, as replay does
    _process(store, "epic", "files")
    _dispatch(store, routes, {"epic": epic, "files": files})
    [sent] = [p for p in epic.delivered if p.message_id == new]
    assert DocumentEnvelope.from_bytes(sent.body).document.patient_mrn == "MRN1"
    assert len(files.delivered) == 1
    done = store.get(new)
    assert done is not None and done.state == "delivered"
    assert any("destination files skipped" in w for w in done.warnings)
    [entry] = store.audit_entries(limit=1)
    assert (entry.action, entry.actor, entry.outcome, entry.message_id, entry.patient_key) == (
        "match-document",
        "alice",
        "ok",
        new,
        "CLINIC|MRN1",
    )
    assert f"document {doc_id}" in (entry.detail or "")
    assert "MRN" not in (entry.detail or "")


def test_match_keeps_the_authority_unless_given(store: SqlMessageStore, routes: RouteSet) -> None:
    doc_id, _, _, _ = _waiting_document(store, routes)
    matched = store.match_document(doc_id, "MRN9", authority="OTHER", who=CLI)
    assert _message(store, matched.message_id).patient_key == "OTHER|MRN9"
    row = _doc_row(store, doc_id)
    assert (row.patient_mrn, row.patient_authority) == ("MRN9", "OTHER")


def test_match_refusals_say_why_and_are_audited(store: SqlMessageStore, routes: RouteSet) -> None:
    with pytest.raises(KeyError):
        store.match_document(10**9, "MRN1", who=CLI)
    doc_id, _, _, _ = _waiting_document(store, routes)
    with pytest.raises(ActionRefused, match="already for that patient"):
        store.match_document(doc_id, "MRN404", who=CLI)
    for bad in ("", "A|B", "x" * 65, "MRN\n1"):
        with pytest.raises(ActionRefused, match="MRN"):
            store.match_document(doc_id, bad, who=CLI)
    matched = store.match_document(doc_id, "MRN1", who=CLI)
    # the copy is not processed yet; then it is delivered: nothing waits any more
    with pytest.raises(ActionRefused, match="not been processed"):
        store.match_document(doc_id, "MRN2", who=CLI)
    _process(store, "epic")
    _dispatch(store, routes, {"epic": KnowsOnePatient("epic", "MRN1")})
    nothing = rf"nothing waits for its patient.*{matched.message_id}"
    with pytest.raises(ActionRefused, match=nothing):
        store.match_document(doc_id, "MRN2", who=CLI)
    entries = store.audit_entries(limit=20)
    outcomes = [(e.action, e.outcome) for e in entries]
    assert outcomes.count(("match-document", "refused")) == 8
    assert outcomes.count(("match-document", "ok")) == 1
    assert all("MRN404" not in (e.detail or "") for e in entries)
    assert entries[-1].detail == f"no document {10**9}"


def test_match_waits_for_deliveries_still_under_way(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    doc_id = _document(store)
    _process(store, "epic", "files")
    due = {d.destination: d for d in store.claim_due_deliveries(10)}
    store.record_outcomes([Outcome(due["epic"].id, False, "unknown", needs_patient=True)])
    with pytest.raises(ActionRefused, match="still being delivered to files"):
        store.match_document(doc_id, "MRN1", who=CLI)


def test_resend_document_sends_the_waiting_delivery_again(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    doc_id, mid, epic, files = _waiting_document(store, routes)
    done = store.resend_document(doc_id, CLI)
    assert [d for d, _, _ in done.queued] == ["epic"]
    epic.mrn = b"MRN404"  # the EHR registered the patient meanwhile
    _dispatch(store, routes, {"epic": epic, "files": files})
    assert _message(store, mid).state == "delivered"
    with pytest.raises(KeyError):
        store.resend_document(10**9, CLI)


def test_documents_listed_and_shown_audited(store: SqlMessageStore, routes: RouteSet) -> None:
    waiting, mid, _, _ = _waiting_document(store, routes)
    other = _document(store, mrn="MRN7", doc_type="consent")
    lines = store.list_documents(DocumentQuery(), CLI)
    assert [d.id for d in lines] == [other, waiting]
    line = lines[1]
    assert (line.document_type, line.media_type, line.size, line.sender) == (
        "referral",
        "application/pdf",
        1234,
        "scanner-1",
    )
    assert (line.message_id, line.state, line.waiting) == (mid, "needs-patient", ("epic",))
    assert lines[0].state == "received" and lines[0].waiting == ()
    only = store.list_documents(DocumentQuery(state="needs-patient"), CLI)
    assert [d.id for d in only] == [waiting]
    assert [d.id for d in store.list_documents(DocumentQuery(mrn="MRN7"), CLI)] == [other]
    assert [d.id for d in store.list_documents(DocumentQuery(mrn="CLINIC|MRN7"), CLI)] == [other]
    assert store.list_documents(DocumentQuery(mrn="OTHER|MRN7"), CLI) == []
    assert [d.id for d in store.list_documents(DocumentQuery(document_type="consent"), CLI)] == [
        other
    ]
    assert [d.id for d in store.list_documents(DocumentQuery(before=other), CLI)] == [waiting]
    with pytest.raises(ValueError, match="unknown state"):
        DocumentQuery(state="lost")
    shown = store.show_document(waiting, CLI)
    assert shown is not None
    assert (shown.patient_mrn, shown.patient_authority, shown.sha256) == ("MRN404", "CLINIC", SHA)
    assert {d.destination: d.state for d in shown.deliveries} == {
        "epic": "needs-patient",
        "files": "delivered",
    }
    assert store.show_document(10**9, CLI) is None
    entries = store.audit_entries(limit=20)
    actions = [(e.action, e.outcome) for e in entries]
    assert actions[:2] == [("view-document", "refused"), ("view-document", "ok")]
    assert actions.count(("list-documents", "ok")) == 7
    assert entries[1].message_id == mid and entries[1].patient_key == "CLINIC|MRN404"
    assert all("MRN" not in (e.detail or "") for e in entries)


def test_a_replayed_documents_message_takes_the_document_along(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    """``engine messages replay`` of a document's message: the document row follows the copy,
    so a later match or resend acts on the live message."""
    doc_id, old, epic, _ = _waiting_document(store, routes)
    copy = store.replay_message(old, CLI).message_id
    assert _doc_row(store, doc_id).message_id == copy
    _process(store, "epic")
    _dispatch(store, routes, {"epic": epic})
    assert _message(store, copy).state == "needs-patient"
    matched = store.match_document(doc_id, "MRN1", who=CLI)
    assert matched.replay_of == copy


def test_match_keeps_one_document_per_bytes_and_patient(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    """The same bytes for the same patient are one document: a match moves the document's
    dedupe key to the new patient, and is refused when that patient has the bytes already."""
    doc_id, _, _, _ = _waiting_document(store, routes)
    already = _document(store, mrn="MRN1")
    with pytest.raises(ActionRefused, match=rf"same bytes are stored for that patient.*{already}"):
        store.match_document(doc_id, "MRN1", who=CLI)
    store.match_document(doc_id, "MRN2", who=CLI)
    row = _doc_row(store, doc_id)
    assert row.dedupe_key == dedupe_key(SHA, "CLINIC", "MRN2")
    source = Path(tempfile.mkdtemp()) / "again.pdf"
    source.write_bytes(PDF)
    again = store.store_document(
        NewDocument("MRN2", "referral", "2026-11-30", "scanner-1", "folder", "CLINIC"),
        source,
        sha256=SHA,
        size=len(PDF),
        media_type="application/pdf",
    )
    assert again.duplicate and again.info.document_id == doc_id


@pytest.mark.postgres
def test_a_replay_takes_the_document_before_the_message_as_a_match_does(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    """A match locks the document's row, then its message's. A replay of that message used to
    lock the message first and the document at its end: each waited for the other until
    PostgreSQL failed one. Here the match's first lock is held while the replay runs: the
    replay waits for it before touching the message, which the match can then still lock."""
    if store.db_engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writers take turns: nothing to lock in an order")
    doc_id, mid, _, _ = _waiting_document(store, routes)
    done: list[object] = []
    with store.db_engine.connect() as match:
        holder = match.execute(text("SELECT pg_backend_pid()")).scalar_one()
        match.execute(select(documents.c.id).where(documents.c.id == doc_id).with_for_update())
        replay = threading.Thread(target=lambda: done.append(store.replay_message(mid, CLI)))
        replay.start()
        blocked = text(
            "SELECT count(*) FROM pg_stat_activity WHERE :h = ANY(pg_blocking_pids(pid))"
        )
        deadline = time.monotonic() + 10
        with store.db_engine.connect() as probe:
            while not probe.execute(blocked, {"h": holder}).scalar_one():
                assert time.monotonic() < deadline, "the replay never waited for the document"
                time.sleep(0.02)
        # the match's next lock: free, where the replay used to hold it already
        row = match.execute(
            select(messages.c.id).where(messages.c.id == mid).with_for_update(nowait=True)
        ).one()
        assert row.id == mid
        match.rollback()
    replay.join(10)
    assert not replay.is_alive()
    [replayed] = done
    assert _doc_row(store, doc_id).message_id == replayed.message_id  # type: ignore[attr-defined]
