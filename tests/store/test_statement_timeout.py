"""The queue workers' safety net on PostgreSQL (engine/store/db.py): their connections open with
a ``statement_timeout``, so that no plan gone wrong can hold the queue for minutes; a URL's own
options stay and its own ``statement_timeout`` wins; migrations and the leader's VACUUM and
ANALYZE run without it; the worker of ``engine serve`` opens its database with it; a
cancelled statement is logged as one, and the outcomes of deliveries made are never dropped
for it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from psycopg.errors import QueryCanceled
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

import engine.flow.deliver as deliver
import engine.jobs.upkeep as upkeep
import engine.store
from engine.flow.deliver import Dispatcher
from engine.routes.loader import RouteSet
from engine.settings import Settings
from engine.store import SqlMessageStore, create_db_engine
from engine.store.db import (
    MIGRATION_LOCK_KEY,
    WORKER_STATEMENT_TIMEOUT_S,
    _with_statement_timeout,
    failure_name,
    statement_cancelled,
    unbounded_statements,
)
from tests.conftest import fresh_schema
from tests.flow.test_batch_delivery import routes

__all__ = ["routes"]  # the fixture, shared

#: long enough for a statement that is planned and run at once, far too short for pg_sleep(0.5)
SHORT_S = 0.2


@pytest.fixture
def schema_url() -> Iterator[str]:
    with fresh_schema("st") as url:
        yield url


@pytest.fixture
def bounded(schema_url: str) -> Iterator[Engine]:
    db = create_db_engine(schema_url, durable=False, statement_timeout_s=SHORT_S)
    try:
        yield db
    finally:
        db.dispose()


def _setting(conn: Any, name: str) -> str:
    return str(conn.exec_driver_sql(f"SHOW {name}").scalar_one())


@pytest.mark.postgres
def test_a_worker_connection_cancels_a_long_statement_and_keeps_the_urls_search_path(
    bounded: Engine, schema_url: str
) -> None:
    schema = schema_url.rsplit("%3D", 1)[1]
    with bounded.connect() as conn:
        assert _setting(conn, "statement_timeout") == "200ms"
        assert _setting(conn, "search_path") == schema
        with pytest.raises(OperationalError, match="statement timeout"):
            conn.exec_driver_sql("SELECT pg_sleep(0.5)")


@pytest.mark.postgres
def test_the_urls_own_statement_timeout_wins_and_the_receiver_has_none(schema_url: str) -> None:
    own = create_db_engine(
        schema_url.replace("options=", "options=-c%20statement_timeout%3D7s%20"),
        durable=False,
        statement_timeout_s=SHORT_S,
    )
    receiver = create_db_engine(schema_url)
    try:
        with own.connect() as conn:
            assert _setting(conn, "statement_timeout") == "7s"
        with receiver.connect() as conn:
            assert _setting(conn, "statement_timeout") == "0"
    finally:
        own.dispose()
        receiver.dispose()


@pytest.mark.postgres
def test_unbounded_statements_lift_the_limit_for_a_transaction_and_give_it_back(
    bounded: Engine,
) -> None:
    with bounded.begin() as conn:
        with unbounded_statements(conn):
            conn.exec_driver_sql("SELECT pg_sleep(0.5)")  # not cancelled
    with bounded.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        with unbounded_statements(conn):
            conn.exec_driver_sql("SELECT pg_sleep(0.5)")
        assert _setting(conn, "statement_timeout") == "200ms"  # restored on the same session
    for _ in range(3):  # and every pooled session has its limit again
        with bounded.connect() as conn:
            assert _setting(conn, "statement_timeout") == "200ms"


@contextmanager
def _held(schema_url: str, statement: str) -> Iterator[Connection]:
    """``statement`` (taking a lock) run in another session's transaction, held until the
    block ends."""
    other = create_db_engine(schema_url)
    try:
        with other.connect() as conn, conn.begin():
            conn.exec_driver_sql(statement)
            yield conn
    finally:
        other.dispose()


def _waits_past(holder: Connection, work: Callable[[], object], seconds: float) -> None:
    """Run ``work`` on a thread while ``holder`` keeps its lock; once a session has waited on
    that lock for ``seconds`` (pg_stat_activity, seen from the holder: a session blocked by
    the holder's own backend, not any other test's wait), let go; re-raise what ``work``
    raised. ``work`` cancelled before that raises here, and so does a wait never seen."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    seen = False
    deadline = time.monotonic() + 30
    while not seen and thread.is_alive() and time.monotonic() < deadline:
        seen = bool(
            holder.exec_driver_sql(
                "SELECT pg_stat_clear_snapshot(), EXISTS (SELECT 1 FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock'"
                " AND pg_backend_pid() = ANY (pg_blocking_pids(pid))"
                # clock_timestamp(): now() is the holder's transaction's start
                f" AND clock_timestamp() - query_start > interval '{seconds} s')"
            ).one()[1]
        )
        time.sleep(0.05)
    holder.rollback()  # lets go of the lock
    thread.join(30)
    if failed:
        raise failed[0]
    assert seen, "nothing waited on the lock"


@pytest.mark.postgres
def test_migrations_and_the_leaders_vacuum_wait_past_the_limit(
    bounded: Engine, schema_url: str
) -> None:
    # another node migrating: the next waits for its lock as long as that takes, not 200 ms
    lock = f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    with _held(schema_url, lock) as holder:
        _waits_past(holder, SqlMessageStore(bounded).migrate, 0.5)
    # a VACUUM waits for a table's SHARE UPDATE EXCLUSIVE lock (CREATE INDEX CONCURRENTLY,
    # another VACUUM): it is not cancelled for waiting either
    share = "LOCK TABLE deliveries IN SHARE UPDATE EXCLUSIVE MODE"
    with _held(schema_url, share) as holder:
        _waits_past(holder, lambda: upkeep.vacuum_tables(bounded), 0.5)
    upkeep.analyze_tables(bounded, list(upkeep.TABLES))
    with bounded.connect() as conn:  # the limit is on again
        assert _setting(conn, "statement_timeout") == "200ms"
    # and a worker's own statement waiting as long is cancelled
    exclusive = "LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE"
    with (
        _held(schema_url, exclusive) as holder,
        pytest.raises(OperationalError, match="statement timeout"),
        bounded.connect() as conn,
    ):
        _waits_past(holder, lambda: conn.exec_driver_sql("SELECT count(*) FROM deliveries"), 0.5)


@pytest.mark.postgres
def test_the_worker_opens_its_database_with_the_limit(
    tmp_path: Path, schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.flow.worker import serve_workers

    made: list[Engine] = []
    real = engine.store.create_db_engine

    def spy(url: str, **kwargs: Any) -> Engine:
        made.append(real(url, **kwargs))
        return made[-1]

    monkeypatch.setattr(engine.store, "create_db_engine", spy)
    settings = Settings(home=tmp_path, var_dir=tmp_path / "var", database_url=schema_url)

    async def main() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(serve_workers(settings, stop))
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while not made:
                assert not worker.done(), worker.exception()
                assert asyncio.get_running_loop().time() < deadline, "no database opened"
                await asyncio.sleep(0.05)
            with made[0].connect() as conn:
                shown = _setting(conn, "statement_timeout")
        finally:
            stop.set()
            await asyncio.wait_for(worker, 20)
        assert shown == f"{WORKER_STATEMENT_TIMEOUT_S // 60}min"

    assert WORKER_STATEMENT_TIMEOUT_S % 60 == 0  # how PostgreSQL shows it, above
    asyncio.run(main())
    for db in made:
        db.dispose()


LIMIT = "-c statement_timeout=60000"


def _query(url: str) -> Any:
    return make_url(url).query


@pytest.mark.parametrize(
    ("url", "environ", "options"),
    [
        ("postgresql://h/db", {}, LIMIT),
        (
            "postgresql://h/db?options=-csearch_path%3Dx",
            {},
            f"-csearch_path=x {LIMIT}",
        ),
        (
            "postgresql://h/db?options=-csearch_path%3Dx&options=-cwork_mem%3D8MB",
            {},
            f"-csearch_path=x -cwork_mem=8MB {LIMIT}",
        ),
        (
            "postgresql://h/db",
            {"PGOPTIONS": "-csearch_path=y"},
            f"-csearch_path=y {LIMIT}",
        ),
        ("postgresql://h/db?options=-c%20statement_timeout%3D5s", {}, None),
        ("postgresql://h/db?options=--statement-timeout%3D5s", {}, None),
        ("postgresql://h/db", {"PGOPTIONS": "-c statement_timeout=0"}, None),
        ("postgresql://h/db?service=clinic", {}, None),
        ("postgresql://h/db", {"PGSERVICE": "clinic"}, None),
        (
            "postgresql://h/db?service=clinic&options=-csearch_path%3Dx",
            {},
            f"-csearch_path=x {LIMIT}",
        ),
    ],
)
def test_the_limit_joins_the_options_the_connection_would_have(
    url: str, environ: dict[str, str], options: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PGOPTIONS", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert _with_statement_timeout(_query(url), 60) == options


def test_a_limit_of_zero_is_none_not_one_millisecond() -> None:
    assert _with_statement_timeout(_query("postgresql://h/db"), 0) == "-c statement_timeout=0"


def _cancelled() -> OperationalError:
    return OperationalError("UPDATE deliveries ...", {}, QueryCanceled("statement timeout"))


def test_a_cancelled_statement_is_named_in_the_log_and_the_database_away_is_not() -> None:
    assert statement_cancelled(_cancelled()) and failure_name(_cancelled()) == "statement cancelled"
    away = OperationalError("SELECT 1", {}, OSError("connection refused"))
    assert not statement_cancelled(away) and failure_name(away) == "OperationalError"


def test_outcomes_are_kept_through_any_number_of_cancellations_but_not_the_database_away(
    routes: RouteSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliver, "backoff_s", lambda _failures: 0.0)
    dispatcher = Dispatcher(None, routes, {})  # type: ignore[arg-type]
    recorded: list[list[Any]] = []
    errors = [_cancelled() for _ in range(12)]  # more than the 8 tries a failure gets

    def record(batch: list[Any]) -> None:
        if errors:
            raise errors.pop(0)
        recorded.append(batch)

    monkeypatch.setattr(dispatcher, "_record_batch", record)
    dispatcher._outcomes = ["made"]  # type: ignore[list-item]
    asyncio.run(dispatcher._flush())
    assert recorded == [["made"]] and not errors

    # the database away: given up after 8 tries (the claims' lease then runs out)
    errors.extend(OperationalError("x", {}, OSError("refused")) for _ in range(20))
    dispatcher._outcomes = ["made later"]  # type: ignore[list-item]
    asyncio.run(dispatcher._flush())
    assert recorded == [["made"]] and len(errors) == 12
