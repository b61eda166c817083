"""The store's schema and SQLite upkeep: migrations bring old databases up to date; the
write-ahead log is checkpointed beside the writers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.store import Incoming, SqlMessageStore, create_db_engine, repository


def test_upgrading_to_0005_queues_deliveries_behind_their_patients_head(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    import engine.store

    db = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(engine.store.__file__).parent / "migrations"))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        conn.execute(
            text(
                "INSERT INTO messages (id, received_at, channel, peer, kind, size, raw, state,"
                " updated_at) VALUES (1, '2026-01-01', 't', '', 'hl7v2', 1, x'00', 'routed',"
                " '2026-01-01')"
            )
        )
        for did, patient in ((1, "A"), (2, "A"), (3, "B"), (4, "A")):
            conn.execute(
                text(
                    "INSERT INTO deliveries (id, message_id, destination, route, kind,"
                    " content_type, payload, patient_key, state, attempts, next_attempt_at,"
                    " created_at) VALUES (:id, 1, 'd', 'r', 'hl7v2', 't', x'00', :p, 'pending',"
                    " 0, '2026-01-01', '2026-01-01')"
                ),
                {"id": did, "p": patient},
            )
    SqlMessageStore(db).migrate()
    with db.connect() as conn:
        states = conn.execute(text("SELECT state FROM deliveries ORDER BY id")).scalars().all()
    assert states == ["pending", "waiting", "pending", "waiting"]
    db.dispose()


def test_sqlite_checkpoints_run_beside_the_writers_not_inside_a_commit(tmp_path: Path) -> None:
    db = create_db_engine(f"sqlite:///{tmp_path / 'e.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    for i in range(50):
        store.save_batch([Incoming(raw=b"x" * 5000 + str(i).encode(), channel="test")])
    with db.connect() as conn:
        # no commit checkpoints (an ACK would wait for it): the log keeps every frame...
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    wal, main = tmp_path / "e.db-wal", tmp_path / "e.db"
    assert wal.stat().st_size > 50 * 5000
    before = main.stat().st_size
    store.checkpoint()  # ...until the checkpointer copies them into the database
    assert main.stat().st_size > before + 50 * 5000
    db.dispose()


def test_a_sqlite_log_past_its_limit_starts_over_and_a_reader_only_delays_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # under steady writes a PASSIVE checkpoint never lets the log start over: past the limit
    # the checkpoint makes it start over, waiting at most RESTART_WAIT_MS for readers of old
    # frames; the file is then written over from its beginning instead of growing
    monkeypatch.setattr(repository, "WAL_LIMIT_BYTES", 100_000)
    db = create_db_engine(f"sqlite:///{tmp_path / 'e.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    wal = tmp_path / "e.db-wal"

    def write(n: int, fill: bytes) -> None:
        for i in range(n):
            store.save_batch([Incoming(raw=fill * 5000 + str(i).encode(), channel="test")])

    write(50, b"x")
    assert wal.stat().st_size > 100_000
    with db.connect() as reader:  # a reader on an old snapshot holds the log's frames
        reader.exec_driver_sql("SELECT count(*) FROM messages").all()  # (BEGIN, deferred)
        write(1, b"y")
        started = time.monotonic()
        store.checkpoint()
        waited = time.monotonic() - started
        assert waited < 2.0  # it gave up, not waiting the 10 s busy timeout...
        grown = wal.stat().st_size
        write(5, b"z")
        assert wal.stat().st_size > grown  # ...and the log goes on growing at its end
        reader.commit()
    with db.connect() as conn:
        before = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()[1]
    store.checkpoint()
    size = wal.stat().st_size
    write(5, b"w")
    # started over: the new frames are written over the old ones, the file does not grow
    assert wal.stat().st_size == size
    with db.connect() as conn:
        frames = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()[1]
        assert 0 < frames < before / 5  # only the 5 new messages' frames are in use
        # the connection's own busy timeout is back to the usual one
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    assert store.counts()["received"] == 61
    db.dispose()
