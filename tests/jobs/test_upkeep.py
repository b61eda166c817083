"""The queue tables' upkeep where PostgreSQL's autovacuum is off (engine/jobs/upkeep.py): the
leader vacuums and analyzes them itself, says so once, and does nothing where autovacuum runs or
on SQLite."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sqlalchemy import Engine, text

import engine.jobs.upkeep as upkeep
from engine.store import SqlMessageStore


def _last_analyzed(db_engine: Engine) -> dict[str, tuple[object, object]]:
    with db_engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        rows = conn.execute(
            text(
                "SELECT relname, last_vacuum, last_analyze FROM pg_stat_user_tables"
                " WHERE schemaname = current_schema()"
            )
        ).all()
    return {r[0]: (r[1], r[2]) for r in rows if r[0] in upkeep.TABLES}


def test_the_setting_is_read_from_the_server(store: SqlMessageStore) -> None:
    if store.db_engine.dialect.name != "postgresql":
        assert upkeep.autovacuum_off(store.db_engine) is False  # SQLite has none to turn off
        return
    with store.db_engine.connect() as conn:
        shown = conn.execute(text("SHOW autovacuum")).scalar_one()
    assert upkeep.autovacuum_off(store.db_engine) is (shown == "off")


@pytest.mark.postgres
def test_vacuum_analyzes_each_queue_table(postgres_schema_url: str) -> None:
    from engine.store import create_db_engine

    db = create_db_engine(postgres_schema_url)
    SqlMessageStore(db).migrate()
    try:
        assert all(v == (None, None) for v in _last_analyzed(db).values())
        upkeep.vacuum_tables(db)
        deadline = time.monotonic() + 5  # the statistics reach other sessions within a second
        while time.monotonic() < deadline:
            seen = _last_analyzed(db)
            if len(seen) == 3 and all(v[0] and v[1] for v in seen.values()):
                break
            time.sleep(0.2)
        assert set(seen) == set(upkeep.TABLES)
        assert all(vacuumed and analyzed for vacuumed, analyzed in seen.values()), seen
    finally:
        from engine.store.tables import metadata

        metadata.drop_all(db)
        with db.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.dispose()


@pytest.mark.parametrize("off", [True, False])
def test_the_leader_keeps_the_tables_only_where_autovacuum_is_off(
    off: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rounds: list[object] = []
    stop = asyncio.Event()

    def vacuum(db_engine: object) -> float:
        rounds.append(db_engine)
        if len(rounds) == 3:
            stop.set()  # the term ends after the third round
        return 0.01

    monkeypatch.setattr(upkeep, "autovacuum_off", lambda db_engine: off)
    monkeypatch.setattr(upkeep, "vacuum_tables", vacuum)
    with caplog.at_level(logging.INFO, logger="engine.jobs.upkeep"):
        asyncio.run(asyncio.wait_for(upkeep.keep_tables("db", stop, interval_s=0.01), 10))  # type: ignore[arg-type]
    if off:
        assert rounds == ["db", "db", "db"]
        assert caplog.text.count("autovacuum is off") == 1
    else:
        assert rounds == [] and "autovacuum" not in caplog.text
