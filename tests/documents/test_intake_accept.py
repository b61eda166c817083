"""The intake: a document spooled while hashed and counted, checked (size, type, metadata) and
committed before it is accepted; every refusal recorded with its reason."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import select

from engine.documents.intake import DocumentFields, DocumentIntake
from engine.documents.sniff import DocumentRefused
from engine.store import SqlMessageStore
from engine.store.tables import documents, messages
from tests.documents.intake_support import PNG, pdf_bytes, stored_document

MiB = 1024 * 1024
FIELDS = DocumentFields(mrn="MRN1001", document_type="insurance-card", date="2026-12-01")


def _intake(store: SqlMessageStore, tmp_path: Path, **kwargs: object) -> DocumentIntake:
    options: dict[str, object] = {"max_bytes": 25 * MiB, "spool_dir": tmp_path / "spool"}
    options.update(kwargs)
    return DocumentIntake(store, **options)  # type: ignore[arg-type]


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


def _messages(store: SqlMessageStore) -> list:  # type: ignore[type-arg]
    with store.db_engine.connect() as conn:
        return list(conn.execute(select(messages).order_by(messages.c.id)))


def test_accepted_once_committed_and_the_spool_emptied(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    woken: list[int] = []
    intake = _intake(store, tmp_path, on_stored=lambda: woken.append(1))
    data = pdf_bytes(2)
    accepted = asyncio.run(
        intake.accept(
            _chunks(data, 100), FIELDS, channel="http", sender="tester", file_name="card.pdf"
        )
    )
    assert not accepted.duplicate
    assert accepted.sha256 == hashlib.sha256(data).hexdigest()
    assert (accepted.size, accepted.media_type) == (len(data), "application/pdf")
    info = stored_document(store, accepted.document_id)
    assert info is not None
    assert (info.patient_mrn, info.document_type, info.document_date, info.file_name) == (
        "MRN1001",
        "insurance-card",
        "2026-12-01",
        "card.pdf",
    )
    assert b"".join(store.document_chunks(accepted.sha256)) == data
    assert [m.id for m in _messages(store)] == [accepted.message_id]
    assert woken == [1]
    assert list((tmp_path / "spool").iterdir()) == []


def test_the_same_upload_twice_is_one_document(store: SqlMessageStore, tmp_path: Path) -> None:
    intake = _intake(store, tmp_path)
    data = pdf_bytes()
    first = asyncio.run(intake.accept(_chunks(data), FIELDS, channel="http", sender="a"))
    again = asyncio.run(intake.accept(_chunks(data), FIELDS, channel="http", sender="b"))
    assert again.duplicate
    assert (again.document_id, again.message_id) == (first.document_id, first.message_id)
    assert len(_messages(store)) == 1


def test_over_the_cap_refused_unread_and_recorded(store: SqlMessageStore, tmp_path: Path) -> None:
    intake = _intake(store, tmp_path, max_bytes=10_000)
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += 1000
            yield PNG + bytes(1000 - len(PNG))

    with pytest.raises(DocumentRefused) as refused:
        asyncio.run(intake.accept(endless(), FIELDS, channel="http", sender="a"))
    assert refused.value.kind == "size"
    assert "10000-byte limit (ENGINE_MAX_DOCUMENT_BYTES)" in str(refused.value)
    assert read <= 11_000  # stopped one chunk past the cap
    [msg] = _messages(store)
    assert (msg.kind, msg.state) == ("document", "error")
    assert "limit" in msg.reason and refused.value.message_id == msg.id
    raw = orjson.loads(bytes(msg.raw))
    assert raw["bytes_kept"] is False and raw["head_base64"]
    assert list((tmp_path / "spool").iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (DocumentFields(mrn="", document_type="consent"), "mrn is missing"),
        (DocumentFields(mrn="A" * 65, document_type="consent"), "mrn is longer than 64"),
        (DocumentFields(mrn="MRN\x001", document_type="consent"), "mrn has unprintable"),
        (DocumentFields(mrn="MRN1", document_type="Consent Form"), "document_type 'Consent Form'"),
        (DocumentFields(mrn="MRN1", document_type=""), "document_type is missing"),
        (DocumentFields(mrn="MRN1", document_type="consent", date="2026-02-30"), "2026-02-30"),
        (DocumentFields(mrn="MRN1", document_type="consent", date="12/01/2026"), "YYYY-MM-DD"),
        (
            DocumentFields(mrn="MRN1", document_type="consent", practice="p" * 65),
            "practice is longer than 64",
        ),
    ],
)
def test_bad_metadata_refused_naming_it(
    store: SqlMessageStore, tmp_path: Path, fields: DocumentFields, problem: str
) -> None:
    intake = _intake(store, tmp_path)
    with pytest.raises(DocumentRefused) as refused:
        asyncio.run(intake.accept(_chunks(pdf_bytes()), fields, channel="http", sender="a"))
    assert refused.value.kind == "metadata"
    assert problem in str(refused.value)
    assert "MRN1" not in str(refused.value)  # the patient's number is never echoed
    [msg] = _messages(store)
    assert (msg.state, msg.reason) == ("error", str(refused.value))
    assert orjson.loads(bytes(msg.raw))["bytes_kept"] is True


def test_the_site_document_type_table_decides(store: SqlMessageStore, tmp_path: Path) -> None:
    intake = _intake(store, tmp_path, document_types=frozenset({"consent", "referral"}))
    with pytest.raises(DocumentRefused, match="not in the site's document type table"):
        asyncio.run(intake.accept(_chunks(pdf_bytes()), FIELDS, channel="http", sender="a"))
    fields = DocumentFields(mrn="MRN1001", document_type="referral")
    accepted = asyncio.run(intake.accept(_chunks(pdf_bytes()), fields, channel="http", sender="a"))
    info = stored_document(store, accepted.document_id)
    assert info is not None
    today = datetime.now(ZoneInfo("America/New_York")).date().isoformat()
    assert info.document_date == today  # no date given: today where the practice is


def test_refused_type_and_pdf_recorded_with_their_bytes(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    intake = _intake(store, tmp_path)
    with pytest.raises(DocumentRefused) as refused:
        asyncio.run(
            intake.accept(_chunks(b"PK\x03\x04" + bytes(100)), FIELDS, channel="http", sender="a")
        )
    assert refused.value.kind == "type"
    locked = pdf_bytes(password="pw")
    with pytest.raises(DocumentRefused) as encrypted:
        asyncio.run(intake.accept(_chunks(locked), FIELDS, channel="http", sender="a"))
    assert encrypted.value.kind == "pdf"
    first, second = _messages(store)
    assert "ZIP" in first.reason and "encrypted PDF" in second.reason
    assert b"".join(store.document_chunks(hashlib.sha256(locked).hexdigest())) == locked
    with store.db_engine.connect() as conn:
        assert conn.execute(select(documents.c.id)).first() is None
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_file_accepted_where_it_lies(store: SqlMessageStore, tmp_path: Path) -> None:
    intake = _intake(store, tmp_path)
    path = tmp_path / "scan.png"
    path.write_bytes(PNG)
    accepted = asyncio.run(intake.accept_file(path, FIELDS, channel="folder", sender="inbox"))
    assert accepted.media_type == "image/png"
    assert path.exists()  # the folder moves it, once committed


def test_25_mib_streamed_without_holding_it(store: SqlMessageStore, tmp_path: Path) -> None:
    intake = _intake(store, tmp_path)
    digest = hashlib.sha256()

    async def big() -> AsyncIterator[bytes]:
        yield PNG
        digest.update(PNG)
        for _ in range(25 * 16 - 1):
            block = os.urandom(64 * 1024)
            digest.update(block)
            yield block

    tracemalloc.start()
    try:
        accepted = asyncio.run(intake.accept(big(), FIELDS, channel="http", sender="a"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert accepted.sha256 == digest.hexdigest()
    assert accepted.size == len(PNG) + (25 * 16 - 1) * 64 * 1024
    assert peak < 8 * MiB, f"peak {peak} bytes"


def test_from_settings_takes_the_table_the_cap_and_the_spool(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    from engine.settings import Settings

    settings = Settings(var_dir=tmp_path, max_document_bytes=4096, timezone="Pacific/Auckland")
    intake = DocumentIntake.from_settings(store, settings)
    assert (intake.max_bytes, intake.spool_dir) == (4096, tmp_path / "spool")
    assert intake.document_types is not None and "insurance-card" in intake.document_types
    assert intake.today() == datetime.now(ZoneInfo("Pacific/Auckland")).date().isoformat()


def test_document_settings_checked() -> None:
    from pydantic import ValidationError

    from engine.settings import Settings

    with pytest.raises(ValidationError, match="named group mrn"):
        Settings(documents_name_pattern=r"^(?P<patient>\w+)")
    with pytest.raises(ValidationError, match="not a regular expression"):
        Settings(documents_name_pattern="(")
    settings = Settings(var_dir=Path("/tmp/x"))
    assert settings.resolved_documents_inbox() == Path("/tmp/x/inbox")
    assert Settings(documents_inbox="").resolved_documents_inbox() is None
    assert Settings(documents_inbox="/srv/scans").resolved_documents_inbox() == Path("/srv/scans")


def test_uploads_arriving_together_share_a_commit(store: SqlMessageStore, tmp_path: Path) -> None:
    """Group commit: while one transaction runs, the documents arriving behind it wait and go
    in the next one together (one fsync for all of them on SQLite)."""
    import time as clock

    batches: list[int] = []

    class Slow:
        def store_documents(self, batch):  # type: ignore[no-untyped-def]
            batches.append(len(batch))
            clock.sleep(0.2)  # a slow disk: the others arrive meanwhile
            return store.store_documents(batch)

        def refuse_document(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return store.refuse_document(*args, **kwargs)

    intake = _intake(Slow(), tmp_path)  # type: ignore[arg-type]

    async def many() -> list[object]:
        return list(
            await asyncio.gather(
                *(
                    intake.accept(
                        _chunks(PNG + n.to_bytes(4, "big")),
                        DocumentFields(mrn=f"MRN{n}", document_type="consent"),
                        channel="http",
                        sender="a",
                    )
                    for n in range(8)
                )
            )
        )

    accepted = asyncio.run(many())
    assert len({a.document_id for a in accepted}) == 8  # type: ignore[attr-defined]
    assert sum(batches) == 8 and len(batches) < 8, batches
    assert len(_messages(store)) == 8
