"""PostgreSQL pooled connections (engine/store/db.py, ``_ping_when_idle``): a connection back in
the pool for less than ``PING_AFTER_IDLE_S`` is handed out without a round trip to the server;
one idle longer is asked first and replaced when the server has gone; one that died while it
was idle a moment only fails the one transaction that finds it, and every other connection the
pool held from before is replaced too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

import engine.store.db as db_module
from engine.store import create_db_engine
from tests.conftest import POSTGRES_URL, fresh_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg() -> Iterator[Engine]:
    with fresh_schema("ping") as url:
        engine = create_db_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def pings(pg: Engine, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each ping the dialect sends, whether it was answered (SQLAlchemy's own pre-ping goes
    through the same call)."""
    sent: list[bool] = []
    real = pg.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        try:
            answer = real(dbapi_connection)
        except Exception:
            sent.append(False)
            raise
        sent.append(True)
        return answer

    monkeypatch.setattr(pg.dialect, "do_ping", counted)
    return sent


def _backend(pg: Engine) -> int:
    with pg.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(*pids: int) -> None:
    admin = create_db_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})
    finally:
        admin.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged(
    pg: Engine, pings: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 3600.0)  # however slow the machine
    first = _backend(pg)  # a new connection: asked once
    assert len(pings) == 1
    for _ in range(5):
        assert _backend(pg) == first
    assert len(pings) == 1, "a connection back in the pool a moment ago was pinged again"


def test_idle_connections_the_server_ended_are_replaced_unseen(
    pg: Engine, pings: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg.connect() as a, pg.connect() as b:
        old = {int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in (a, b)}
    _terminate(*old)
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 0.0)
    # no error: the ping found the first dead and the pool connected again
    with pg.connect() as a, pg.connect() as b:
        new = {int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in (a, b)}
    assert not new & old
    # one dead connection renewed the whole pool: the other was not pinged to find it dead too
    assert pings.count(False) == 1


def test_the_alerts_probe_asks_again_after_a_connection_that_died_a_moment_ago(
    pg: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.alerts.evaluate import probe_database
    from engine.store import SqlMessageStore

    SqlMessageStore(pg).migrate()
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 3600.0)
    _terminate(_backend(pg))
    assert probe_database(pg) > 0  # not "the database does not answer": it is there


def test_a_connection_that_died_a_moment_ago_fails_one_transaction_only(
    pg: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 3600.0)  # however slow the machine
    # two connections in the pool, both ended by the server right after their use
    with pg.connect() as a, pg.connect() as b:
        pids = [int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in (a, b)]
    _terminate(*pids)
    with pytest.raises(OperationalError), pg.connect() as conn:
        conn.execute(text("SELECT 1"))
    # the failure invalidated the pool: the other dead connection is not handed out either
    with pg.connect() as a, pg.connect() as b:
        now = {int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in (a, b)}
    assert not now & set(pids)
