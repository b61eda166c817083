"""``POST /documents``: a multipart upload committed before it is answered, on the real app and
store; every refusal answered with its reason and recorded."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from engine.api.app import create_app
from engine.api.auth_settings import AuthSettings
from engine.documents.intake import DocumentIntake
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.sim.server_thread import ServerThread
from engine.store import SqlMessageStore
from engine.store.tables import messages
from tests.api.conftest import TestClient, bearer
from tests.api.fakes import FakeHealth, FakeIngest, FakeMessages
from tests.documents.intake_support import PNG, pdf_bytes, stored_document

CAP = 64 * 1024
FORM = {"mrn": "MRN1001", "document_type": "insurance-card", "date": "2026-12-01"}


@pytest.fixture
def app_client(
    store: SqlMessageStore, settings: Settings, auth: AuthSettings, tmp_path: Path
) -> TestClient:
    metrics = EngineMetrics()
    intake = DocumentIntake(store, max_bytes=CAP, spool_dir=tmp_path / "spool")
    app = create_app(
        settings,
        ingest=FakeIngest(metrics),
        messages=FakeMessages([]),
        health=FakeHealth(),
        metrics=metrics,
        auth=auth,
        documents=intake,
    )
    return TestClient(app)


@pytest.fixture
def headers(token: Callable[[str], str]) -> dict[str, str]:
    return bearer(token("integration"))


def _rows(store: SqlMessageStore) -> list:  # type: ignore[type-arg]
    with store.db_engine.connect() as conn:
        return list(conn.execute(select(messages).order_by(messages.c.id)))


def test_upload_answers_201_once_stored_and_200_for_the_same_again(
    app_client: TestClient, headers: dict[str, str], store: SqlMessageStore, tmp_path: Path
) -> None:
    data = pdf_bytes(2)
    form = {**FORM, "appointment": "APT-7", "title": "Card", "practice": "195900"}
    files = {"file": ("card.pdf", data, "application/octet-stream")}
    response = app_client.post("/documents", data=form, files=files, headers=headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["size"], body["media_type"], body["duplicate"]) == (
        len(data),
        "application/pdf",
        False,
    )
    info = stored_document(store, body["document_id"])
    assert info is not None
    assert (info.sender, info.channel, info.file_name) == ("test-integration", "http", "card.pdf")
    assert (info.appointment, info.title, info.practice) == ("APT-7", "Card", "195900")
    assert b"".join(store.document_chunks(info.sha256)) == data
    [row] = _rows(store)
    assert (row.id, row.kind, row.state) == (body["message_id"], "document", "received")
    again = app_client.post("/documents", data=form, files=files, headers=headers)
    assert again.status_code == 200
    assert again.json() == {**body, "duplicate": True}
    assert len(_rows(store)) == 1
    assert list((tmp_path / "spool").iterdir()) == []


def test_roles(app_client: TestClient, token: Callable[[str], str]) -> None:
    files = {"file": ("a.png", PNG, "image/png")}
    assert app_client.post("/documents", data=FORM, files=files).status_code == 401
    viewer = bearer(token("viewer"))
    assert app_client.post("/documents", data=FORM, files=files, headers=viewer).status_code == 403
    admin = bearer(token("admin"))
    assert app_client.post("/documents", data=FORM, files=files, headers=admin).status_code == 201


def test_a_type_not_taken_is_415_and_recorded(
    app_client: TestClient, headers: dict[str, str], store: SqlMessageStore
) -> None:
    files = {"file": ("letter.pdf", b"PK\x03\x04" + bytes(200), "application/pdf")}
    response = app_client.post("/documents", data=FORM, files=files, headers=headers)
    assert response.status_code == 415
    body = response.json()
    assert "ZIP" in body["detail"] and body["refusal"] == "type"
    [row] = _rows(store)
    assert (row.id, row.state, row.reason) == (body["message_id"], "error", body["detail"])


def test_an_encrypted_pdf_is_422(
    app_client: TestClient, headers: dict[str, str], store: SqlMessageStore
) -> None:
    files = {"file": ("locked.pdf", pdf_bytes(password="pw"), "application/pdf")}
    response = app_client.post("/documents", data=FORM, files=files, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("encrypted PDF (password-protected)")
    assert _rows(store)[0].state == "error"


def test_bad_metadata_is_422_naming_each_problem(
    app_client: TestClient, headers: dict[str, str], store: SqlMessageStore
) -> None:
    files = {"file": ("a.png", PNG, "image/png")}
    form = {"document_type": "Insurance Card", "date": "yesterday"}
    response = app_client.post("/documents", data=form, files=files, headers=headers)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "mrn is missing" in detail and "document_type 'Insurance Card'" in detail
    assert "date 'yesterday'" in detail
    assert _rows(store)[0].reason == detail


def test_no_file_and_unknown_fields_are_422(
    app_client: TestClient, headers: dict[str, str]
) -> None:
    response = app_client.post("/documents", data=FORM, files={"x": ("", b"")}, headers=headers)
    assert response.status_code == 422 and "file" in response.json()["detail"]
    files = {"file": ("a.png", PNG, "image/png")}
    form = {**FORM, "patient_name": "Jane"}
    response = app_client.post("/documents", data=form, files=files, headers=headers)
    assert response.status_code == 422 and "patient_name" in response.json()["detail"]


def test_not_multipart_is_415(app_client: TestClient, headers: dict[str, str]) -> None:
    response = app_client.post(
        "/documents", content=PNG, headers={**headers, "Content-Type": "image/png"}
    )
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


def test_over_the_cap_is_413_recorded_without_reading_it_all(
    store: SqlMessageStore,
    settings: Settings,
    auth: AuthSettings,
    tmp_path: Path,
    headers: dict[str, str],
) -> None:
    """Over a real socket, chunked (no Content-Length to refuse it by): the engine answers 413
    once the file passes the cap, while the client has sent only a little more and never ends
    its body."""
    metrics = EngineMetrics()
    intake = DocumentIntake(store, max_bytes=CAP, spool_dir=tmp_path / "spool")
    app = create_app(
        settings,
        ingest=FakeIngest(metrics),
        messages=FakeMessages([]),
        health=FakeHealth(),
        metrics=metrics,
        auth=auth,
        documents=intake,
    )
    server = ServerThread(app)
    server.start()
    boundary = "b0und4ry"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="mrn"\r\n\r\nMRN1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"'
        "\r\nContent-Type: image/png\r\n\r\n"
    ).encode() + PNG
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                (
                    "POST /documents HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: {headers['Authorization']}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n"
                ).encode()
            )
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            block = bytes(16 * 1024)
            for _ in range(2 * CAP // len(block)):  # twice the cap, and the body never ends
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
    finally:
        server.stop()
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 413 ")
    assert b"ENGINE_MAX_DOCUMENT_BYTES" in rest
    [row] = _rows(store)
    assert row.state == "error"
    assert orjson.loads(bytes(row.raw))["head_base64"]


def test_a_declared_length_over_the_cap_is_413_unread(
    app_client: TestClient, headers: dict[str, str], store: SqlMessageStore
) -> None:
    files = {"file": ("big.png", PNG + bytes(2 * CAP), "image/png")}
    response = app_client.post("/documents", data=FORM, files=files, headers=headers)
    assert response.status_code == 413
    [row] = _rows(store)
    assert row.state == "error" and "limit" in row.reason


def test_a_store_that_fails_is_503_send_again(
    settings: Settings, auth: AuthSettings, tmp_path: Path, headers: dict[str, str]
) -> None:
    class Down:
        def store_document(self, *args: object, **kwargs: object) -> object:
            raise ConnectionError("database down")

        def refuse_document(self, *args: object, **kwargs: object) -> int:
            raise ConnectionError("database down")

    metrics = EngineMetrics()
    intake = DocumentIntake(Down(), max_bytes=CAP, spool_dir=tmp_path / "spool")  # type: ignore[arg-type]
    app = create_app(
        settings,
        ingest=FakeIngest(metrics),
        messages=FakeMessages([]),
        health=FakeHealth(),
        metrics=metrics,
        auth=auth,
        documents=intake,
    )
    client = TestClient(app)
    for data in (PNG, b"PK\x03\x04"):  # accepted or refused: neither can be stored
        files = {"file": ("a.png", data, "image/png")}
        response = client.post("/documents", data=FORM, files=files, headers=headers)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "30"
        assert "send it again" in response.json()["detail"]
    assert list((tmp_path / "spool").iterdir()) == []


def test_no_intake_is_503(client: TestClient, headers: dict[str, str]) -> None:
    files = {"file": ("a.png", PNG, "image/png")}
    response = client.post("/documents", data=FORM, files=files, headers=headers)
    assert response.status_code == 503


def test_the_file_name_is_kept_without_its_folder(
    app_client: TestClient, headers: dict[str, str], store: SqlMessageStore
) -> None:
    files = {"file": ("C:\\Scans\\front desk\\card.png", PNG, "image/png")}
    response = app_client.post("/documents", data=FORM, files=files, headers=headers)
    assert response.status_code == 201
    info = stored_document(store, response.json()["document_id"])
    assert info is not None and info.file_name == "card.png"


def test_a_body_far_past_the_cap_is_413_even_when_the_form_ended(
    app_client: TestClient, headers: dict[str, str], store: SqlMessageStore
) -> None:
    """Chunked, no Content-Length: a valid form then megabytes after its closing boundary (an
    epilogue the parser skips) were all read and answered 201; every byte of the body counts."""
    boundary = "b0undary"
    form = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in FORM.items()
    )
    head = (
        form
        + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + PNG
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(64):  # 4 MiB after the form; the cap is 64 KiB
            yield bytes(64 * 1024)

    response = app_client.post(
        "/documents",
        content=body(),
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413, response.text
    assert "ENGINE_MAX_DOCUMENT_BYTES" in response.json()["detail"]
    [row] = _rows(store)
    assert row.state == "error" and "body" in row.reason


def test_an_upload_is_two_hand_offs_to_the_intake_threads(
    app_client: TestClient,
    headers: dict[str, str],
    store: SqlMessageStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # each hand-off to a thread costs two context switches: a document under a MiB is spooled
    # and parsed in one, closed, checked, made a blob, committed and its spool gone in another
    intake = app_client.app.state.documents  # type: ignore[attr-defined]
    calls: list[str] = []
    run = intake.run

    async def counted(fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await run(fn, *args, **kwargs)

    monkeypatch.setattr(intake, "run", counted)
    files = {"file": ("card.pdf", pdf_bytes(2), "application/pdf")}
    response = app_client.post("/documents", data=FORM, files=files, headers=headers)
    assert response.status_code == 201, response.text
    assert calls == ["_start", "_store_file"]
    assert stored_document(store, response.json()["document_id"]) is not None
    assert list((tmp_path / "spool").iterdir()) == []
