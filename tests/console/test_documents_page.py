"""The console's Documents page on the real app and store (SQLite and PostgreSQL): the front desk
uploads through the intake POST /documents uses (same cap, type by magic, refusals recorded),
sees the documents waiting for a patient with the MRN they came with, and matches one as
``engine documents match`` does. Every list, view, upload and match is audited from the
console; CSRF guards the upload (checked before a byte is spooled) and the match."""

from __future__ import annotations

import html as html_text
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.api.auth import Role
from engine.store import SqlMessageStore, Who
from engine.store.tables import documents, messages
from tests.api.conftest import TestClient
from tests.console.frontdesk_support import (
    CAP,
    TOKEN,
    front_desk_app,
    stored_document,
    user,
    waiting_document,
)
from tests.documents.intake_support import PNG, pdf_bytes

FORM = {"mrn": "MRN1001", "document_type": "insurance-card", "date": "2026-12-01"}


def _client(store: SqlMessageStore, tmp_path: Path, *roles: Role) -> TestClient:
    app, _ = front_desk_app(store, tmp_path, user(*(roles or (Role.FRONT_DESK,))))
    return TestClient(app)


def _messages(store: SqlMessageStore) -> list:  # type: ignore[type-arg]
    with store.db_engine.connect() as conn:
        return list(conn.execute(select(messages).order_by(messages.c.id)))


def _document(store: SqlMessageStore, document_id: int):  # type: ignore[no-untyped-def]
    with store.db_engine.connect() as conn:
        return conn.execute(select(documents).where(documents.c.id == document_id)).one()


def _notice(html: str) -> str:
    found = re.search(r"data-notice>([^<]*)<", html)
    assert found, html[:2000]
    return html_text.unescape(found.group(1))


def _upload(client: TestClient, data: bytes, name: str = "card.png", **form: str):  # type: ignore[no-untyped-def]
    fields = {"csrf_token": TOKEN, **FORM, **form}
    return client.post(
        "/console/documents/upload",
        data=fields,
        files={"file": (name, data, "application/octet-stream")},
    )


def test_the_page_lists_those_waiting_with_their_mrn_and_the_recent_with_deliveries(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    doc_id, mid = waiting_document(store, tmp_path)
    client = _client(store, tmp_path)
    page = client.get("/console/documents")
    assert page.status_code == 200, page.text
    html = page.text
    waiting = html[html.index('id="waiting"') : html.index('id="recent"')]
    assert f'href="/console/documents/{doc_id}"' in waiting
    assert "MRN404" in waiting and "epic" in waiting and "Referral letter" in waiting
    assert f'action="/console/documents/{doc_id}/match"' in waiting
    recent = html[html.index('id="recent"') :]
    assert "files: delivered" in recent and "epic: needs-patient" in recent
    # the upload form: multipart, the CSRF token its first field, the site's document types
    form = html[html.index('action="/console/documents/upload"') :]
    assert 'enctype="multipart/form-data"' in html and "data-dropzone" in html
    assert form.index('name="csrf_token"') < form.index('name="file"')
    assert '<option value="insurance-card">Insurance card</option>' in html
    assert 'value="' + "2026" in html  # today's date filled in (the practice's zone)
    # CSP: no inline script or style
    assert "<script>" not in html and 'style="' not in html
    [entry] = store.audit_entries(limit=1)
    assert (entry.action, entry.actor, entry.source, entry.outcome) == (
        "list-documents",
        "frida",
        "console",
        "ok",
    )
    assert entry.detail == "1 waiting for a patient and 1 recent shown"
    assert "MRN" not in (entry.detail or "")
    assert entry.patient_key == "CLINIC|MRN404"  # the patient shown (twice: one record)


def test_the_list_is_recorded_once_per_patient_it_shows(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    """IHE BALP: one AuditEvent per patient. The page shows the documents of MRN-A (one
    waiting, one delivered) and of MRN-B: the view is recorded for each of them, as one view
    (action, actor, time, outcome, detail), so a search of the trail by either patient finds
    it; the chain still verifies."""
    from engine.store.audit import AuditQuery

    waiting_document(store, tmp_path, mrn="MRN-A")
    waiting_document(store, tmp_path, mrn="MRN-B")
    waiting_document(store, tmp_path, mrn="MRN-A", pdf=b"%PDF-1.4\nanother\n" + b"1" * 512)
    assert _client(store, tmp_path).get("/console/documents").status_code == 200
    entries = [e for e in store.audit_entries(limit=10) if e.action == "list-documents"]
    assert sorted(e.patient_key or "" for e in entries) == ["CLINIC|MRN-A", "CLINIC|MRN-B"]
    assert len({(e.at, e.actor, e.outcome, e.detail) for e in entries}) == 1
    assert entries[0].detail == "3 waiting for a patient and 3 recent shown"
    who = Who("admin", "cli", None)
    for mrn in ("MRN-A", "CLINIC|MRN-B"):  # a bare MRN or with its authority
        found = store.audit_page(AuditQuery(mrn=mrn, action="list-documents"), who)
        assert [(r.action, r.actor) for r in found] == [("list-documents", "frida")], mrn
    assert store.verify_audit().ok


def test_a_viewer_sees_but_neither_uploads_nor_matches_and_others_are_refused(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    doc_id, _ = waiting_document(store, tmp_path)
    viewer = _client(store, tmp_path, Role.VIEWER)
    html = viewer.get("/console/documents").text
    assert "MRN404" in html
    assert "/console/documents/upload" not in html and "/match" not in html
    assert _upload(viewer, PNG).status_code == 403
    refused = viewer.post(
        f"/console/documents/{doc_id}/match", data={"csrf_token": TOKEN, "mrn": "MRN1"}
    )
    assert refused.status_code == 403
    assert _document(store, doc_id).patient_mrn == "MRN404"
    integration = _client(store, tmp_path, Role.INTEGRATION)
    assert integration.get("/console/documents").status_code == 403
    admin = _client(store, tmp_path, Role.ADMIN)
    assert "/console/documents/upload" in admin.get("/console/documents").text


def test_an_upload_is_stored_by_the_intake_and_the_same_again_is_a_duplicate(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    client = _client(store, tmp_path)
    data = pdf_bytes(2)
    response = _upload(client, data, "card.pdf", appointment="APT-7", title="Card")
    assert response.status_code == 201, response.text
    notice = _notice(response.text)
    found = re.match(r"Stored as document (\d+) \(application/pdf\)", notice)
    assert found, notice
    doc_id = int(found.group(1))
    row = _document(store, doc_id)
    assert (row.patient_mrn, row.document_type, row.document_date) == (
        "MRN1001",
        "insurance-card",
        "2026-12-01",
    )
    assert (row.channel, row.sender, row.appointment, row.title, row.file_name) == (
        "console",
        "frida",
        "APT-7",
        "Card",
        "card.pdf",
    )
    assert b"".join(store.document_chunks(row.sha256)) == data
    # the new document is on the page it answers with
    assert f'href="/console/documents/{doc_id}"' in response.text
    upload_entry = next(e for e in store.audit_entries(limit=5) if e.action == "upload-document")
    assert (upload_entry.outcome, upload_entry.source, upload_entry.message_id) == (
        "ok",
        "console",
        row.message_id,
    )
    assert upload_entry.patient_key is not None and upload_entry.patient_key.endswith("MRN1001")
    again = _upload(client, data, "card.pdf", appointment="APT-7", title="Card")
    assert again.status_code == 200
    assert _notice(again.text).startswith(
        f"Already stored: the same file for this patient is document {doc_id}"
    )
    assert len(_messages(store)) == 1
    assert list((tmp_path / "spool").iterdir()) == []


@pytest.mark.parametrize(
    ("data", "form", "status", "reason"),
    [
        (b"PK\x03\x04" + bytes(200), {}, 415, "ZIP"),
        (pdf_bytes(password="pw"), {}, 422, "encrypted PDF"),
        (PNG, {"document_type": "Insurance Card", "mrn": ""}, 422, "mrn is missing"),
        (PNG, {"date": "yesterday"}, 422, "date 'yesterday' is not a date"),
        (b"%PDF-1.4\n" + bytes(CAP + 10), {}, 413, f"larger than the {CAP}-byte limit"),
    ],
    ids=["zip", "encrypted-pdf", "no-mrn", "bad-date", "over-the-cap"],
)
def test_a_refused_upload_shows_why_and_its_refusal_is_recorded(
    store: SqlMessageStore,
    tmp_path: Path,
    data: bytes,
    form: dict[str, str],
    status: int,
    reason: str,
) -> None:
    client = _client(store, tmp_path)
    response = _upload(client, data, "scan.pdf", **form)
    assert response.status_code == status
    notice = _notice(response.text)
    assert notice.startswith("Not stored: ") and reason in notice, notice
    [row] = _messages(store)
    assert (row.kind, row.state) == ("document", "error")
    assert reason in row.reason
    entry = next(e for e in store.audit_entries(limit=5) if e.action == "upload-document")
    assert (entry.outcome, entry.message_id, entry.source) == ("refused", row.id, "console")
    # the form is there again for the next try
    assert 'action="/console/documents/upload"' in response.text


def test_an_upload_without_the_sessions_csrf_token_is_refused_before_it_is_read(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    client = _client(store, tmp_path)
    files = {"file": ("card.png", PNG, "image/png")}
    assert client.post("/console/documents/upload", data=FORM, files=files).status_code == 403
    wrong = {**FORM, "csrf_token": "not-it"}
    assert client.post("/console/documents/upload", data=wrong, files=files).status_code == 403
    # the token after the file is too late: the file would have been read unchecked
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + PNG
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
            f"{TOKEN}\r\n--{boundary}--\r\n"
        ).encode()
    )
    late = client.post(
        "/console/documents/upload",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert late.status_code == 403
    assert _messages(store) == []  # nothing stored, no refusal recorded either
    assert list((tmp_path / "spool").iterdir()) == []
    # the header is taken as well (a script's upload)
    ok = client.post(
        "/console/documents/upload",
        data=FORM,
        files=files,
        headers={"X-CSRF-Token": TOKEN},
    )
    assert ok.status_code == 201


def test_match_files_the_document_under_the_right_patient_and_sends_it_again(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    doc_id, old = waiting_document(store, tmp_path)
    client = _client(store, tmp_path)
    response = client.post(
        f"/console/documents/{doc_id}/match", data={"csrf_token": TOKEN, "mrn": " MRN1 "}
    )
    assert response.status_code == 200, response.text
    row = _document(store, doc_id)
    assert (row.patient_mrn, row.patient_authority) == ("MRN1", "CLINIC")
    assert row.message_id != old
    assert _notice(response.text) == (
        f"Document {doc_id} matched: sent again as message {row.message_id} to epic"
    )
    html = response.text
    assert "None: every document" in html[html.index('id="waiting"') : html.index('id="recent"')]
    match = next(e for e in store.audit_entries(limit=5) if e.action == "match-document")
    assert (match.actor, match.source, match.outcome, match.message_id) == (
        "frida",
        "console",
        "ok",
        row.message_id,
    )
    # again: nothing waits any more; the store's reason is shown and the refusal audited
    again = client.post(
        f"/console/documents/{doc_id}/match", data={"csrf_token": TOKEN, "mrn": "MRN2"}
    )
    assert again.status_code == 409
    assert _notice(again.text).startswith(f"Document {doc_id} not matched: ")
    assert _document(store, doc_id).patient_mrn == "MRN1"
    bad = client.post(
        f"/console/documents/{doc_id}/match", data={"csrf_token": TOKEN, "mrn": "MRN|1"}
    )
    assert bad.status_code == 422
    unknown = client.post("/console/documents/999999/match", data={"csrf_token": TOKEN, "mrn": "M"})
    assert unknown.status_code == 404 and _notice(unknown.text) == "No document 999999"


def test_match_checks_csrf(store: SqlMessageStore, tmp_path: Path) -> None:
    doc_id, _ = waiting_document(store, tmp_path)
    client = _client(store, tmp_path)
    for form in ({"mrn": "MRN1"}, {"mrn": "MRN1", "csrf_token": "forged"}):
        assert client.post(f"/console/documents/{doc_id}/match", data=form).status_code == 403
    assert _document(store, doc_id).patient_mrn == "MRN404"


def test_one_documents_page_shows_its_metadata_and_deliveries_audited(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    doc_id, mid = waiting_document(store, tmp_path)
    client = _client(store, tmp_path)
    page = client.get(f"/console/documents/{doc_id}")
    assert page.status_code == 200
    html = page.text
    assert "MRN404" in html and "CLINIC" in html and "Referral letter" in html
    assert "needs-patient" in html and "Patient?identifier: no match" in html
    assert f'action="/console/documents/{doc_id}/match"' in html
    [entry] = store.audit_entries(limit=1)
    assert (entry.action, entry.source, entry.message_id, entry.outcome) == (
        "view-document",
        "console",
        mid,
        "ok",
    )
    missing = client.get("/console/documents/424242")
    assert missing.status_code == 404 and "No document 424242" in missing.text
    assert client.get("/console/documents/0").status_code == 422


def test_a_patient_without_an_authority_is_shown_by_the_mrn_alone(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    """A document sent with an MRN and no assigning authority: every page shows ``DEMO1001``
    (not its key ``|DEMO1001``); with an authority, ``CLINIC|MRN404``, as the message pages
    show a patient key."""
    from engine.console.render import patient

    assert [patient(k) for k in ("|DEMO1001", "CLINIC|MRN1", None, "")] == [
        "DEMO1001",
        "CLINIC|MRN1",
        "",
        "",
    ]
    assert patient("", "DEMO1001") == "DEMO1001" and patient("CLINIC", "M1") == "CLINIC|M1"
    bare = stored_document(store, tmp_path, mrn="DEMO1001", authority="")
    waiting_id, _ = waiting_document(store, tmp_path)  # CLINIC|MRN404
    client = _client(store, tmp_path, Role.ADMIN)
    for path in (
        "/console/documents",
        f"/console/documents/{bare.info.document_id}",
        f"/console/messages/{bare.message_id}",
        "/console/audit",
    ):
        html = client.get(path).text
        assert "DEMO1001" in html, path
        assert "|DEMO1001" not in html, path
    assert "CLINIC|MRN404" in client.get("/console/documents").text
    assert "CLINIC|MRN404" in client.get(f"/console/documents/{waiting_id}").text
