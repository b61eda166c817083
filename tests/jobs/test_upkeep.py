"""The queue tables' upkeep (engine/jobs/upkeep.py): the leader analyzes a queue table once it
has changed past autovacuum's threshold (which makes PostgreSQL plan its statements again), and
where autovacuum is off also vacuums them, says so once; nothing on SQLite."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, text

import engine.jobs.upkeep as upkeep
from engine.store import SqlMessageStore
from engine.store.messages import MessageStore


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


@pytest.fixture
def pg(postgres_schema_url: str) -> Iterator[Engine]:
    """A migrated store of its own on PostgreSQL, its tables dropped after."""
    from engine.store import create_db_engine

    db = create_db_engine(postgres_schema_url)
    SqlMessageStore(db).migrate()
    try:
        yield db
    finally:
        from engine.store.tables import metadata

        metadata.drop_all(db)
        with db.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.dispose()


def test_the_setting_is_read_from_the_server(store: SqlMessageStore) -> None:
    if store.db_engine.dialect.name != "postgresql":
        assert upkeep.autovacuum_off(store.db_engine) is False  # SQLite has none to turn off
        return
    with store.db_engine.connect() as conn:
        shown = conn.execute(text("SHOW autovacuum")).scalar_one()
    assert upkeep.autovacuum_off(store.db_engine) is (shown == "off")


@pytest.mark.postgres
def test_vacuum_analyzes_each_queue_table(pg: Engine) -> None:
    assert all(v == (None, None) for v in _last_analyzed(pg).values())
    upkeep.vacuum_tables(pg)
    deadline = time.monotonic() + 5  # the statistics reach other sessions within a second
    while time.monotonic() < deadline:
        seen = _last_analyzed(pg)
        if len(seen) == 3 and all(v[0] and v[1] for v in seen.values()):
            break
        time.sleep(0.2)
    assert set(seen) == set(upkeep.TABLES)
    assert all(vacuumed and analyzed for vacuumed, analyzed in seen.values()), seen


def _insert_messages(db: Engine, state: str, count: int) -> None:
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (received_at, channel, peer, kind, size, raw, state,"
                " patient_key, updated_at) SELECT now(), 'mllp', '', 'hl7v2', 3, 'abc',"
                " :state, 'MRN' || g, now() FROM generate_series(1, :n) g"
            ),
            {"state": state, "n": count},
        )


def _stale_within(db: Engine, seconds: float, want: bool) -> list[str]:
    """stale_tables() once ``messages`` is (``want``) or is not among them, or after
    ``seconds`` (the counters reach other sessions within about a second)."""
    deadline = time.monotonic() + seconds
    while True:
        stale = upkeep.stale_tables(db)
        if ("messages" in stale) is want or time.monotonic() > deadline:
            return stale
        time.sleep(0.2)


def _rows_read(conn: Any, name: str) -> int:
    """Rows the prepared statement ``name`` reads, as PostgreSQL runs it now on ``conn``
    (EXPLAIN EXECUTE: the plan the statement's cache holds)."""
    [[plan]] = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}").all()
    total = 0
    stack = [(plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]]
    while stack:
        node = stack.pop()
        if "Scan" in node["Node Type"]:
            total += node.get("Actual Loops", 1) * (
                node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
            )
        stack.extend(node.get("Plans", []))
    return total


@pytest.mark.postgres
def test_a_table_grown_past_the_threshold_is_analyzed_and_its_plans_made_again(
    pg: Engine,
) -> None:
    """The worker's "is a message waiting?" probe (MessageStore.any_received's statement, as
    psycopg prepares it), planned from statistics taken during a warm-up burst (every message
    received), reads the whole table once it holds 20,000 delivered ones; once the upkeep finds
    the table changed and analyzes it, the plan is made again and reads a row or two."""
    with pg.begin() as conn:  # where autovacuum runs, only the test's ANALYZE does here
        conn.execute(text("ALTER TABLE messages SET (autovacuum_enabled = off)"))
    _insert_messages(pg, "received", 10)
    upkeep.analyze_tables(pg, ["messages"])
    with pg.connect() as conn:
        for _ in range(6):  # psycopg prepares it at the fifth
            conn.execute(MessageStore._ANY_RECEIVED).scalar_one()
        name = conn.exec_driver_sql(
            "SELECT name FROM pg_prepared_statements WHERE statement LIKE '%%FROM messages%%'"
        ).scalar_one()
        assert "messages" not in _stale_within(pg, 2.0, want=False)
        conn.commit()

        with pg.begin() as other:
            other.execute(text("UPDATE messages SET state = 'delivered'"))
        _insert_messages(pg, "delivered", 20_000)
        _insert_messages(pg, "received", 1)
        stale = _stale_within(pg, 10.0, want=True)
        assert "messages" in stale and "deliveries" not in stale, stale
        before = _rows_read(conn, name)
        assert before > 20_000, f"{before}: the plan of the warm-up was not kept"
        conn.commit()  # the worker's transactions are short: the next one sees the ANALYZE

        upkeep.analyze_tables(pg, stale)
        after = _rows_read(conn, name)
        assert after < 10, f"{after} rows read after the ANALYZE"
        assert "messages" not in _stale_within(pg, 5.0, want=False)
        conn.rollback()


def test_names_from_elsewhere_are_not_analyzed() -> None:
    ran: list[str] = []

    class Conn:
        dialect = SimpleNamespace(name="sqlite")  # no statement_timeout to lift around it

        def execution_options(self, **_: object) -> Conn:
            return self

        def __enter__(self) -> Conn:
            return self

        def __exit__(self, *_: object) -> None:
            return None

        def exec_driver_sql(self, sql: str) -> None:
            ran.append(sql)

    db = SimpleNamespace(connect=Conn)
    upkeep.analyze_tables(db, ["deliveries", "messages; DROP TABLE x"])  # type: ignore[arg-type]
    assert ran == ["ANALYZE (SKIP_LOCKED) deliveries"]


def _leader_rounds(
    monkeypatch: pytest.MonkeyPatch, setting: Callable[[object], bool], rounds_wanted: int
) -> list[str]:
    """keep_tables on a stand-in PostgreSQL whose ``deliveries`` always changed enough, with
    ``setting`` as the autovacuum setting's reading, until ``rounds_wanted`` rounds: what each
    round did ("vacuum" or "analyze deliveries")."""
    rounds: list[str] = []
    stop = asyncio.Event()

    def did(what: str) -> float:
        rounds.append(what)
        if len(rounds) >= rounds_wanted:
            stop.set()  # the term ends
        return 0.01

    monkeypatch.setattr(upkeep, "autovacuum_off", setting)
    monkeypatch.setattr(upkeep, "vacuum_tables", lambda db_engine: did("vacuum"))
    monkeypatch.setattr(
        upkeep, "analyze_tables", lambda db_engine, tables: did("analyze " + ",".join(tables))
    )
    monkeypatch.setattr(upkeep, "stale_tables", lambda db_engine: ["deliveries"])
    db = SimpleNamespace(dialect=SimpleNamespace(name="postgresql"))
    keep = upkeep.keep_tables(db, stop, interval_s=3600, watch_s=0.01)  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(keep, 10))
    return rounds


@pytest.mark.parametrize("off", [True, False])
def test_the_leader_analyzes_what_changed_and_vacuums_only_where_autovacuum_is_off(
    off: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="engine.jobs.upkeep"):
        rounds = _leader_rounds(monkeypatch, lambda db_engine: off, 4)
    if off:  # the first round vacuums (and analyzes); the next ones analyze what changed
        assert rounds == ["vacuum"] + ["analyze deliveries"] * 3
        assert caplog.text.count("autovacuum is off") == 1
    else:
        assert rounds == ["analyze deliveries"] * 4
        assert "autovacuum" not in caplog.text


def test_nothing_is_kept_on_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    def called(*_: object) -> object:
        raise AssertionError("upkeep on SQLite")

    for name in ("autovacuum_off", "vacuum_tables", "analyze_tables", "stale_tables"):
        monkeypatch.setattr(upkeep, name, called)
    db = SimpleNamespace(dialect=SimpleNamespace(name="sqlite"))
    asyncio.run(asyncio.wait_for(upkeep.keep_tables(db, asyncio.Event()), 5))  # type: ignore[arg-type]


def test_an_unread_setting_is_asked_again_and_the_analyses_run_meanwhile(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[bool | Exception] = [ConnectionError("away"), ConnectionError("away"), True]

    def setting(db_engine: object) -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with caplog.at_level(logging.INFO, logger="engine.jobs.upkeep"):
        rounds = _leader_rounds(monkeypatch, setting, 3)
    assert rounds == ["analyze deliveries", "analyze deliveries", "vacuum"]
    assert caplog.text.count("autovacuum setting not read") == 2
    assert caplog.text.count("autovacuum is off") == 1
