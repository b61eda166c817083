"""The soak's read-only probe of the SQLite store: a sample it could not read says why."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from soak.probe import SqliteStore


def test_an_unreadable_store_reads_minus_one_and_keeps_the_reason(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gone" / "engine.db")
    assert store.backlog() == (-1, -1)
    assert store.error.startswith("OperationalError: unable to open database file")


def test_a_stopped_engines_store_is_still_read(tmp_path: Path) -> None:
    """An engine that stopped cleanly leaves its WAL database without -wal and -shm files:
    the probe still reads it (the -1 samples at a soak's end were not this)."""
    db = tmp_path / "engine.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE eligibility_checks (id INTEGER)")
        conn.executemany("INSERT INTO eligibility_checks VALUES (?)", [(1,), (2,)])
    conn.close()
    assert not db.with_name("engine.db-wal").exists()
    store = SqliteStore(db)
    assert store.eligibility_checks() == 2
    assert store.error == ""
