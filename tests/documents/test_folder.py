"""The watched folder: a file is taken once it stops changing, who and what from its sidecar or
its name; accepted files go to done/, refused ones to error/ with the reason beside them; a
crash between the commit and the move stores nothing twice."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.documents.folder import WatchedFolder
from engine.documents.intake import DocumentIntake
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.tables import documents, messages
from tests.documents.intake_support import PNG, TIFF_LE, pdf_bytes

PATTERN = Settings().documents_name_pattern


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def folder(store: SqlMessageStore, tmp_path: Path, inbox: Path) -> WatchedFolder:
    intake = DocumentIntake(store, max_bytes=1024 * 1024, spool_dir=tmp_path / "spool")
    return WatchedFolder(inbox, intake, name_pattern=PATTERN, sidecar_wait_s=0.0)


def _poll(folder: WatchedFolder, times: int = 2) -> None:
    """Poll as ``engine serve`` does every second: a file is taken on the second look."""
    for _ in range(times):
        asyncio.run(folder.poll())


def _documents(store: SqlMessageStore) -> list:  # type: ignore[type-arg]
    with store.db_engine.connect() as conn:
        return list(conn.execute(select(documents).order_by(documents.c.id)))


def _errors(store: SqlMessageStore) -> list:  # type: ignore[type-arg]
    with store.db_engine.connect() as conn:
        return list(conn.execute(select(messages).where(messages.c.state == "error")))


def test_sidecar_says_who_and_what(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    data = pdf_bytes()
    (inbox / "scan-0001.json").write_text(
        json.dumps(
            {
                "mrn": "MRN1001",
                "document_type": "consent",
                "date": "2026-11-30",
                "title": "Consent to treat",
            }
        )
    )
    (inbox / "scan-0001.pdf").write_bytes(data)
    _poll(folder)
    [doc] = _documents(store)
    assert (doc.patient_mrn, doc.document_type, doc.document_date, doc.title) == (
        "MRN1001",
        "consent",
        "2026-11-30",
        "Consent to treat",
    )
    assert (doc.channel, doc.file_name, doc.media_type) == (
        "folder",
        "scan-0001.pdf",
        "application/pdf",
    )
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["scan-0001.json", "scan-0001.pdf"]
    assert sorted(p.name for p in inbox.iterdir()) == ["done"]


def test_yaml_sidecar_named_after_the_whole_file_name(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    (inbox / "fax.tif.yaml").write_text("mrn: MRN2002\ndocument_type: referral\n")
    (inbox / "fax.tif").write_bytes(TIFF_LE)
    _poll(folder)
    [doc] = _documents(store)
    assert (doc.patient_mrn, doc.document_type, doc.media_type) == (
        "MRN2002",
        "referral",
        "image/tiff",
    )


def test_the_file_name_pattern_without_a_sidecar(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    (inbox / "MRN3003_insurance-card_20261201.png").write_bytes(PNG)
    _poll(folder)
    [doc] = _documents(store)
    assert (doc.patient_mrn, doc.document_type, doc.document_date) == (
        "MRN3003",
        "insurance-card",
        "2026-12-01",
    )


def test_a_file_still_growing_is_not_taken(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    path = inbox / "MRN3003_consent_20261201.pdf"
    data = pdf_bytes()
    path.write_bytes(data[:100])
    asyncio.run(folder.poll())
    with path.open("ab") as f:  # the scanner writes on
        f.write(data[100:200])
    asyncio.run(folder.poll())
    assert _documents(store) == [] and path.exists()
    path.write_bytes(data)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    _poll(folder)
    [doc] = _documents(store)
    assert doc.size == len(data)


def test_hidden_and_sidecar_files_alone_are_left(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    (inbox / ".MRN1_consent_20261201.pdf.part").write_bytes(PNG)
    (inbox / "lonely.json").write_text("{}")
    _poll(folder, 3)
    assert _documents(store) == [] and _errors(store) == []
    assert sorted(p.name for p in inbox.iterdir()) == [
        ".MRN1_consent_20261201.pdf.part",
        "lonely.json",
    ]


def test_refused_files_go_to_error_with_their_reason(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    (inbox / "MRN1_consent_20261201.pdf").write_bytes(pdf_bytes(password="pw"))
    (inbox / "MRN1_consent_20261202.docx").write_bytes(b"PK\x03\x04" + bytes(64))
    (inbox / "no-one-knows.pdf").write_bytes(pdf_bytes())
    (inbox / "bad-sidecar.pdf").write_bytes(pdf_bytes())
    (inbox / "bad-sidecar.json").write_text("{not json")
    _poll(folder)
    error = inbox / "error"
    reasons = {
        p.name.removesuffix(".reason.txt"): p.read_text()
        for p in error.iterdir()
        if p.name.endswith(".reason.txt")
    }
    assert set(reasons) == {
        "MRN1_consent_20261201.pdf",
        "MRN1_consent_20261202.docx",
        "no-one-knows.pdf",
        "bad-sidecar.pdf",
    }
    assert reasons["MRN1_consent_20261201.pdf"].startswith("encrypted PDF (password-protected)")
    assert "ZIP" in reasons["MRN1_consent_20261202.docx"]
    assert "no sidecar" in reasons["no-one-knows.pdf"]
    assert "bad-sidecar.json" in reasons["bad-sidecar.pdf"]
    assert "message " in reasons["no-one-knows.pdf"]  # the refusal's record
    assert (error / "bad-sidecar.json").exists() and (error / "no-one-knows.pdf").exists()
    assert len(_errors(store)) == 4 and _documents(store) == []
    assert sorted(p.name for p in inbox.iterdir()) == ["error"]


def test_a_file_written_to_after_it_was_taken_stays_and_is_taken_again(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fax server that pauses longer than the two looks, then writes the next page: what was
    stored is what was read, the first page; the file is not moved to done/ as if it were all
    taken (its later pages were lost that way), and once it is stable again it is taken whole,
    a document of its own."""
    path = inbox / "MRN1_referral_20261201.tif"
    data = TIFF_LE + bytes(range(256)) * 8  # the first page, then the next
    first = len(TIFF_LE)
    path.write_bytes(data[:first])
    accept = folder.intake.accept_file

    async def then_the_next_page(*args: object, **kwargs: object) -> object:
        accepted = await accept(*args, **kwargs)  # type: ignore[arg-type]
        with path.open("ab") as f:
            f.write(data[first:])
        return accepted

    monkeypatch.setattr(folder.intake, "accept_file", then_the_next_page)
    _poll(folder)
    monkeypatch.undo()
    assert [d.size for d in _documents(store)] == [first]
    assert path.exists() and not (inbox / "done").exists()
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    _poll(folder, 3)  # not at its writer's next pause: a minute later
    assert [d.size for d in _documents(store)] == [first]
    folder._retry_at[path.name] = 0.0  # the minute has passed
    _poll(folder)
    assert [d.size for d in _documents(store)] == [first, len(data)]
    assert not path.exists()
    assert [p.name for p in (inbox / "done").iterdir()] == [path.name]


def test_a_file_removed_once_taken_has_its_sidecar_moved_all_the_same(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = inbox / "scan-7.png"
    path.write_bytes(PNG)
    sidecar = inbox / "scan-7.png.json"
    sidecar.write_text(json.dumps({"mrn": "MRN7", "type": "consent", "date": "2026-12-01"}))
    accept = folder.intake.accept_file

    async def then_removed(*args: object, **kwargs: object) -> object:
        accepted = await accept(*args, **kwargs)  # type: ignore[arg-type]
        path.unlink()  # someone tidying the inbox by hand
        return accepted

    monkeypatch.setattr(folder.intake, "accept_file", then_removed)
    _poll(folder)
    assert len(_documents(store)) == 1
    assert not sidecar.exists()
    assert [p.name for p in (inbox / "done").iterdir()] == [sidecar.name]


def test_a_file_taken_again_after_a_crash_is_stored_once(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore, tmp_path: Path
) -> None:
    path = inbox / "MRN1_consent_20261201.pdf"
    data = pdf_bytes()
    path.write_bytes(data)
    _poll(folder)
    # the crash: committed, but the file was never moved (put it back as it was)
    os.replace(inbox / "done" / path.name, path)
    intake = DocumentIntake(store, max_bytes=1024 * 1024, spool_dir=tmp_path / "spool")
    restarted = WatchedFolder(inbox, intake, name_pattern=PATTERN, sidecar_wait_s=0.0)
    _poll(restarted)
    assert len(_documents(store)) == 1
    assert not path.exists()
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["MRN1_consent_20261201.pdf"]


def test_a_failing_store_leaves_the_file_to_try_again(
    inbox: Path, store: SqlMessageStore, tmp_path: Path
) -> None:
    class Broken:
        def store_document(self, *args: object, **kwargs: object) -> object:
            raise ConnectionError("database down")

        def refuse_document(self, *args: object, **kwargs: object) -> int:
            raise ConnectionError("database down")

    intake = DocumentIntake(Broken(), max_bytes=1024 * 1024, spool_dir=tmp_path / "spool")  # type: ignore[arg-type]
    folder = WatchedFolder(inbox, intake, name_pattern=PATTERN, sidecar_wait_s=0.0)
    path = inbox / "MRN1_consent_20261201.png"
    path.write_bytes(PNG)
    (inbox / "junk.docx").write_bytes(b"PK\x03\x04")
    _poll(folder, 3)
    assert path.exists() and (inbox / "junk.docx").exists()
    assert not (inbox / "error").exists() or list((inbox / "error").iterdir()) == []


def test_runs_until_stopped(folder: WatchedFolder, inbox: Path, store: SqlMessageStore) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(folder.run(stop, poll_s=0.05))
        (inbox / "MRN1_consent_20261201.png").write_bytes(PNG)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if (inbox / "done").exists():
                break
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert len(_documents(store)) == 1


def test_a_sidecar_written_after_its_document_is_waited_for(
    store: SqlMessageStore, tmp_path: Path, inbox: Path
) -> None:
    intake = DocumentIntake(store, max_bytes=1024 * 1024, spool_dir=tmp_path / "spool")
    folder = WatchedFolder(inbox, intake, name_pattern=PATTERN, sidecar_wait_s=60.0)
    (inbox / "scan-9.png").write_bytes(PNG)
    _poll(folder, 3)
    assert _documents(store) == [] and _errors(store) == []
    (inbox / "scan-9.json").write_text('{"mrn": "MRN9", "type": "consent"}')
    _poll(folder)  # the sidecar too is read on its second look, once it has stopped changing
    [doc] = _documents(store)
    assert (doc.patient_mrn, doc.document_type) == ("MRN9", "consent")


def test_a_file_over_the_cap_goes_to_error(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    (inbox / "MRN1_consent_20261201.png").write_bytes(PNG + bytes(1024 * 1024))
    _poll(folder)
    reason = (inbox / "error" / "MRN1_consent_20261201.png.reason.txt").read_text()
    assert "1048576-byte limit (ENGINE_MAX_DOCUMENT_BYTES)" in reason
    [msg] = _errors(store)
    assert msg.channel == "folder" and _documents(store) == []


def test_done_is_swept_of_files_past_retention(folder: WatchedFolder, inbox: Path) -> None:
    done = inbox / "done"
    done.mkdir()
    old, new = done / "old.pdf", done / "new.pdf"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    long_ago = time.time() - 31 * 86400
    os.utime(old, (long_ago, long_ago))
    assert folder.sweep_done(30) == 1
    assert sorted(p.name for p in done.iterdir()) == ["new.pdf"]


def test_a_yaml_sidecar_keeps_every_value_as_written(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    """YAML 1.1 reads 0012345 as an octal number (5349) and 12:34:56 as seconds: an MRN must
    stay the text the scanner wrote, or the document goes to another patient."""
    (inbox / "scan-1.yaml").write_text(
        "mrn: 0012345\ndocument_type: consent\ndate: 2026-11-30\nappointment: 12:34:56\n"
    )
    (inbox / "scan-1.pdf").write_bytes(pdf_bytes())
    _poll(folder)
    [doc] = _documents(store)
    assert (doc.patient_mrn, doc.appointment, doc.document_date) == (
        "0012345",
        "12:34:56",
        "2026-11-30",
    )


def test_a_sidecar_value_that_is_not_a_single_value_is_refused_at_once(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    """A 400-byte YAML of nested aliases (billion laughs) is refused naming the key, without
    expanding it (which took 10 s and 400 MB and stalled the folder)."""
    levels = ["title: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for key, (ref, anchor) in zip(
        ["author", "encounter", "department", "practice", "appointment", "authority", "mrn"],
        zip("abcdefg", "bcdefgh", strict=True),
        strict=True,
    ):
        levels.append(f"{key}: &{anchor} [{', '.join(['*' + ref] * 9)}]")
    (inbox / "scan-6.yaml").write_text("\n".join([*levels, "document_type: consent", ""]))
    (inbox / "scan-6.pdf").write_bytes(pdf_bytes())
    (inbox / "scan-7.json").write_text(json.dumps({"mrn": ["MRN1", "MRN2"], "type": "consent"}))
    (inbox / "scan-7.pdf").write_bytes(pdf_bytes(2))
    started = time.monotonic()
    _poll(folder)
    assert time.monotonic() - started < 5
    error = inbox / "error"
    for name in ("scan-6", "scan-7"):
        reason = (error / f"{name}.pdf.reason.txt").read_text()
        assert "is not a single value" in reason, reason
    assert "mrn" in (error / "scan-7.pdf.reason.txt").read_text()
    assert _documents(store) == [] and len(_errors(store)) == 2


def test_one_file_that_fails_does_not_stop_the_others(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error on one file (here: out of memory reading it) is logged and the
    file left to try again later; the files after it are still taken."""
    accept_file = folder.intake.accept_file

    async def failing(path: Path, *args: object, **kwargs: object) -> object:
        if path.name.startswith("MRN1_"):
            raise MemoryError
        return await accept_file(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(folder.intake, "accept_file", failing)
    (inbox / "MRN1_consent_20261201.png").write_bytes(PNG)
    (inbox / "MRN2_consent_20261201.png").write_bytes(PNG + b"2")
    _poll(folder)
    [doc] = _documents(store)
    assert doc.patient_mrn == "MRN2"
    assert (inbox / "MRN1_consent_20261201.png").exists()


def test_a_file_name_that_is_not_utf8_is_refused_under_a_safe_name(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    """A name the store cannot hold (bytes that are not UTF-8) is refused and recorded, and
    the file moved to error/ under a name with those bytes replaced (it stayed in the inbox,
    unrecorded and unlogged, taken for "a file that changed" at every poll)."""
    raw_name = b"MRN1001_consent_20261201_\xff.pdf"
    with open(os.path.join(os.fsencode(inbox), raw_name), "wb") as f:
        f.write(pdf_bytes())
    (inbox / "MRN1002_consent_20261201.pdf").write_bytes(pdf_bytes(2))
    _poll(folder, 3)
    assert sorted(os.listdir(os.fsencode(inbox))) == [b"done", b"error"]
    error = sorted(os.listdir(inbox / "error"))
    assert error == ["MRN1001_consent_20261201__.pdf", "MRN1001_consent_20261201__.pdf.reason.txt"]
    reason = (inbox / "error" / error[1]).read_text()
    assert "not UTF-8" in reason
    [refusal] = _errors(store)
    assert "not UTF-8" in refusal.reason
    [doc] = _documents(store)
    assert doc.patient_mrn == "MRN1002"


def test_a_sidecar_still_being_written_is_waited_for(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    """The sidecar must be stable too: an empty one just created is not read yet."""
    (inbox / "scan-3.pdf").write_bytes(pdf_bytes())
    _poll(folder, 1)
    sidecar = inbox / "scan-3.json"
    sidecar.write_text("")  # the scanner opened it and has not written it yet
    _poll(folder, 1)
    assert _errors(store) == [] and (inbox / "scan-3.pdf").exists()
    sidecar.write_text(json.dumps({"mrn": "MRN3", "type": "consent"}))
    os.utime(sidecar, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    _poll(folder, 2)
    [doc] = _documents(store)
    assert doc.patient_mrn == "MRN3" and _errors(store) == []


def test_a_sidecar_named_by_a_stem_two_documents_share_is_nobodys(
    folder: WatchedFolder, inbox: Path, store: SqlMessageStore
) -> None:
    """scan-2.json beside scan-2.pdf and scan-2.png: which one it describes cannot be told, so
    neither takes it (the png took it, and the pdf was refused)."""
    (inbox / "scan-2.json").write_text(json.dumps({"mrn": "MRN1", "type": "consent"}))
    (inbox / "scan-2.pdf").write_bytes(pdf_bytes())
    (inbox / "scan-2.png").write_bytes(PNG)
    _poll(folder, 3)
    assert _documents(store) == []
    reasons = [p.read_text() for p in (inbox / "error").glob("*.reason.txt")]
    assert len(reasons) == 2
    assert any("scan-2.json" in r and "scan-2.pdf.json" in r for r in reasons), reasons
