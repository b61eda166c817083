"""Retention on PostgreSQL (engine/store/purge.py, ``purge_postgresql``): a batch of
messages, document messages included, is purged by one statement in autocommit, so no round
trip to the engine falls inside the time its row locks are held; a message changed after the
candidates were read stays; the connection goes back to the pool as it came (a transaction
per statement no more, its commits waiting for the WAL's flush again)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select, text, update

from engine.store import SqlMessageStore, create_db_engine
from engine.store.purge import Purged
from engine.store.tables import deliveries, delivery_attempts, messages
from tests.jobs.retention_support import delivered

pytestmark = pytest.mark.postgres

OLD = 300


@pytest.fixture
def pg(postgres_schema_url: str) -> Iterator[Engine]:
    """A store's database on PostgreSQL, emptied after; its sessions start with JIT on (as
    PostgreSQL's default has it), so the tests see the purge turn it off."""
    db = create_db_engine(f"{postgres_schema_url}%20-cjit%3Don")
    with db.connect() as conn:
        assert conn.exec_driver_sql("SHOW jit").scalar_one() == "on"
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
            [delivered(mid, long_ago) for mid in ids],
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


def _recording(pg: Engine) -> tuple[list[tuple[str, bool, str]], Any]:
    """A listener recording each statement the store sends: its text, whether its connection
    is in autocommit, and the session's ``jit`` as the statement is sent (its plan's)."""
    sent: list[tuple[str, bool, str]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        raw = conn.connection.dbapi_connection
        jit = "?"
        if raw.autocommit:  # a transaction's SET LOCALs are read the same way, but not needed
            jit = raw.execute("SHOW jit").fetchone()[0]
        sent.append((statement, raw.autocommit, jit))

    event.listen(pg, "before_cursor_execute", record)
    return sent, record


def _purge_recorded(pg: Engine) -> list[tuple[str, bool, str]]:
    """Purge everything old, recording the statements sent (:func:`_recording`); all of it
    purged."""
    sent, record = _recording(pg)
    try:
        purged = SqlMessageStore(pg).purge_range(timedelta(days=30))
    finally:
        event.remove(pg, "before_cursor_execute", record)
    assert purged.rows == OLD
    return sent


def test_a_batch_is_purged_by_one_statement_in_autocommit(pg: Engine) -> None:
    _seed(pg)
    sent = _purge_recorded(pg)
    # after the candidates' read, the purge: one statement, its own transaction (no round
    # trip of ours between its locks and its commit), planned without JIT
    writes = [(auto, jit) for statement, auto, jit in sent if "DELETE" in statement.upper()]
    assert writes == [(True, "off")]
    for table in (messages, deliveries, delivery_attempts):
        assert _count(pg, table) == 0, table.name


def test_document_messages_go_in_the_same_one_statement(pg: Engine) -> None:
    _seed(pg, documents=3)
    sent = _purge_recorded(pg)
    writes = [(auto, jit) for statement, auto, jit in sent if "DELETE" in statement.upper()]
    # their documents and the bytes they free go in it too (tests/documents)
    assert writes == [(True, "off")]
    for table in (messages, deliveries, delivery_attempts):
        assert _count(pg, table) == 0, table.name


def _purge_with_change_meanwhile(pg: Engine, change: Any) -> Purged:
    """Purge everything old, with ``change`` run (on a connection of its own, committed) once,
    right after the candidates' read: what another worker or an operator does meanwhile."""
    done: list[bool] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not done and statement.lstrip().upper().startswith("SELECT MESSAGES.ID, MESSAGES.KIND"):
            done.append(True)
            other = create_db_engine(pg.url.render_as_string(hide_password=False))
            with other.begin() as c:
                change(c)
            other.dispose()

    event.listen(pg, "after_cursor_execute", after)
    try:
        return SqlMessageStore(pg).purge_range(timedelta(days=30))
    finally:
        event.remove(pg, "after_cursor_execute", after)


@pytest.mark.parametrize("documents", [0, OLD], ids=["one statement", "documents"])
def test_a_message_changed_after_the_read_stays_with_its_deliveries(
    pg: Engine, documents: int
) -> None:
    ids = _seed(pg, documents=documents)
    changed = ids[7]
    # an operator resends one of them: its updated_at moves to now
    purged = _purge_with_change_meanwhile(
        pg,
        lambda c: c.execute(
            update(messages).where(messages.c.id == changed).values(updated_at=datetime.now(UTC))
        ),
    )
    assert purged.rows == OLD - 1
    with pg.connect() as conn:
        assert list(conn.execute(select(messages.c.id)).scalars()) == [changed]
        assert list(conn.execute(select(deliveries.c.message_id)).scalars()) == [changed]
    assert _count(pg, delivery_attempts) == 1


def test_a_replayed_original_stays_when_its_copy_is_sent_again_after_the_read(
    pg: Engine,
) -> None:
    ids = _seed(pg)
    original, copy = ids[3], ids[9]
    long_ago = datetime.now(UTC) - timedelta(days=60)
    with pg.begin() as conn:  # replayed long ago, its copy delivered: both purgeable
        conn.execute(update(messages).where(messages.c.id == original).values(state="replayed"))
        conn.execute(
            update(messages)
            .where(messages.c.id == copy)
            .values(replay_of=original, channel="replay", updated_at=long_ago)
        )
    # the copy is resent meanwhile (routed again): the original must wait for it
    purged = _purge_with_change_meanwhile(
        pg,
        lambda c: c.execute(
            update(messages)
            .where(messages.c.id == copy)
            .values(state="routed", updated_at=datetime.now(UTC))
        ),
    )
    assert purged.rows == OLD - 2
    with pg.connect() as conn:
        assert sorted(conn.execute(select(messages.c.id)).scalars()) == [original, copy]


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


def _holding(pg: Engine, message_id: int) -> tuple[Engine, Any]:
    """Another session holding ``message_id``'s row lock (an operator's resend, say), until its
    connection is rolled back and closed; its engine and connection."""
    other = create_db_engine(pg.url.render_as_string(hide_password=False))
    holder = other.connect()
    holder.begin()
    holder.execute(select(messages.c.id).where(messages.c.id == message_id).with_for_update())
    return other, holder


def _session(db: Engine) -> tuple[int, list[str]]:
    """A pooled connection's backend pid and its ``statement_timeout`` and ``jit``."""
    with db.connect() as conn:
        pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        settings = [
            conn.exec_driver_sql(f"SHOW {s}").scalar_one() for s in ("statement_timeout", "jit")
        ]
        assert not conn.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
    return pid, settings


def _while_held(pg: Engine, message_id: int, work: Any, wait_s: float = 60) -> Any:
    """``work()`` on a thread while another session holds ``message_id``'s row lock, let go once
    the work ends or after ``wait_s`` (not a timing: the work must not wait for the holder that
    long); that it did not wait is asserted; what it returned."""
    other, holder = _holding(pg, message_id)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join(wait_s)
    waited = thread.is_alive()
    holder.rollback()
    holder.close()
    other.dispose()
    thread.join()
    assert not waited, "the purge waited for the lock"
    assert result, "the purge failed"
    return result[0]


def test_a_document_message_locked_elsewhere_cancels_the_batch_at_its_limit(pg: Engine) -> None:
    """Matching a document locks it before its message, the purge the other way round: the
    purge's one statement waits for that lock until PostgreSQL cancels it at its limit (long
    before the deadlock check, had the matcher gone on to wait for the purge), rolled back
    whole; the next run takes the batch, its document messages counted."""
    ids = _seed(pg, documents=3)
    first = _while_held(
        pg, ids[1], lambda: SqlMessageStore(pg).purge_range(timedelta(days=30), lock_limit_s=0.05)
    )
    assert (first.rows, first.documents, first.cancelled) == (0, 0, True)
    assert _count(pg, messages) == OLD and _count(pg, deliveries) == OLD
    again = SqlMessageStore(pg).purge_range(timedelta(days=30), lock_limit_s=5.0)
    assert (again.rows, again.documents, again.cancelled) == (OLD, 3, False)
    assert _count(pg, messages) == 0


def test_a_statement_past_its_lock_limit_is_cancelled_and_rolled_back(pg: Engine) -> None:
    """The purge's statement waits for a row lock held elsewhere: PostgreSQL cancels it at its
    limit, rolls it back (every message and delivery still there, none half purged), and the
    batch comes back ``cancelled``; the connection goes back to the pool with its own
    ``statement_timeout`` (a worker's, 60 s, from its start-up options) and ``jit``; without
    the lock the same batch is purged whole."""
    ids = _seed(pg)
    timed = create_db_engine(pg.url.render_as_string(hide_password=False), statement_timeout_s=60)
    pid, before = _session(timed)
    assert before == ["1min", "on"]
    used: list[int] = []

    @event.listens_for(timed, "before_cursor_execute")
    def record(conn: Any, *args: Any) -> None:
        used.append(conn.connection.dbapi_connection.info.backend_pid)

    # without the limit it would wait for the holder for ever
    batch: Purged = _while_held(
        pg,
        ids[150],
        lambda: SqlMessageStore(timed).purge_range(timedelta(days=30), lock_limit_s=0.05),
    )
    event.remove(timed, "before_cursor_execute", record)
    assert (batch.rows, batch.cancelled) == (0, True)
    assert batch.held_s >= 0.05  # it held what it had locked until the server cancelled it
    assert _count(pg, messages) == OLD and _count(pg, deliveries) == OLD
    assert _count(pg, delivery_attempts) == OLD
    # the purge's own connection, its settings as they were
    assert set(used) == {pid} and _session(timed) == (pid, before)
    again = SqlMessageStore(timed).purge_range(timedelta(days=30), lock_limit_s=5.0)
    assert (again.rows, again.cancelled) == (OLD, False)
    assert _count(pg, messages) == 0 and _count(pg, delivery_attempts) == 0
    timed.dispose()


def test_the_batched_purge_leaves_a_locked_range_for_the_next_run(pg: Engine) -> None:
    """The leader's batched purge (engine/jobs/retention.py) with one row locked elsewhere all
    along: each batch holding it is cancelled at the limit and tried again narrower, down to
    the smallest width, then that range is left for the next run; everything else is purged,
    and the walk ends while the lock is still held."""
    from engine.jobs.retention import MIN_BATCH, purge_in_batches

    ids = _seed(pg)
    locked = ids[150]
    # a budget of 0.5 s (a limit of 250 ms): the locked row's ranges are cancelled whatever
    # the limit; the others are not, however busy the machine
    report = _while_held(
        pg,
        locked,
        lambda: purge_in_batches(
            SqlMessageStore(pg), timedelta(days=30), first=100, duty=1, budget_s=0.5
        ),
        wait_s=120,
    )
    assert report.left == 1 and report.cancelled >= 2
    with pg.connect() as conn:
        kept = list(conn.execute(select(messages.c.id).order_by(messages.c.id)).scalars())
    # what is left: the locked message's range, at most MIN_BATCH ids, the locked one in it
    assert locked in kept and len(kept) <= MIN_BATCH
    assert kept == list(range(kept[0], kept[-1] + 1))
    assert report.purged == OLD - len(kept)
    again = purge_in_batches(SqlMessageStore(pg), timedelta(days=30), duty=1, budget_s=10)
    assert (again.purged, again.cancelled, again.left) == (len(kept), 0, 0)


def test_a_cancel_before_the_limit_is_an_error_not_a_batch_to_narrow(pg: Engine) -> None:
    """An operator's ``pg_cancel_backend`` (the same SQLSTATE as a statement timeout) before the
    limit: the purge fails with it, as any other error, rather than counting a cancellation at
    the limit; nothing is purged, and the connection is not pooled with its limit."""
    ids = _seed(pg)
    other, holder = _holding(pg, ids[150])
    errors: list[BaseException] = []

    def purge() -> None:
        try:
            SqlMessageStore(pg).purge_range(timedelta(days=30), lock_limit_s=60)
        except BaseException as exc:  # the test's finding, looked at below
            errors.append(exc)

    purging: list[int] = []  # the purge's backend (only this test's is cancelled)

    @event.listens_for(pg, "before_cursor_execute")
    def record(conn: Any, *args: Any) -> None:
        purging.append(conn.connection.dbapi_connection.info.backend_pid)

    thread = threading.Thread(target=purge)
    thread.start()
    waiting = False
    try:
        with other.connect() as admin:
            for _ in range(200):  # until the purge's statement waits for the row lock
                waiting = (
                    purging != []
                    and admin.exec_driver_sql(
                        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity"
                        f" WHERE pid = {int(purging[-1])}"
                    ).scalar_one_or_none()
                    is True
                )
                if waiting or not thread.is_alive():
                    break
                thread.join(0.05)
            if waiting:
                admin.exec_driver_sql(f"SELECT pg_cancel_backend({purging[-1]})")
        thread.join(60)
        alive = thread.is_alive()
    finally:
        holder.rollback()
        holder.close()
        other.dispose()
        thread.join()
        event.remove(pg, "before_cursor_execute", record)
    assert waiting, f"the purge's statement never waited for the lock: {errors}"
    assert not alive
    assert len(errors) == 1 and "cancel" in str(errors[0]).lower()
    assert _count(pg, messages) == OLD
    with pg.connect() as conn:
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"
