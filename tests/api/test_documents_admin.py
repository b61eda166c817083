"""``/api/documents`` on the real store (SQLite and PostgreSQL): the documents waiting for their
patient are listed and shown to viewers, matched by admins or integrations (then delivered to the
EHR that knows the new MRN), resent by admins; every call is in the audit trail with the token's
subject, refusals too, and no MRN in an audit row's detail."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engine.adapters.memory import MemoryDestination
from engine.documents.model import DocumentEnvelope
from engine.routes.loader import RouteSet
from engine.store import SqlMessageStore
from tests.api.conftest import TestClient, bearer
from tests.store.test_needs_patient import KnowsOnePatient
from tests.store.test_needs_patient_match import SHA, _dispatch, _document, _process
from tests.store.test_needs_patient_match import routes as routes  # noqa: F401  (the fixture)


@pytest.fixture
def messages(store: SqlMessageStore) -> SqlMessageStore:  # the API's port: the real store
    return store


def _waiting(store: SqlMessageStore, routes: RouteSet) -> tuple[int, KnowsOnePatient]:  # noqa: F811
    doc_id = _document(store)
    _process(store, "epic", "files")
    epic = KnowsOnePatient("epic", "MRN1")
    _dispatch(store, routes, {"epic": epic, "files": MemoryDestination("files")})
    return doc_id, epic


def test_list_show_match_and_deliver(
    client: TestClient,
    store: SqlMessageStore,
    routes: RouteSet,  # noqa: F811
    token: Callable[[str], str],
) -> None:
    viewer, integration = bearer(token("viewer")), bearer(token("integration"))
    doc_id, epic = _waiting(store, routes)
    rows = client.get("/api/documents?state=needs-patient", headers=viewer).json()
    assert [(r["id"], r["state"], r["waiting"]) for r in rows] == [
        (doc_id, "needs-patient", ["epic"])
    ]
    assert "patient_mrn" not in rows[0]  # the list does not name the patient
    assert client.get("/api/documents?state=NEEDS-PATIENT", headers=viewer).json() == rows
    assert client.get("/api/documents?state=lost", headers=viewer).status_code == 422
    shown = client.get(f"/api/documents/{doc_id}", headers=viewer).json()
    assert (shown["patient_mrn"], shown["sha256"]) == ("MRN404", SHA)
    assert [(d["destination"], d["state"]) for d in shown["deliveries"]] == [
        ("epic", "needs-patient"),
        ("files", "delivered"),
    ]
    assert client.get("/api/documents/999", headers=viewer).status_code == 404
    assert client.get("/api/documents/0", headers=viewer).status_code == 422
    # a viewer may not match; an integration may
    url = f"/api/documents/{doc_id}/match"
    assert client.post(url, json={"mrn": "MRN1"}, headers=viewer).status_code == 403
    assert client.post(url, json={"mrn": ""}, headers=integration).status_code == 422
    assert client.post(url, json={"mrn": "A^B"}, headers=integration).status_code == 422
    answer = client.post(url, json={"mrn": "MRN1"}, headers=integration)
    assert answer.status_code == 202, answer.text
    matched = answer.json()
    assert (matched["document_id"], matched["resent"]) == (doc_id, ["epic"])
    again = client.post(url, json={"mrn": "MRN2"}, headers=integration)
    assert again.status_code == 409 and "not been processed" in again.json()["detail"]
    assert (
        client.post("/api/documents/999/match", json={"mrn": "X"}, headers=integration).status_code
        == 404
    )
    _process(store, "epic", "files")
    _dispatch(store, routes, {"epic": epic, "files": MemoryDestination("files")})
    [sent] = epic.delivered
    assert sent.message_id == matched["message_id"]
    assert DocumentEnvelope.from_bytes(sent.body).document.patient_mrn == "MRN1"
    entries = store.audit_entries(limit=20)
    trail = [(e.action, e.actor, e.outcome) for e in entries]
    assert trail[:5] == [
        ("match-document", "test-integration", "refused"),  # no document 999
        ("match-document", "test-integration", "refused"),  # not processed yet
        ("match-document", "test-integration", "ok"),
        ("match-document", "test-integration", "refused"),  # A^B
        ("match-document", "test-viewer", "refused"),  # the role
    ]
    assert ("view-document", "test-viewer", "ok") in trail
    assert ("list-documents", "test-viewer", "ok") in trail
    assert {e.peer for e in entries} == {"testclient:50000"}
    assert all("MRN" not in (e.detail or "") or e.outcome == "refused" for e in entries)
    assert all("MRN1" not in (e.detail or "") and "MRN404" not in (e.detail or "") for e in entries)


def test_resend_is_for_admins(
    client: TestClient,
    store: SqlMessageStore,
    routes: RouteSet,  # noqa: F811
    token: Callable[[str], str],
) -> None:
    admin, integration = bearer(token("admin")), bearer(token("integration"))
    doc_id, epic = _waiting(store, routes)
    url = f"/api/documents/{doc_id}/resend"
    assert client.post(url, headers=integration).status_code == 403
    bad = client.post(f"{url}?destination=nowhere", headers=admin)
    assert bad.status_code == 422 and "has no destination 'nowhere'" in bad.json()["detail"]
    done = client.post(url, headers=admin)
    assert done.status_code == 202
    assert [q["destination"] for q in done.json()["queued"]] == ["epic"]
    assert client.post("/api/documents/999/resend", headers=admin).status_code == 404
    epic.mrn = b"MRN404"
    _dispatch(store, routes, {"epic": epic, "files": MemoryDestination("files")})
    [line] = client.get("/api/documents", headers=admin).json()
    assert line["state"] == "delivered"
    refused = [e for e in store.audit_entries(limit=10) if e.outcome == "refused"]
    assert [(e.action, e.actor) for e in refused] == [
        ("resend", "test-admin"),  # no document 999
        ("resend", "test-admin"),  # nowhere
        ("resend", "test-integration"),
    ]
