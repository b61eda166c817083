"""Request bodies under /console and /api are capped before anything reads them (review13 H1, L1):
a declared length over the cap is answered 413 unread, a chunked body is read no further than
the cap, multipart is refused on the console but for the document upload; the workbench and the
document uploads keep their own, larger caps."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from pypdf import PdfWriter

from engine.api.auth import Role
from engine.api.auth_settings import AuthSettings
from engine.api.limits import DEFAULT_CAP, SLACK, cap_for
from engine.api.tokens import mint_dev_token
from engine.console.pages_workbench import MAX_BODY, MAX_TEXT
from engine.store import SqlMessageStore
from tests.api.conftest import TestClient
from tests.api.fakes import post_scope
from tests.console.frontdesk_support import TOKEN, front_desk_app, user

AppFactory = Callable[..., FastAPI]
TEN_MB = 10 * 1000 * 1000
CHUNK = 64 * 1024


class Sender:
    """An ASGI client: the body in chunks, counting what the app took (``read``)."""

    def __init__(self, body: bytes) -> None:
        self.body, self.read, self.status = body, 0, 0
        self.answer = b""

    async def receive(self) -> dict[str, object]:
        if self.read >= len(self.body):
            await asyncio.sleep(3600)  # a client that never ends its body: only a disconnect
        chunk = self.body[self.read : self.read + CHUNK]
        self.read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": self.read < len(self.body)}

    async def send(self, message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])  # type: ignore[call-overload]
        elif message["type"] == "http.response.body":
            self.answer += message.get("body", b"")  # type: ignore[operator]


def _drive(app: FastAPI, path: str, body: bytes, headers: dict[str, str]) -> Sender:
    sender = Sender(body)
    scope = post_scope(path, headers)
    asyncio.run(asyncio.wait_for(app(scope, sender.receive, sender.send), 60))  # type: ignore[arg-type]
    return sender


FORM = {"content-type": "application/x-www-form-urlencoded"}


def test_an_anonymous_10_mb_form_is_refused_unread(make_app: AppFactory) -> None:
    body = b"&".join([b"f%d=" % i + b"x" * 1_000_000 for i in range(10)])
    assert len(body) >= TEN_MB
    sent = _drive(
        make_app(),
        "/console/messages/1/handled",
        body,
        {**FORM, "content-length": str(len(body))},
    )
    assert sent.status == 413 and sent.read == 0
    assert f"{DEFAULT_CAP}-byte limit".encode() in sent.answer


def test_a_chunked_body_is_read_no_further_than_the_cap(make_app: AppFactory) -> None:
    body = b"csrf_token=" + b"x" * TEN_MB
    sent = _drive(make_app(), "/console/messages/1/handled", body, FORM)
    assert sent.status == 413
    assert sent.read <= DEFAULT_CAP + CHUNK
    # the same on the API, a JSON body to a route that takes one, without a token
    json = b'{"mrn": "' + b"x" * TEN_MB + b'"}'
    sent = _drive(make_app(), "/api/documents/1/match", json, {"content-type": "application/json"})
    assert sent.status == 413 and sent.read <= DEFAULT_CAP + CHUNK


def test_an_api_json_body_over_the_cap_without_a_token_is_413(client: TestClient) -> None:
    body = b'{"mrn": "' + b"x" * (DEFAULT_CAP + 1) + b'"}'
    answer = client.post(
        "/api/documents/1/match", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413
    assert "limit" in answer.json()["detail"]
    # within the cap, the route's own answer (here: no documents service)
    answer = client.post("/api/documents/1/match", json={"mrn": "M1"})
    assert answer.status_code not in (413, 415)


def test_multipart_is_refused_on_the_console_but_for_the_upload(client: TestClient) -> None:
    files = {"f": ("big.bin", b"\0" * 1024, "application/octet-stream")}
    answer = client.post("/console/logout", files=files, data={"csrf_token": "x"})
    assert answer.status_code == 415 and "multipart" in answer.json()["detail"]
    answer = client.post("/console/messages/1/handled", files=files)
    assert answer.status_code == 415
    assert cap_for("/console/documents/upload") is None  # the intake caps it as it streams
    assert cap_for("/documents") is None and cap_for("/hl7v2") is None and cap_for("/fhir") is None
    assert cap_for("/console/workbench") == MAX_BODY + SLACK
    assert cap_for("/apix") is None and cap_for("/api/messages") == DEFAULT_CAP


def test_the_workbench_still_takes_a_1_mib_paste(store: SqlMessageStore, tmp_path: Path) -> None:
    app, _ = front_desk_app(store, tmp_path, user(Role.INTEGRATION))
    message = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5.1\r\nPID|1||" + "x" * (MAX_TEXT - 200)
    answer = TestClient(app).post(
        "/console/workbench",
        data={"csrf_token": TOKEN, "direction": "to-fhir", "message": message},
    )
    assert len(message) > 1000 * 1000
    assert answer.status_code != 413 and "larger than" not in answer.text
    assert answer.status_code == 200, answer.text[:500]


def _pdf_of_1_mib() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    writer.add_metadata({"/Keywords": "x" * (1024 * 1024)})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_the_uploads_still_take_a_1_mib_pdf(store: SqlMessageStore, tmp_path: Path) -> None:
    app, _ = front_desk_app(store, tmp_path, user(Role.FRONT_DESK))
    app.state.documents.max_bytes = 4 * 1024 * 1024
    pdf = _pdf_of_1_mib()
    assert len(pdf) > 1024 * 1024
    client = TestClient(app)
    fields = {"mrn": "MRN1001", "document_type": "insurance-card", "date": "2026-12-01"}
    answer = client.post(
        "/console/documents/upload",
        data={"csrf_token": TOKEN, **fields},
        files={"file": ("card.pdf", pdf, "application/octet-stream")},
    )
    assert answer.status_code == 201, answer.text[:500]
    assert re.search(r"Stored as document \d+", answer.text)
    auth = AuthSettings(environment="development", dev_secret_file=tmp_path / "secret")
    bearer = mint_dev_token(auth, role="integration", subject="test-integration")
    answer = client.post(
        "/documents",
        data={**fields, "practice": "195900"},
        files={"file": ("other.pdf", pdf + b"\n", "application/octet-stream")},
        headers={"Authorization": f"Bearer {bearer}"},
    )
    assert answer.status_code in (200, 201), answer.text[:500]
