"""A long reader on SQLite (``engine backup`` copies the database in one read transaction for
minutes, a long export) holds the write-ahead log: no RESTART checkpoint can complete until it
ends, and each try holds the writers for up to RESTART_WAIT_MS. The checkpointer spaces its
tries out while they fail, so the writers are not stalled every second for the whole backup,
and tries again as soon as the reader has let go."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event

from engine.store import Incoming, SqlMessageStore, create_db_engine, repository


class FakeClock:
    """``time.monotonic`` for the store's module, moved on by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _frames(conn: Connection) -> tuple[int, int]:
    """The log's frames in use and those copied into the database (a PASSIVE checkpoint)."""
    _, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
    return int(frames), int(copied)


def test_a_long_reader_does_not_make_every_checkpoint_hold_the_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(repository, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(repository, "WAL_LIMIT_BYTES", 20_000)
    db = create_db_engine(f"sqlite:///{tmp_path / 'e.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    restarts: list[str] = []

    @event.listens_for(db, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "wal_checkpoint(RESTART)" in statement:
            restarts.append(statement)  # each one under the writers' lock, up to 100 ms

    def write(i: int) -> None:
        store.save_batch([Incoming(raw=b"x" * 5000 + str(i).encode(), channel="test")])

    for i in range(10):
        write(i)
    with db.connect() as backup:  # one read transaction on a snapshot in the log, held
        backup.exec_driver_sql("SELECT count(*) FROM messages").all()  # (BEGIN, deferred)
        for i in range(30):  # 30 s of steady writes, the checkpointer's round every second
            write(100 + i)
            clock.now += 1.0
            store.checkpoint()
        # tried at 1, 3, 7 and 15 s (each pause twice the one before): not 30 times
        assert 2 <= len(restarts) <= 5, len(restarts)
        assert store.restarts.wait_s >= 8
        with db.connect() as conn:
            frames, copied = _frames(conn)
        assert copied < frames  # the PASSIVE checkpoints went on, as far as the reader allows
        backup.rollback()  # the backup ends
    tried = len(restarts)
    write(999)
    store.checkpoint()  # no later on the clock: the reader's end is seen at once
    assert len(restarts) == tried + 1
    assert store.restarts.wait_s == 0  # it started the log over: the pause is done with
    write(1000)
    with db.connect() as conn:
        now_in_use, _ = _frames(conn)
    assert 0 < now_in_use < frames / 10  # the log started over: the last message's frames only
    db.dispose()


def test_a_checkpoint_that_cannot_start_over_is_tried_again_later_not_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a reader that holds the log while nothing is written: the PASSIVE checkpoint shows no
    # change, so only the clock brings the next try, at most RESTART_BACKOFF_MAX_S later
    clock = FakeClock()
    monkeypatch.setattr(repository, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(repository, "WAL_LIMIT_BYTES", 20_000)
    db = create_db_engine(f"sqlite:///{tmp_path / 'e.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    for i in range(10):
        store.save_batch([Incoming(raw=b"x" * 5000 + str(i).encode(), channel="test")])
    tries: list[float] = []

    @event.listens_for(db, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "wal_checkpoint(RESTART)" in statement:
            tries.append(clock.now)

    with db.connect() as backup:
        backup.exec_driver_sql("SELECT count(*) FROM messages").all()
        for _ in range(300):
            clock.now += 1.0
            store.checkpoint()
        backup.rollback()
    gaps = [later - earlier for earlier, later in zip(tries, tries[1:], strict=False)]
    assert gaps[:6] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert set(gaps[6:]) == {repository.RESTART_BACKOFF_MAX_S}
    db.dispose()
