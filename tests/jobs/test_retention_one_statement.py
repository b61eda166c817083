"""Retention on PostgreSQL (engine/store/messages.py, ``_purge_postgresql``): a batch of
messages without documents is purged by one statement in autocommit, so no round trip to the
engine falls inside the time its row locks are held; a message changed after the candidates
were read stays; the connection goes back to the pool as it came (a transaction per statement
no more, its commits waiting for the WAL's flush again)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select, text, update

from engine.store import SqlMessageStore, create_db_engine
from engine.store.tables import deliveries, delivery_attempts, messages

pytestmark = pytest.mark.postgres

OLD = 300


@pytest.fixture
def pg(postgres_schema_url: str) -> Iterator[Engine]:
    """A store's database on PostgreSQL, emptied after."""
    db = create_db_engine(postgres_schema_url)
    SqlMessageStore(db).migrate()
    try:
        yield db
    finally:
        with db.begin() as conn:
            for table in ("delivery_attempts", "deliveries", "messages"):
                conn.execute(text(f"DELETE FROM {table}"))
        db.dispose()


def _seed(db: Engine, documents: int = 0) -> list[int]:
    """OLD delivered messages from 60 days ago, each with a delivery and its attempt, the first
    ``documents`` of them of kind ``document``; the messages' ids."""
    long_ago = datetime.now(UTC) - timedelta(days=60)
    rows = [
        {
            "received_at": long_ago,
            "channel": "mllp",
            "peer": "",
            "kind": "document" if n < documents else "hl7v2",
            "size": 10,
            "raw": b"MSH|^~\\&|X",
            "control_id": f"R{n}",
            "dedupe_key": f"one|R{n}",
            "patient_key": f"CLINIC|MRN{n}",
            "state": "delivered",
            "updated_at": long_ago,
        }
        for n in range(OLD)
    ]
    with db.begin() as conn:
        conn.execute(insert(messages), rows)
        ids = list(conn.execute(select(messages.c.id).order_by(messages.c.id)).scalars())
        conn.execute(
            insert(deliveries),
            [
                {
                    "message_id": mid,
                    "destination": "fhir",
                    "route": "all",
                    "kind": "hl7v2",
                    "content_type": "x-application/hl7-v2+er7",
                    "payload": b"x",
                    "patient_key": "",
                    "state": "delivered",
                    "attempts": 1,
                    "next_attempt_at": long_ago,
                    "created_at": long_ago,
                }
                for mid in ids
            ],
        )
        dids = list(conn.execute(select(deliveries.c.id)).scalars())
        conn.execute(
            insert(delivery_attempts),
            [
                {"delivery_id": d, "attempt": 1, "at": long_ago, "outcome": "delivered"}
                for d in dids
            ],
        )
    return ids


def _count(db: Engine, table: Any) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_batch_is_purged_by_one_statement_in_autocommit(pg: Engine) -> None:
    _seed(pg)
    sent: list[tuple[str, bool]] = []

    @event.listens_for(pg, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append((statement, conn.connection.dbapi_connection.autocommit))

    try:
        purged = SqlMessageStore(pg).purge_range(timedelta(days=30))
    finally:
        event.remove(pg, "before_cursor_execute", record)
    assert purged.rows == OLD
    assert 0 < purged.held_s
    # the candidates' read (its transaction's SET LOCAL first), then the purge: one statement,
    # its own transaction, with nothing sent between its locks and its commit
    writes = [(s, auto) for s, auto in sent if "DELETE" in s.upper()]
    assert len(writes) == 1, [s for s, _ in writes]
    statement, autocommit = writes[0]
    assert autocommit
    assert sent[-1][0] == statement  # the last thing sent: no COMMIT of ours after it
    for table in (messages, deliveries, delivery_attempts):
        assert _count(pg, table) == 0, table.name


def test_document_messages_go_in_a_transaction_of_their_own_first(pg: Engine) -> None:
    _seed(pg, documents=3)
    sent: list[tuple[str, bool]] = []

    @event.listens_for(pg, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append((statement, conn.connection.dbapi_connection.autocommit))

    try:
        purged = SqlMessageStore(pg).purge_range(timedelta(days=30))
    finally:
        event.remove(pg, "before_cursor_execute", record)
    assert purged.rows == OLD
    deletes = [(s, auto) for s, auto in sent if "DELETE" in s.upper()]
    # the documents' transaction (their deliveries, then the messages), then the one statement
    assert [auto for _, auto in deletes] == [False, False, True]
    assert sent[-1] == deletes[-1]
    for table in (messages, deliveries, delivery_attempts):
        assert _count(pg, table) == 0, table.name


def test_a_message_changed_after_the_read_stays_with_its_deliveries(pg: Engine) -> None:
    ids = _seed(pg)
    changed = ids[7]

    # between the candidates' read and the purge, an operator resends one of them (its
    # updated_at moves to now): it is no longer settled before the cutoff
    @event.listens_for(pg, "after_cursor_execute")
    def touch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT MESSAGES.ID"):
            other = create_db_engine(str(pg.url))
            with other.begin() as c:
                c.execute(
                    update(messages)
                    .where(messages.c.id == changed)
                    .values(updated_at=datetime.now(UTC))
                )
            other.dispose()

    try:
        purged = SqlMessageStore(pg).purge_range(timedelta(days=30))
    finally:
        event.remove(pg, "after_cursor_execute", touch)
    assert purged.rows == OLD - 1
    with pg.connect() as conn:
        assert list(conn.execute(select(messages.c.id)).scalars()) == [changed]
        assert list(conn.execute(select(deliveries.c.message_id)).scalars()) == [changed]
    assert _count(pg, delivery_attempts) == 1


def test_the_connection_goes_back_to_the_pool_as_it_came(pg: Engine) -> None:
    _seed(pg)
    with pg.connect() as conn:
        settings = [
            conn.exec_driver_sql(f"SHOW {s}").scalar_one() for s in ("synchronous_commit", "jit")
        ]
    used: list[int] = []

    @event.listens_for(pg, "before_cursor_execute")
    def record(conn: Any, *args: Any) -> None:
        used.append(id(conn.connection.dbapi_connection))

    try:
        assert SqlMessageStore(pg).purge_range(timedelta(days=30)).rows == OLD
    finally:
        event.remove(pg, "before_cursor_execute", record)
    # the connection the purge used (the pool's only one, single-threaded here): transactions
    # again, its settings as before, commits waiting for the WAL's flush
    with pg.connect() as conn:
        assert set(used) == {id(conn.connection.dbapi_connection)}
        assert not conn.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
        after = [
            conn.exec_driver_sql(f"SHOW {s}").scalar_one() for s in ("synchronous_commit", "jit")
        ]
        assert after == settings
        conn.execute(
            insert(messages).values(
                received_at=datetime.now(UTC),
                channel="mllp",
                peer="",
                kind="hl7v2",
                size=1,
                raw=b"M",
                control_id="X",
                dedupe_key="one|X",
                patient_key="",
                state="received",
                updated_at=datetime.now(UTC),
            )
        )
        conn.rollback()
    assert _count(pg, messages) == 0
