"""The file drop destination: atomic writes, names by message, redelivery overwrites."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.files import FileDropDestination, file_name
from engine.adapters.registry import build_destination
from engine.routes.spec import DestinationSpec


def payload(
    body: bytes, *, message_id: int = 12, kind: str = "hl7v2", dest: str = "drop"
) -> Payload:
    return Payload(
        message_id=message_id,
        destination=dest,
        kind=kind,  # type: ignore[arg-type]
        body=body,
        content_type="application/octet-stream",
        idempotency_key=f"{message_id}:{dest}",
        control_id="C1",
    )


def destination(directory: Path) -> FileDropDestination:
    dest = build_destination(
        "drop", DestinationSpec.model_validate({"type": "file", "directory": str(directory)})
    )
    assert isinstance(dest, FileDropDestination)
    return dest


def deliver(dest: FileDropDestination, p: Payload) -> DeliveryResult:
    return asyncio.run(dest.deliver(p))


def test_names_by_message_destination_and_kind() -> None:
    assert file_name(payload(b"", kind="hl7v2")) == "12-drop.hl7"
    assert file_name(payload(b"", kind="fhir-bundle", message_id=3)) == "3-drop.json"
    assert file_name(payload(b"", dest="../etc/pass wd")) == "12-.._etc_pass_wd.hl7"


def test_writes_creates_the_directory_and_redelivery_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "outbox" / "adt"
    dest = destination(out)
    first = deliver(dest, payload(b"MSH|first"))
    assert first == DeliveryResult(True, False, "file: wrote 12-drop.hl7 (9 bytes)")
    assert deliver(dest, payload(b"MSH|second")).ok
    assert deliver(dest, payload(b"{}", kind="fhir-bundle", message_id=13)).ok
    assert sorted(p.name for p in out.iterdir()) == ["12-drop.hl7", "13-drop.json"]
    assert (out / "12-drop.hl7").read_bytes() == b"MSH|second"
    asyncio.run(dest.close())


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = destination(tmp_path)
    assert deliver(dest, payload(b"old")).ok

    def broken(src: str, dst: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", broken)
    result = deliver(dest, payload(b"new"))
    assert result == DeliveryResult(False, True, "file: EIO")
    assert [p.name for p in tmp_path.iterdir()] == ["12-drop.hl7"]
    assert (tmp_path / "12-drop.hl7").read_bytes() == b"old"


@pytest.mark.parametrize(
    ("err", "retryable"),
    [(errno.ENOSPC, True), (errno.EACCES, False), (errno.EROFS, False)],
)
def test_error_classification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, retryable: bool
) -> None:
    def broken(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr("engine.adapters.files.tempfile.mkstemp", broken)
    result = deliver(destination(tmp_path), payload(b"x"))
    assert (result.ok, result.retryable) == (False, retryable)
    assert result.detail == f"file: {errno.errorcode[err]}"


def test_a_path_in_the_way_is_permanent(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    result = deliver(destination(tmp_path / "taken"), payload(b"x"))
    assert (result.ok, result.retryable) == (False, False)


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    dest = destination(tmp_path)
    bodies = [bytes([65 + i]) * 300_000 for i in range(4)]
    target = tmp_path / "12-drop.hl7"
    deliver(dest, payload(bodies[0]))
    seen: set[bytes] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.add(target.read_bytes())

    reader = threading.Thread(target=poll)
    reader.start()
    try:

        async def write_many() -> None:
            for n in range(24):
                assert (await dest.deliver(payload(bodies[n % 4]))).ok

        asyncio.run(write_many())
    finally:
        stop.set()
        reader.join()
    assert seen <= set(bodies) and len(seen) > 1
    assert [p.name for p in tmp_path.iterdir()] == ["12-drop.hl7"]
