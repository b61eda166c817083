"""The queue's ordering rules answer right on a SQLite store whose planner statistics are those of
a big analyzed store (issue 14; the claim's fix is c2bea22).

The console bench's million-message store, analyzed by its seed, made SQLite 3.40.1 answer
``patient_key = ? AND id < ? AND state IN ('received', 'processing')`` with the message itself:
with ``sqlite_stat1`` saying a (patient, state) holds a handful of rows among a million, the
planner runs the ``IN`` on ix_messages_patient (patient_key, state, id) with OP_SeekScan (step
through the index instead of seeking each value), and that bytecode returns the first entry it
lands on without checking the ``id < ?`` bound (asked for a patient's open messages with ids
below 5, it answered the one with id 31). The processor found every patient's first open
message blocked by itself, and the worker sat idle.

A small store takes the same plan once the statistics are written by hand: ``ANALYZE`` creates
``sqlite_stat1``, its rows are replaced with a big store's, and new connections load them.
Debian's SQLite is built without STAT4, so ``sqlite_stat1`` alone decides. The wrong answer of
the old form is asserted only on 3.40.1, the version it was seen on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Executable, bindparam, event, exists, or_, select

from engine.store import Incoming, NewDelivery, Outcome, Processed, SqlMessageStore
from engine.store.db import create_db_engine
from engine.store.deliveries import _QUEUED_PATIENTS
from engine.store.tables import messages

#: the version whose OP_SeekScan skipped the ``id < ?`` bound (Debian 12's; the bench's)
SEEN_WRONG = (3, 40, 1)

#: ix_messages_patient on a million messages, a handful per (patient, state): the bench's shape
MESSAGES_STATS = {"ix_messages_patient": "1000000 8 7 1", "ix_messages_state": "1000000 100000 1"}
#: ix_deliveries_order (destination, patient_key, state, id): few rows per queue and state
DELIVERIES_STATS = {"ix_deliveries_order": "1000000 5 2 1 1"}

_earlier = messages.alias("earlier")
#: the claim rule as it was before c2bea22: one NOT EXISTS with ``state IN (...)``
OLD_CLAIMABLE = (
    select(messages.c.id)
    .where(
        messages.c.state == "received",
        or_(
            messages.c.patient_key.is_(None),
            ~exists().where(
                _earlier.c.patient_key == messages.c.patient_key,
                _earlier.c.id < messages.c.id,
                _earlier.c.state.in_(("received", "processing")),
            ),
        ),
    )
    .order_by(messages.c.id)
    .limit(bindparam("limit"))
)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> SqlMessageStore:
    store = SqlMessageStore(create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}"))
    store.migrate()
    return store


def write_stats(db_engine: Engine, table: str, stats: Mapping[str, str]) -> None:
    """Give ``table``'s indexes a big store's statistics; connections opened after load them."""
    with db_engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
        for index, stat in stats.items():
            conn.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE idx = ?", (index,))
            conn.exec_driver_sql(
                "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", (table, index, stat)
            )
    db_engine.dispose()  # the pool's connections keep the statistics they loaded


def seek_scans(db_engine: Engine, statement: Executable, params: Mapping[str, Any]) -> bool:
    """Whether SQLite runs ``statement`` with OP_SeekScan (an ``IN`` on an index's later column
    stepped through instead of sought value by value): the SQL and parameters SQLAlchemy sends
    are caught and run again under ``EXPLAIN``."""
    sent: list[tuple[str, Any]] = []

    def catch(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_: Any) -> None:
        sent.append((sql, parameters))

    with db_engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", catch)
        conn.execute(statement, dict(params)).all()
        event.remove(conn, "before_cursor_execute", catch)
        sql, parameters = sent[-1]  # the statement itself (a BEGIN may come first)
        plan = conn.exec_driver_sql(f"EXPLAIN {sql}", parameters)
        return any(row[1] == "SeekScan" for row in plan)


def _receive(store: SqlMessageStore, patients: list[str]) -> list[int]:
    batch = [Incoming(f"m{n}".encode(), "test", patient_key=p) for n, p in enumerate(patients)]
    return [s.id for s in store.save_batch(batch)]


def test_the_claim_takes_each_patients_first_message_on_an_analyzed_store(
    sqlite_store: SqlMessageStore,
) -> None:
    patients = [f"OAK|{n % 5}" for n in range(10)]
    ids = _receive(sqlite_store, patients)
    firsts = ids[:5]  # one per patient; the other five wait behind them
    db = sqlite_store.db_engine
    with db.connect() as conn:  # without statistics the old form answers right
        assert list(conn.execute(OLD_CLAIMABLE, {"limit": 100}).scalars()) == firsts
    write_stats(db, "messages", MESSAGES_STATS)
    with db.connect() as conn:
        old = list(conn.execute(OLD_CLAIMABLE, {"limit": 100}).scalars())
    if sqlite3.sqlite_version_info == SEEN_WRONG:
        # the bug as the bench saw it: each message its own earlier one, none claimable
        assert seek_scans(db, OLD_CLAIMABLE, {"limit": 100})
        assert old == []
    claimed = sqlite_store.claim_received("w1", limit=100)
    assert [c[0] for c in claimed] == firsts
    assert sqlite_store.claim_received("w1", limit=100) == []  # the rest wait behind them
    sqlite_store.finish_batch([Processed(m, "unrouted", None, patients[0]) for m in firsts])
    assert [c[0] for c in sqlite_store.claim_received("w1", limit=100)] == ids[5:]


def _route(store: SqlMessageStore, patients: list[str]) -> list[int]:
    """Messages routed to one destination, one per patient given, in that order: their ids."""
    ids = _receive(store, patients)
    store.finish_batch(
        [
            Processed(
                m, "routed", None, p, [NewDelivery("dest", "r", "hl7v2", "text/plain", b"x", p)]
            )
            for m, p in zip(ids, patients, strict=True)
        ]
    )
    return ids


def test_deliveries_queue_behind_each_patients_earlier_one_on_an_analyzed_store(
    sqlite_store: SqlMessageStore,
) -> None:
    """The deliveries' ordering rule (``destination = ? AND patient_key IN (...) AND state IN
    ('pending', 'waiting')`` on ix_deliveries_order) takes OP_SeekScan too with a big store's
    statistics, but has no ``id <`` bound after the ``IN`` for it to let through: it answers
    right, and each queue keeps one head."""
    patients = [f"OAK|{n}" for n in range(5)]
    heads = _route(sqlite_store, patients)
    db = sqlite_store.db_engine
    write_stats(db, "deliveries", DELIVERIES_STATS)
    asked = {"dest": "dest", "patients": [*patients[:2], "OAK|none"]}
    if sqlite3.sqlite_version_info == SEEN_WRONG:
        assert seek_scans(db, _QUEUED_PATIENTS, asked)  # the plan that let the claim's bound by
    with db.connect() as conn:
        assert set(conn.execute(_QUEUED_PATIENTS, asked).scalars()) == set(patients[:2])
    behind = _route(sqlite_store, patients)  # each behind its patient's head
    states = {m: sqlite_store.get(m).deliveries[0].state for m in heads + behind}  # type: ignore[union-attr]
    assert [states[m] for m in heads] == ["pending"] * 5
    assert [states[m] for m in behind] == ["waiting"] * 5
    claimed = sqlite_store.claim_due_deliveries(100)
    assert sorted(d.message_id for d in claimed) == heads
    sqlite_store.record_outcomes([Outcome(d.id, True) for d in claimed])
    assert sorted(d.message_id for d in sqlite_store.claim_due_deliveries(100)) == behind
