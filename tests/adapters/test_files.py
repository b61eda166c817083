"""The file drop destination: atomic writes, names by engine and message, never replacing a file
(a redelivery finds its file; two engines writing into one folder never collide)."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.adapters import files as files_module
from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.files import FileDropDestination, engine_tag, file_name
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


def test_names_by_message_destination_engine_and_kind() -> None:
    tag = engine_tag()
    assert file_name(payload(b"", kind="hl7v2")) == f"12-drop-{tag}.hl7"
    assert file_name(payload(b"", kind="fhir-bundle", message_id=3)) == f"3-drop-{tag}.json"
    assert file_name(payload(b"", dest="../etc/pass wd")) == f"12-.._etc_pass_wd-{tag}.hl7"


def test_the_engine_tag_differs_between_homes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "a"))
    a = engine_tag()
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "b"))
    assert engine_tag() != a and len(a) == 8


def test_a_relative_folder_is_the_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    monkeypatch.chdir("/")
    assert destination(Path("var/outbox")).directory == tmp_path / "var" / "outbox"


def test_writes_creates_the_directory_and_redelivery_keeps_the_first_file(tmp_path: Path) -> None:
    out = tmp_path / "outbox" / "adt"
    dest = destination(out)
    name = file_name(payload(b""))
    first = deliver(dest, payload(b"MSH|first"))
    assert first == DeliveryResult(True, False, f"file: wrote {name} (9 bytes)")
    again = deliver(dest, payload(b"MSH|second"))
    assert again == DeliveryResult(True, False, f"file: {name} exists (delivered before)")
    assert deliver(dest, payload(b"{}", kind="fhir-bundle", message_id=13)).ok
    json_name = file_name(payload(b"", kind="fhir-bundle", message_id=13))
    assert sorted(p.name for p in out.iterdir()) == sorted([name, json_name])
    assert (out / name).read_bytes() == b"MSH|first"  # never replaced
    asyncio.run(dest.close())


_WRITER = """
import asyncio, sys
from pathlib import Path
from engine.adapters.destination import Payload
from engine.adapters.files import FileDestination, FileDropDestination

dest = FileDropDestination("drop", FileDestination(directory=Path(sys.argv[1])))
who = sys.argv[2].encode()

async def main() -> None:
    for n in range(1, 201):
        body = b"MSH|" + who + b"|" + str(n).encode() * 2000
        p = Payload(n, "drop", "hl7v2", body, "x-application/hl7-v2+er7", f"{n}-drop", "C")
        assert (await dest.deliver(p)).ok

asyncio.run(main())
"""


def test_two_engines_writing_one_folder_never_collide(tmp_path: Path) -> None:
    """Two engine processes (two homes, so two stores whose message ids both start at 1) write
    the same ids into one folder at the same time: every file of each is there, whole."""
    out = tmp_path / "shared-outbox"
    procs = []
    for who in ("alpha", "bravo"):
        home = tmp_path / who
        home.mkdir()
        env = {**os.environ, "ENGINE_HOME": str(home)}
        procs.append(subprocess.Popen([sys.executable, "-c", _WRITER, str(out), who], env=env))
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    files = [p for p in out.iterdir()]
    assert not [p for p in files if p.name.startswith(".")]  # no temporary file left
    assert len(files) == 400
    by_writer: dict[bytes, int] = {}
    for f in files:
        body = f.read_bytes()
        who, n = body.split(b"|")[1], f.name.split("-")[0]
        assert body == b"MSH|" + who + b"|" + n.encode() * 2000
        by_writer[who] = by_writer.get(who, 0) + 1
    assert by_writer == {b"alpha": 200, b"bravo": 200}


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = destination(tmp_path)
    assert deliver(dest, payload(b"old")).ok

    def broken(src: str, dst: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "link", broken)
    result = deliver(dest, payload(b"new", message_id=13))
    assert result == DeliveryResult(False, True, "file: EIO")
    assert [p.name for p in tmp_path.iterdir()] == [file_name(payload(b""))]
    assert (tmp_path / file_name(payload(b""))).read_bytes() == b"old"


@pytest.mark.parametrize(
    ("err", "retryable"),
    [(errno.ENOSPC, True), (errno.EACCES, False), (errno.EROFS, False)],
)
def test_error_classification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, retryable: bool
) -> None:
    def broken(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr("engine.adapters.files._open_new", broken)
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
    seen: set[bytes] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for path in tmp_path.iterdir():
                if not path.name.startswith("."):  # temporary files are skipped, as documented
                    seen.add(path.read_bytes())

    reader = threading.Thread(target=poll)
    reader.start()
    try:

        async def write_many() -> None:
            for n in range(24):
                assert (await dest.deliver(payload(bodies[n % 4], message_id=n))).ok

        asyncio.run(write_many())
    finally:
        stop.set()
        reader.join()
    assert seen <= set(bodies) and len(seen) > 1
    assert len(list(tmp_path.iterdir())) == 24


def test_the_first_delivery_removes_its_destinations_leftover_temporary_files(
    tmp_path: Path,
) -> None:
    """A kill between the link and the unlink leaves ``.<name>.<random>.tmp``: the first
    delivery in a process removes this destination's own that are over an hour old, and leaves
    a fresh one (another node's write in progress), another destination's and other files."""
    dest = destination(tmp_path)
    tag = engine_tag()
    stale = tmp_path / f".7-drop-{tag}.hl7.ab12cd34.tmp"
    stale_doc = tmp_path / f".8-drop-{tag}.meta.json.zz99yy88.tmp"
    fresh = tmp_path / f".9-drop-{tag}.hl7.ef56gh78.tmp"
    other_dest = tmp_path / f".7-other-{tag}.hl7.ab12cd34.tmp"
    other_tag = tmp_path / ".7-drop-00000000.hl7.ab12cd34.tmp"
    mine = tmp_path / ".keep.tmp"
    for f in (stale, stale_doc, fresh, other_dest, other_tag, mine):
        f.write_bytes(b"partial")
    hour_ago = os.stat(fresh).st_mtime - 3700
    for f in (stale, stale_doc, other_dest, other_tag, mine):
        os.utime(f, (hour_ago, hour_ago))
    assert asyncio.run(dest.deliver(payload(b"MSH|1"))).ok
    assert not stale.exists() and not stale_doc.exists()
    assert fresh.exists() and other_dest.exists() and other_tag.exists() and mine.exists()
    # once per process: a leftover made later stays until the next start
    stale.write_bytes(b"partial")
    os.utime(stale, (hour_ago, hour_ago))
    asyncio.run(dest.deliver(payload(b"MSH|2", message_id=13)))
    assert stale.exists()


def test_one_directory_fsync_serves_the_files_linked_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty deliveries at once share fewer directory fsyncs than files, and none returns
    before an fsync that began after its file was linked has finished."""
    import time

    from engine.adapters import files

    done: list[set[str]] = []

    def slow_sync(directory: Path) -> None:
        linked = {p.name for p in directory.iterdir() if not p.name.startswith(".")}
        time.sleep(0.02)  # an fsync takes a while: the next writes link meanwhile
        done.append(linked)

    monkeypatch.setattr(files, "_sync_directory", slow_sync)
    dest = destination(tmp_path)
    uncovered: list[str] = []

    async def one(i: int) -> None:
        p = payload(b"MSH|^~\\&|x\r", message_id=i)
        result = await dest.deliver(p)
        assert result.ok, result.detail
        durable = set().union(*done)
        if file_name(p) not in durable:
            uncovered.append(file_name(p))

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(1, 41)))

    asyncio.run(main())
    assert uncovered == []
    assert len(list(tmp_path.glob("*.hl7"))) == 40
    assert 1 <= len(done) <= 20, len(done)  # shared: 40 in flight, far fewer syncs


def test_a_failed_directory_fsync_fails_its_delivery_and_the_next_one_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.adapters import files

    calls: list[int] = []

    def flaky(directory: Path) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files, "_sync_directory", flaky)
    dest = destination(tmp_path)
    first = deliver(dest, payload(b"a", message_id=1))
    assert not first.ok and first.detail == "file: EIO"
    again = deliver(dest, payload(b"a", message_id=1))  # the file is there: synced, then done
    assert again.ok and "exists" in (again.detail or "")
    assert len(calls) == 2


def test_a_batch_is_written_whole_its_folder_synced_once_and_found_when_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher's batch (deliver_batch): every file written, split among the threads,
    one sync of the folder after the last link, each result in order; sent again (a node
    died before recording them), each is found, never written twice."""
    from engine.adapters import files

    synced: list[set[str]] = []
    monkeypatch.setattr(
        files, "_sync_directory", lambda d: synced.append({p.name for p in d.iterdir()})
    )
    dest = destination(tmp_path / "drop")  # made by the batch
    batch = [payload(f"MSH|{i}".encode(), message_id=i) for i in range(1, 41)]
    results = asyncio.run(dest.deliver_batch(batch))
    names = [file_name(p) for p in batch]
    assert [r.detail for r in results] == [
        f"file: wrote {n} ({len(p.body)} bytes)" for n, p in zip(names, batch, strict=True)
    ]
    assert len(synced) == 1 and set(names) <= synced[0]  # once, after every link
    assert all(
        (tmp_path / "drop" / n).read_bytes() == p.body for n, p in zip(names, batch, strict=True)
    )
    assert not [p for p in (tmp_path / "drop").iterdir() if p.name.endswith(".tmp")]
    again = asyncio.run(dest.deliver_batch(batch))
    assert all(r.ok and "exists (delivered before)" in r.detail for r in again)


@pytest.mark.parametrize("synced", [False, True])
def test_a_file_that_fails_in_a_batch_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced: bool
) -> None:
    """One file's write failing (a full disk) and another's link (permission): each error is
    its own, with one syncfs for the batch or an fsync a file (no syncfs, or it was slow)."""
    from engine.adapters import files

    if synced and not (files._SYNCFS and files._UNNAMED):
        pytest.skip("Linux's syncfs and unnamed files")
    monkeypatch.setattr(files, "_batch_syncs", lambda directory: synced)
    real_write, real_link = files._write_all, os.link

    def write(fd: int, body: bytes) -> None:
        if body == b"2":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, body)

    def link(src: str, dst: str, **kwargs: object) -> None:
        if os.path.basename(dst).startswith("3-"):
            raise OSError(errno.EACCES, "Permission denied")
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "_write_all", write)
    monkeypatch.setattr(files.os, "link", link)
    batch = [payload(str(i).encode(), message_id=i) for i in (1, 2, 3, 4)]
    results = asyncio.run(destination(tmp_path).deliver_batch(batch))
    assert [(r.ok, r.retryable, r.detail[:14]) for r in results] == [
        (True, False, "file: wrote 1-"),
        (False, True, "file: ENOSPC"),
        (False, False, "file: EACCES"),
        (True, False, "file: wrote 4-"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        file_name(payload(b"", message_id=i)) for i in (1, 4)
    )


@pytest.mark.parametrize("which", ["_sync_directory", "_SYNCFS"])
def test_a_failed_sync_fails_the_whole_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """The folder's fsync failing: written, but their names not known durable, none is reported
    delivered. The batch's syncfs failing: none is named at all (the unnamed files are freed)."""
    from engine.adapters import files

    if which == "_SYNCFS" and not (files._SYNCFS and files._UNNAMED):
        pytest.skip("Linux's syncfs and unnamed files")

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files, which, broken)
    batch = [payload(b"x", message_id=i) for i in (1, 2, 3)]
    results = asyncio.run(destination(tmp_path).deliver_batch(batch))
    assert results == [DeliveryResult(False, True, "file: EIO")] * 3
    if which == "_SYNCFS":
        assert list(tmp_path.iterdir()) == []


def test_a_document_in_a_batch_is_written_as_deliver_writes_it(tmp_path: Path) -> None:
    from tests.adapters.test_files_store_tag import document, hl7

    dest = destination(tmp_path)
    results = asyncio.run(dest.deliver_batch([hl7(7), document(8), hl7(9)]))
    assert [r.ok for r in results] == [True, True, True]
    assert "bytes)" in results[1].detail and results[1].detail.endswith(".pdf (25 bytes)")
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".hl7", ".hl7", ".json", ".pdf"]  # the sidecar is .meta.json


def test_a_batch_is_split_among_the_threads_at_least_eight_files_each() -> None:
    from engine.adapters.files import _chunks

    assert [len(c) for c in _chunks(list(range(40)), 8, 8)] == [8, 8, 8, 8, 8]
    assert [len(c) for c in _chunks(list(range(100)), 8, 8)] == [13] * 7 + [9]
    assert [len(c) for c in _chunks(list(range(5)), 8, 8)] == [5]
    assert _chunks(list(range(17)), 8, 8) == [list(range(9)), list(range(9, 17))]


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="Linux's unnamed files")
def test_a_file_is_written_unnamed_then_linked_with_no_temporary_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the file system has unnamed files no temporary name is made at all (mkstemp is
    never called), and the file is the engine's alone to read (0600), as a temporary one was."""
    from engine.adapters import files

    def no_temporary_files(*args: object, **kwargs: object) -> tuple[int, str]:
        raise AssertionError("a temporary name was made")

    monkeypatch.setattr(files.tempfile, "mkstemp", no_temporary_files)
    dest = destination(tmp_path)
    assert deliver(dest, payload(b"MSH|1")).ok
    target = tmp_path / file_name(payload(b""))
    assert target.read_bytes() == b"MSH|1" and target.stat().st_mode & 0o777 == 0o600
    again = deliver(dest, payload(b"MSH|2"))  # the name is taken: found, never replaced
    assert again.ok and "exists (delivered before)" in again.detail
    assert target.read_bytes() == b"MSH|1" and [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="Linux's unnamed files")
def test_a_file_system_without_unnamed_files_gets_temporary_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses O_TMPFILE (EOPNOTSUPP: some network ones) is asked once; its
    files are written through dot-named temporary files, none left behind."""
    from engine.adapters import files

    real_open = os.open
    refused: list[str] = []

    def no_unnamed(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            refused.append(str(path))
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "open", no_unnamed)
    monkeypatch.setattr(files, "_NO_UNNAMED", set())
    dest = destination(tmp_path)
    results = asyncio.run(dest.deliver_batch([payload(b"MSH|x", message_id=i) for i in (1, 2, 3)]))
    assert all(r.ok for r in results)
    assert refused == [str(tmp_path)]  # asked once, remembered for the folder
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(file_name(payload(b"", message_id=i)) for i in (1, 2, 3))
    assert all((tmp_path / n).stat().st_mode & 0o777 == 0o600 for n in names)


def test_an_unexpected_error_of_an_unnamed_file_is_not_taken_for_no_support(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only "not supported" answers switch a folder to temporary files; a full disk is the
    delivery's error (retryable), and the folder keeps unnamed files."""
    from engine.adapters import files

    if not files._UNNAMED:
        pytest.skip("no unnamed files here")
    real_open = os.open

    def full(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "open", full)
    monkeypatch.setattr(files, "_NO_UNNAMED", set())
    result = deliver(destination(tmp_path), payload(b"x"))
    assert (result.ok, result.retryable, result.detail) == (False, True, "file: ENOSPC")
    assert files._NO_UNNAMED == set() and list(tmp_path.iterdir()) == []


needs_syncfs = pytest.mark.skipif(
    not (files_module._SYNCFS and files_module._UNNAMED), reason="Linux's syncfs and unnamed files"
)


@needs_syncfs
def test_a_batch_is_flushed_by_one_syncfs_before_any_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No file of the batch is fsynced on its own (the only fsync is the folder's, after the
    links); one syncfs a group of SYNC_GROUP files, each run while none of its group's names
    exists yet: a name never points at a file not yet on disk."""
    from engine.adapters import files

    real_syncfs = files._SYNCFS
    assert real_syncfs is not None
    seen: list[list[str]] = []

    def syncfs(fd: int) -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        real_syncfs(fd)

    fsynced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(files, "_SYNCFS", syncfs)
    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files, "SYNC_GROUP", 3)
    batch = [payload(f"MSH|{i}".encode(), message_id=i) for i in range(1, 8)]
    results = asyncio.run(destination(tmp_path).deliver_batch(batch))
    assert all(r.ok and r.detail.startswith("file: wrote") for r in results)
    names = [file_name(p) for p in batch]
    assert seen == [[], sorted(names[:3]), sorted(names[:6])]  # groups of 3, 3 and 1
    assert len(fsynced) == 1  # the folder's, once
    assert all((tmp_path / n).read_bytes() == p.body for n, p in zip(names, batch, strict=True))
    assert all((tmp_path / n).stat().st_mode & 0o777 == 0o600 for n in names)
    again = asyncio.run(destination(tmp_path).deliver_batch(batch))
    assert all(r.ok and "exists (delivered before)" in r.detail for r in again)


@needs_syncfs
def test_a_slow_syncfs_sends_the_folder_back_to_an_fsync_a_file_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system busy with others' data (a backup) makes every syncfs wait for all of it:
    once one is slow, the folder's batches fsync each file until the hold runs out."""
    from engine.adapters import files

    calls: list[str] = []
    real_syncfs, real_each = files._SYNCFS, files._write_each
    assert real_syncfs is not None
    clock = [1000.0]

    def slow(fd: int) -> None:
        calls.append("syncfs")
        clock[0] += files.SLOW_SYNCFS_S + 0.1
        real_syncfs(fd)

    def each(directory: Path, todo: list[tuple[str, bytes]]) -> list[bool | OSError]:
        calls.append("each")
        return real_each(directory, todo)

    monkeypatch.setattr(files, "_SYNCFS", slow)
    monkeypatch.setattr(files, "_write_each", each)
    monkeypatch.setattr(files, "_SYNCFS_SLOW", {})
    monkeypatch.setattr(files.time, "monotonic", lambda: clock[0])
    dest = destination(tmp_path)

    def batch(first: int) -> None:
        todo = [payload(b"x", message_id=i) for i in range(first, first + 20)]
        assert all(r.ok for r in asyncio.run(dest.deliver_batch(todo)))

    batch(1)
    assert calls == ["syncfs"]
    batch(21)  # held: an fsync a file, split among the threads
    assert calls[1:] and set(calls[1:]) == {"each"}
    clock[0] += files.SLOW_SYNCFS_HOLD_S
    calls.clear()
    batch(41)
    assert calls == ["syncfs"]
