"""A schema migration on PostgreSQL that finds a table held by another session (a long report,
a transaction left open) during a rolling upgrade: its step gives up its wait after
``MIGRATION_LOCK_WAIT_S`` and the migration tries again, so the other nodes' statements on that
table, which queue behind the waiting step, are held at most that long, not as long as the
other session. After ``MIGRATION_RETRY_FOR_S`` it fails naming the long transactions."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import OperationalError

import engine.store.db as db_module
from engine.errors import EngineError
from engine.store import SqlMessageStore, create_db_engine
from tests.conftest import fresh_schema

pytestmark = pytest.mark.postgres

#: the step these tests catch waiting: 0027 adds a column to ``messages``
BEFORE = "0026"


@pytest.fixture
def at_0026(monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setattr(db_module, "MIGRATION_LOCK_WAIT_S", 0.2)
    with fresh_schema("migwait") as url:
        engine = create_db_engine(url)
        try:
            SqlMessageStore(engine).migrate(BEFORE)
            yield engine
        finally:
            engine.dispose()


def _waiting_behind(engine: Engine, holder: int) -> int:
    with engine.connect() as probe:
        return int(
            probe.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE :h = ANY(pg_blocking_pids(pid))"),
                {"h": holder},
            ).scalar_one()
        )


def test_a_held_table_does_not_hold_the_other_nodes_behind_the_migration(
    at_0026: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqlMessageStore(at_0026)
    failed: list[BaseException] = []

    def migrate() -> None:
        try:
            store.migrate()
        except BaseException as exc:  # reported below
            failed.append(exc)

    with at_0026.connect() as report, caplog.at_level(logging.WARNING):
        holder = report.execute(text("SELECT pg_backend_pid()")).scalar_one()
        report.execute(text("SELECT count(*) FROM messages"))  # its lock held until it ends
        upgrade = threading.Thread(target=migrate)
        upgrade.start()
        deadline = time.monotonic() + 10
        while not _waiting_behind(at_0026, holder):  # the step waits for the report
            assert time.monotonic() < deadline, "the migration never waited for the table"
            time.sleep(0.01)
        # another node's read of the table, while the report still holds it: it would queue
        # behind the waiting step until the report ended; it now waits 0.2 s at most at a time
        with at_0026.connect() as node:
            node.execute(text("SET lock_timeout = '5s'"))
            assert node.execute(text("SELECT count(*) FROM messages")).scalar_one() == 0
        report.rollback()  # the report ends
        upgrade.join(30)
    assert not upgrade.is_alive() and not failed, failed
    assert "digest" in {c["name"] for c in inspect(at_0026).get_columns("messages")}
    assert any("trying again" in r.getMessage() for r in caplog.records)


def test_a_table_held_too_long_fails_the_migration_naming_who_holds_it(
    at_0026: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "MIGRATION_RETRY_FOR_S", 1.0)
    failed: list[BaseException] = []

    def migrate() -> None:
        try:
            SqlMessageStore(at_0026).migrate()
        except BaseException as exc:
            failed.append(exc)

    with at_0026.connect() as report:
        holder = report.execute(text("SELECT pg_backend_pid()")).scalar_one()
        report.execute(text("SELECT count(*) FROM messages"))
        time.sleep(0.3)  # in its transaction longer than the step's wait
        upgrade = threading.Thread(target=migrate)
        upgrade.start()
        upgrade.join(20)
        gave_up = not upgrade.is_alive()
        report.rollback()  # lets a migration that never gives up go on, and end
    upgrade.join(30)
    assert gave_up, "the migration waited for the report as long as it held the table"
    [error] = failed
    assert isinstance(error, EngineError) and "could not lock its tables" in str(error)
    assert f"pid {holder} (" in str(error) and "s; messages)" in str(error)
    assert "digest" not in {c["name"] for c in inspect(at_0026).get_columns("messages")}


@pytest.mark.parametrize(("state", "retried"), [("55P03", True), ("40P01", True), ("57014", False)])
def test_a_lock_wait_or_a_deadlock_is_tried_again_nothing_else(state: str, retried: bool) -> None:
    class Orig(Exception):
        sqlstate = state

    error = OperationalError("ALTER TABLE messages ...", {}, Orig())
    assert db_module.lock_wait_ran_out(error) is retried
