"""Ingest with several group commits in flight (``ENGINE_INGEST_WRITERS``, PostgreSQL): they
overlap, and a message resent while its first copy's batch is still committing is stored once."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event

from engine.flow.ingest import Ingest, Receipt
from engine.store import Incoming, SqlMessageStore, Stored

CLOCK = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
ADT = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20261207010000||ADT^A08|CTRL-{n}|P|2.5.1\r"
    "PID|1||MRN{n}^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
)


def adt(n: int) -> bytes:
    return ADT.format(n=n).encode()


@pytest.mark.parametrize("writers", [1, 2])
def test_as_many_batches_in_flight_as_writers(store: SqlMessageStore, writers: int) -> None:
    """Each save waits (up to 1 s) for a second one to start: with two writers one does,
    with one writer none can."""
    inside = 0
    most = 0
    guard = threading.Lock()
    other_started = threading.Event()
    real = store.save_batch

    def slow(items: list[Incoming]) -> list[Stored]:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
            if inside > 1:
                other_started.set()
        other_started.wait(1.0)
        try:
            return real(items)
        finally:
            with guard:
                inside -= 1

    store.save_batch = slow  # type: ignore[method-assign]

    async def run() -> list[Receipt]:
        ing = Ingest(store, identity=("ENGINE", "HUB"), clock=lambda: CLOCK, writers=writers)
        await ing.start()
        try:
            first = asyncio.ensure_future(ing.receive(adt(1), channel="mllp"))
            await asyncio.sleep(0.1)  # the first writer holds message 1's batch
            second = asyncio.ensure_future(ing.receive(adt(2), channel="mllp"))
            return [await first, await second]
        finally:
            await ing.stop()

    receipts = asyncio.run(run())
    assert [r.ack_code for r in receipts] == ["AA", "AA"]
    assert most == writers
    # two connections' messages in flight together: either may take the lower id
    assert len({r.message_id for r in receipts} - {None}) == 2
    assert len(store.list(limit=10)) == 2


def test_a_resend_while_its_first_copy_commits_is_stored_once(
    store: SqlMessageStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Message 5 is sent, and sent again while the first copy's batch is held before its
    commit: the second batch cannot see it yet. Both are answered AA with one id, one row is
    stored, in two saves (no batch failed and was stored again one by one): on PostgreSQL the
    second insert waits for the first's commit and skips the key, then finds it stored."""
    db = store.db_engine
    saves: list[int] = []
    real = store.save_batch

    def counted(items: list[Incoming]) -> list[Stored]:
        saves.append(len(items))
        return real(items)

    store.save_batch = counted  # type: ignore[method-assign]
    in_commit = threading.Event()
    resent = threading.Event()
    held: list[bool] = []

    def before_commit(conn: object) -> None:
        if not held:  # the first commit only: message 5's first copy
            held.append(True)
            in_commit.set()
            resent.wait(5.0)
            time.sleep(0.5)  # the second batch reaches its insert meanwhile

    event.listen(db, "commit", before_commit)

    async def run() -> list[Receipt]:
        ing = Ingest(store, identity=("ENGINE", "HUB"), clock=lambda: CLOCK, writers=2)
        await ing.start()
        try:
            first = asyncio.ensure_future(ing.receive(adt(5), channel="mllp"))
            await asyncio.to_thread(in_commit.wait, 5.0)
            second = asyncio.ensure_future(ing.receive(adt(5), channel="mllp"))
            await asyncio.sleep(0.05)
            resent.set()
            return [await first, await second]
        finally:
            await ing.stop()

    caplog.set_level(logging.WARNING, logger="engine.flow.ingest")
    try:
        receipts = asyncio.run(run())
    finally:
        event.remove(db, "commit", before_commit)
    assert in_commit.is_set()
    assert [r.ack_code for r in receipts] == ["AA", "AA"]
    assert receipts[0].message_id == receipts[1].message_id
    assert not receipts[0].duplicate and receipts[1].duplicate
    assert len(store.list(limit=10)) == 1
    assert saves == [1, 1]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


_WRITERS_OF = """
import sys
from pathlib import Path
from engine.service import Engine
from engine.settings import load_settings

url = sys.argv[1]
settings = load_settings(home=Path.cwd(), workers=False, ingest_writers=3, **(
    {"database_url": url} if url else {}))
print(Engine(settings).ingest.writers)
"""


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_the_setting_reaches_the_receiver_on_postgresql_only(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``ENGINE_INGEST_WRITERS`` on PostgreSQL; SQLite has one writer whatever it says. In a
    process of its own (the engine's metrics switch a process to multiprocess mode)."""
    url = request.getfixturevalue("postgres_schema_url") if backend == "postgresql" else ""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    proc = subprocess.run(
        [sys.executable, "-c", _WRITERS_OF, url],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == (["3"] if backend == "postgresql" else ["1"])
